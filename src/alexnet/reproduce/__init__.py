"""The paper's claims re-measured: Figure 1 (ReLU against tanh), the ablations of its ingredients, and its CIFAR-10
LRN claim (11% against 13% error).

figure1.py trains the four-layer CIFAR-10 net of Figure 1 with each activation until it reaches 25% training
error; ablations.py trains the `cifar-ingredients` preset with each ingredient removed in turn; lrn_cifar.py
trains the `cifar-convnet` preset with and without LRN. All are built from the ordinary training run
(common.train_run over train.set_up / train.fit), so every run is a run directory with its config, metrics and
checkpoints, and an interrupted reproduction continues where it stopped.
"""
