"""PaperSGD against the update rule written out by hand; the schedule's decisions."""

import torch
from torch import nn

from alexnet.config import OptimConfig
from alexnet.optim import PaperSGD, Schedule, build_optimizer, param_groups_for, set_lr


def test_paper_rule_by_hand_across_an_lr_drop_and_torch_sgd_differs_after_it():
    w0 = [0.5, -1.25, 2.0]
    grads = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.2, 0.1], [0.2, 0.2, -0.2]]
    lrs = [0.1, 0.1, 0.01, 0.01]  # a drop after two steps
    m, wd = 0.9, 0.0005

    # by hand: v <- m v - wd lr w - lr g ; w <- w + v
    w, v = list(w0), [0.0] * 3
    hand = []
    for g, lr in zip(grads, lrs):
        v = [m * vi - wd * lr * wi - lr * gi for vi, wi, gi in zip(v, w, g)]
        w = [wi + vi for wi, vi in zip(w, v)]
        hand.append(list(w))

    def run(opt_cls, **kw):
        p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        opt = opt_cls([p], lr=lrs[0], momentum=m, weight_decay=wd, **kw)
        out = []
        for g, lr in zip(grads, lrs):
            for group in opt.param_groups:
                group["lr"] = lr
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
            out.append(p.detach().clone())
        return out

    ours = run(PaperSGD)
    for got, want in zip(ours, hand):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    theirs = run(torch.optim.SGD)
    torch.testing.assert_close(theirs[1], ours[1], rtol=1e-12, atol=1e-12)  # same while lr is constant
    assert (theirs[2] - ours[2]).abs().max() > 1e-3  # after the drop the old velocity carries the old rate


def test_bias_groups_no_decay_and_lr_multiplier():
    model = nn.Linear(3, 2)
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, bias_lr_mult=2.0, momentum=0.0)
    groups = param_groups_for(model, cfg)
    assert [g["name"] for g in groups] == ["weights", "biases"]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.2
    opt = build_optimizer(model, cfg)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    opt.step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * 0.1 * w0)  # decay only
    torch.testing.assert_close(model.bias.detach(), b0 - 0.2)  # 2x lr, no decay
    set_lr(opt, 1.0)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 2.0]


def test_plateau_schedule_drops_three_times_then_stops():
    cfg = OptimConfig(lr=0.01, patience=2, drops=3, schedule="plateau")
    s = Schedule(cfg, cfg.lr)
    errors = [50, 40, 41, 42, 39, 39.5, 39.6, 38, 38, 38, 38, 38]
    drops, stopped_at = [], None
    for e, err in enumerate(errors):
        if s.step(e, err):
            drops.append(e)
        if s.should_stop and stopped_at is None:
            stopped_at = e
    # improvements at 0, 1, 4, 7; two bad epochs in a row trigger a drop: epochs 3, 6, 9; then stop at 11
    assert drops == [3, 6, 9]
    assert abs(s.lr - 1e-5) < 1e-12
    assert stopped_at == 11


def test_milestones_and_state_round_trip():
    cfg = OptimConfig(lr=0.1, schedule="milestones", milestones=[2, 4])
    s = Schedule(cfg, cfg.lr)
    lrs = []
    for e in range(5):
        s.step(e, 10.0)
        lrs.append(s.lr)
    assert [round(x, 6) for x in lrs] == [0.1, 0.01, 0.01, 0.001, 0.001]
    s2 = Schedule(cfg, cfg.lr)
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()


def test_linear_schedule_warms_up_then_falls_to_zero_at_the_last_step():
    cfg = OptimConfig(lr=0.1, schedule="linear", warmup_epochs=1)
    s = Schedule(cfg, cfg.lr, epochs=5)
    # warm-up: lr x t / 1 for t < 1; then lr x (1 - (t - 1) / (5 - 1)), written out per point
    points = {0.5: 0.05, 1.0: 0.1, 2.0: 0.075, 3.0: 0.05, 4.5: 0.0125, 5.0: 0.0}
    for t, want in points.items():
        assert abs(s.lr_at(t) - want) < 1e-12, t
    for e in range(5):  # epoch ends change nothing: the rate is a function of progress alone
        assert not s.step(e, 10.0)
    assert abs(s.lr_at(3.0) - 0.05) < 1e-12 and s.lr == 0.1


def test_label_smoothing_is_the_mixture_of_the_target_and_the_uniform_loss(shapes_store, tmp_path):
    """One training step's loss against -(1 - e) log p_y - e/K sum_k log p_k of the step's own logits."""
    from alexnet.config import build_config
    from alexnet.data.store import open_store
    from alexnet.parallel.ddp import DistContext
    from alexnet.train import adapt_to_store, set_up, train_step

    eps = 0.2
    cfg = build_config("demo", overrides={"optim.label_smoothing": eps, "optim.batch_size": 16, "data.crop": 32,
                                          "model.widths": [8, 8, 8, 8, 8], "model.fc": [16, 16]})
    store = open_store(shapes_store)
    adapt_to_store(cfg, store)
    run = set_up(cfg, store, tmp_path / "run", DistContext(device=torch.device("cpu")), progress=False)
    batch = next(iter(run.train_loader.train_epoch(cfg.train.seed, 0, 0)))
    loss, logits, _ = train_step(run, batch, 0, cfg.optim.lr)
    logp = torch.log_softmax(logits.detach().double(), dim=1)
    k = logp.shape[1]
    want = (-(1 - eps) * logp.gather(1, batch.labels[:, None]).squeeze(1) - eps / k * logp.sum(1)).mean()
    assert abs(loss.item() - float(want)) < 1e-5
    plain = -logp.gather(1, batch.labels[:, None]).mean()
    assert abs(loss.item() - float(plain)) > 1e-3  # the smoothing changed the loss
