"""Generated inputs (hypothesis) at every boundary where outside data enters: config overrides, YAML files,
command lines, store folders and checkpoint files, 1,000 cases each. Every case must end either in the
project's one-line error (UserError; exit status 2 on the command line) or in a correct result, never in
another exception, and nothing may be written.

"Correct" is checked against what the boundary promises: a config that is accepted builds a model whose
parameter count is the formula's; a store that opens has labels inside its class list; a checkpoint that loads
holds exactly what was saved.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet.checkpoint import CheckpointManager, load_checkpoint
from alexnet.cli import main
from alexnet.config import PRESETS, _resolve_key, all_keys, build_config, load_yaml
from alexnet.data.store import open_store
from alexnet.errors import UserError
from alexnet.geometry import parameter_estimate
from alexnet.model import AlexNet, count_parameters

CASES = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["relu", "tanh", "overlap", "plain", "paper", "kaiming", "auto", "bf16"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6),
                                                                                           inner, max_size=3),
                      max_leaves=12)
keys = st.one_of(st.sampled_from(all_keys()), st.sampled_from([k.split(".", 1)[1] for k in all_keys()]),
                 st.text(max_size=20))
# small values where the model is built, so that accepted configs stay cheap to check
small_ints = st.integers(-3, 40)
model_values = st.one_of(small_ints, st.lists(small_ints, min_size=0, max_size=6),
                         st.lists(st.booleans(), max_size=6), st.floats(-1, 2), st.just(float("nan")))


def one_line(exc: UserError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


@CASES
@given(st.sampled_from(["demo", "figure1", "cifar-convnet", "cifar"]),
       st.dictionaries(keys, values, max_size=4),
       st.dictionaries(st.sampled_from([k for k in all_keys() if k.startswith(("model.", "data."))]),
                       model_values, max_size=3))
def test_config_overrides_give_a_buildable_config_or_one_line(preset, anything, model_keys):
    try:
        cfg = build_config(preset, overrides={**anything, **model_keys})
    except UserError as exc:
        one_line(exc)
        return
    # accepted: the geometry is whole and the estimate bounded, so the model builds with the counted parameters
    estimate = parameter_estimate(cfg.model, cfg.data.crop)
    assert 0 < estimate <= 2_000_000_000
    if estimate < 3_000_000 and not any(cfg.model.local) and cfg.model.towers == 1:
        assert count_parameters(AlexNet(cfg.model, cfg.data.crop)) == estimate


def parameters_by_hand(cfg) -> int:  # noqa: ANN001
    """The parameter count written out from the layer formulas, towers and local layers included: a conv layer
    has width x (inputs it sees) x k^2 weights and a bias per map; a layer that sees its own tower only (split,
    two towers) sees half the maps below; a locally connected layer has its own weights and biases at each
    output position; the FC layers take the flattened last map. One tower halves every width but the last
    (the paper's comparison) unless told not to."""
    m = cfg.model
    widths = list(m.widths)
    if m.towers == 1 and m.halve_single_tower:
        widths = [w // 2 for w in widths[:-1]] + widths[-1:]
    side, channels, total = cfg.data.crop, 3, 0
    window, stride = (3, 2) if m.pooling == "overlap" else (2, 2)
    for i, (w, k, st_, p) in enumerate(zip(widths, m.kernels, m.strides, m.pads)):
        side = (side + 2 * p - k) // st_ + 1
        seen = channels // 2 if m.towers == 2 and m.split[i] else channels
        positions = side * side if m.local and m.local[i] else 1
        total += positions * (w * seen * k * k + w)
        channels = w
        if m.pool_after[i]:
            side = -(-(side - window) // stride) + 1 if m.pool_ceil else (side - window) // stride + 1
    flat = channels * (m.adaptive_pool or side) ** 2
    for width in [*m.fc, m.num_classes]:
        total += flat * width + width
        flat = width
    return total


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("towers", [None, 1])
def test_every_presets_parameter_count_is_the_formulas(preset, towers):
    overrides = {} if towers is None else {"model.towers": 1}
    try:
        cfg = build_config(preset, overrides=overrides)
    except UserError:
        assert towers == 1  # a preset with a layer that cannot be one tower (none does today)
        return
    assert count_parameters(AlexNet(cfg.model, cfg.data.crop)) == parameters_by_hand(cfg)


yaml_fragments = st.sampled_from([
    "optim:\n", "  lr: ", "model:\n", "  widths: ", "[", "]", "{", "}", ", ", "&a ", "*a ",
    "!!python/object:os.system ", "- ", "lr: ", ".nan", ".inf", "1e-3", "0.01", "true", "~", "'", '"', "\n",
    "  ", ": ", "#", "\t", "\xff", "data:\n  crop: ", "train:\n  epochs: ", "-1", "99999999999999999999",
    "seed: ", "x" * 3, "\\x00"])


@CASES
@given(st.lists(yaml_fragments, max_size=30), st.sampled_from(["utf-8", "latin-1"]))
def test_yaml_files_load_as_a_mapping_or_one_line(tmp_path_factory, parts, encoding):
    path = tmp_path_factory.getbasetemp() / "case.yaml"
    path.write_bytes("".join(parts).encode(encoding, errors="replace"))
    try:
        data = load_yaml(path)
        cfg = build_config("demo", path)
    except UserError as exc:
        one_line(exc)
        return
    assert isinstance(data, dict) and cfg.preset == "demo"
    # every value the file gave is the config's now (ints where floats are expected compare equal)
    for key, value in data.items():
        if isinstance(value, dict) and key in ("model", "data", "optim", "train"):
            for name, v in value.items():
                assert getattr(getattr(cfg, key), name) == v, (key, name)
        elif key != "preset":
            section, name = _resolve_key(key).split(".")
            assert getattr(getattr(cfg, section), name) == value, key


flags = st.sampled_from(["--preset", "--config", "--keys", "--json", "--help-me", "-k", "--", "lr=", "model.fc=[",
                         "demo", "figure1", "cifar-convnet", "paper-x", "lr=0.01", "lrn=maybe", "towers=2",
                         "model.widths=[8,8,8]", "seed=-1", "data.crop=1000", "=", "", "\x00x"])
commands = st.sampled_from([["config"], ["config", "--keys"], ["summary", "--preset", "demo"],
                            ["summary", "--preset", "figure1"], ["summary", "--preset", "cifar-convnet", "--json"]])


@CASES
@given(commands, st.lists(flags | st.text(max_size=8), max_size=5))
def test_command_lines_exit_0_or_2_with_one_line(tmp_path_factory, command, extra):
    home = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())
    try:
        before = sorted(os.listdir("."))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main([*command, *extra])
            except SystemExit as exc:  # argparse: usage errors and --help
                status = exc.code
        after = sorted(os.listdir("."))
    finally:
        os.chdir(home)  # the working folder of the tests after this one is theirs again
    assert status in (0, 2), err.getvalue()
    if status == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err.getvalue()
    assert after == before  # nothing written


@pytest.fixture(scope="module")
def small_store(shapes_store, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("prop") / "store"
    shutil.copytree(shapes_store, copy)
    return copy


def _paths(obj, prefix=()):  # noqa: ANN001, ANN202
    """Every (path, value) inside a JSON object, for choosing what to change."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@CASES
@given(st.data())
def test_edited_store_manifests_open_correctly_or_one_line(small_store, data):
    manifest_path = small_store / "manifest.json"
    original = manifest_path.read_bytes()
    manifest = json.loads(original)
    paths = [p for p, _ in _paths(manifest) if p and p[0] not in ("source", "created", "preprocessing")]
    try:
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(paths))
            action = data.draw(st.sampled_from(["replace", "delete"]))
            new_value = data.draw(values)
            try:  # an earlier edit may have removed or replaced what this path leads through
                target = manifest
                for step in path[:-1]:
                    target = target[step]
                if action == "delete" and isinstance(target, dict):
                    del target[path[-1]]
                else:
                    target[path[-1]] = new_value
            except (KeyError, IndexError, TypeError):
                pass
        manifest_path.write_text(json.dumps(manifest, allow_nan=True))
        try:
            store = open_store(small_store)
            store.verify()
        except UserError as exc:
            one_line(exc)
            return
        for name in store.manifest["splits"]:
            labels = store.split(name).labels
            assert labels.dtype == np.int64 and (len(labels) == 0 or 0 <= labels.min() <= labels.max()
                                                 < len(store.classes))
            assert store.split(name).images.shape[1:] == (store.size, store.size, 3)
    finally:
        manifest_path.write_bytes(original)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    cfg = build_config("figure1", overrides={"model.widths": [4, 4, 8]})
    model = AlexNet(cfg.model, cfg.data.crop)
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "classes": [f"c{i}" for i in range(10)],
             "class_names": [f"name {i}" for i in range(10)], "mean": torch.rand(32, 32, 3) * 255,
             "pca_eigenvalues": torch.rand(3), "pca_eigenvectors": torch.eye(3)}
    run = tmp_path_factory.mktemp("ckpt")
    path = CheckpointManager(run).save(state, 1, False)
    return path, load_checkpoint(path)


def _equal(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


@CASES
@given(st.data())
def test_damaged_checkpoints_load_exactly_or_one_line(saved_checkpoint, tmp_path_factory, data):
    path, original = saved_checkpoint
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "flips", "garbage"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "garbage":
        start = data.draw(st.integers(0, len(raw) - 1))
        raw[start:start + 16] = data.draw(st.binary(min_size=16, max_size=16))
    else:
        for _ in range(1 if how == "flip" else data.draw(st.integers(2, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    damaged = tmp_path_factory.getbasetemp() / "damaged.pt"
    damaged.write_bytes(bytes(raw))
    try:
        loaded = load_checkpoint(damaged)
    except UserError as exc:
        one_line(exc)
        return
    assert _equal(original, loaded)  # loaded at all: then exactly what was saved (the flip hit unused bytes)
