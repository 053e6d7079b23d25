"""bf16 autocast on the CPU (train.precision=bf16, what `auto` picks on CPUs with bf16 arithmetic) against float32:
the same run's losses step by step, within a bound stated here."""

import json

from alexnet.config import build_config
from alexnet.train import train

SMALL = {"train.epochs": 3, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 1, "train.threads": 1,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64]}


def step_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_a_bf16_run_tracks_the_float32_run(shapes_store, tmp_path):
    """Same seed, data, views and dropout masks; only the precision of the model's arithmetic differs.

    bf16 keeps 8 bits of mantissa (a relative rounding of 2^-9 = 0.2% per value). The first steps start from
    the same weights, so their losses differ by the forward's roundings alone: within 1%. After that each
    step's rounding moves the weights a little and the two runs drift apart as any two runs of slightly
    different arithmetic do (single steps then differ by a few percent either way), so the later bound is on
    each epoch's mean loss: within 5% of float32's. A bf16 path that lost the gradient's small terms (no
    float32 accumulation, say) or diverged would fail it; the losses are not bit-identical, so autocast ran."""
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = build_config("demo", overrides={**SMALL, "train.precision": precision})
        assert train(cfg, str(shapes_store), tmp_path / precision, progress=False) == 0
        runs[precision] = step_losses(tmp_path / precision)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    steps = 192 // 16
    assert len(fp32) == len(bf16) == 3 * steps
    assert all(abs(a - b) <= 0.01 * a for a, b in zip(fp32[:3], bf16[:3], strict=True)), (fp32[:3], bf16[:3])
    for epoch in range(3):
        a = sum(fp32[epoch * steps:(epoch + 1) * steps]) / steps
        b = sum(bf16[epoch * steps:(epoch + 1) * steps]) / steps
        assert abs(a - b) <= 0.05 * a, (epoch, a, b)
    assert fp32 != bf16  # autocast really ran in bf16
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # and both learned
