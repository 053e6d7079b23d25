"""The paper's claims re-measured: Figure 1 (ReLU against tanh) and the ablations of its ingredients.

figure1.py trains the four-layer CIFAR-10 net of Figure 1 with each activation until it reaches 25%
training error; ablations.py trains the `cifar` preset with each ingredient removed in turn. Both are
built from the ordinary training run (train.Run / train.train), so every run is a run directory with its
config, metrics and checkpoints, and an interrupted reproduction continues where it stopped.
"""
