"""Config resolution: defaults are the paper's, presets are data, overrides are checked."""

import pytest

from alexnet.config import PRESETS, build_config, config_from_dict, parse_assignments
from alexnet.errors import UserError


def test_paper_defaults_trace_to_the_spec():
    cfg = build_config("paper")
    o, m, d = cfg.optim, cfg.model, cfg.data
    assert (o.batch_size, o.lr, o.momentum, o.weight_decay, o.drops, o.rule) == (128, 0.01, 0.9, 0.0005, 3, "paper")
    assert (m.lrn_size, m.lrn_alpha, m.lrn_beta, m.lrn_k, m.lrn_literal) == (5, 1e-4, 0.75, 2.0, False)
    assert (d.image_size, d.crop, d.pca_std, m.dropout, m.towers) == (256, 224, 0.1, 0.5, 2)
    assert not o.bias_decay and o.bias_lr_mult == 1.0 and m.init_std == 0.01


def test_overrides_bare_dotted_yaml_and_round_trip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.02\nmodel:\n  lrn: false\n")
    cfg = build_config("paper", f, parse_assignments(["momentum=0.8", "model.towers=1", "milestones=[3, 5]"]))
    assert cfg.optim.lr == 0.02 and cfg.model.lrn is False and cfg.optim.momentum == 0.8
    assert cfg.model.towers == 1 and cfg.optim.milestones == [3, 5]
    assert config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(build_config("paper", overrides={"lr": 1}).optim.lr, float)


@pytest.mark.parametrize("overrides,fragment", [
    ({"learning_rate": 0.1}, "unknown config key"),
    ({"lr": "fast"}, "takes a float"),
    ({"lrn": 3}, "takes a bool"),
    ({"activation": "sigmoid"}, "must be one of"),
    ({"lr": -1.0}, "optim.lr must be positive"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"dropout": 1.5}, "dropout"),
    ({"widths": [96, 256]}, "entries"),
    ({"crop": 300}, "crop must not exceed"),
])
def test_bad_values_are_one_line_user_errors(overrides, fragment):
    with pytest.raises(UserError) as info:
        build_config("paper", overrides=overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_preset_and_yaml(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        build_config("vgg")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        build_config("paper", bad)
    with pytest.raises(UserError, match="key=value"):
        parse_assignments(["lr"])


def test_every_preset_resolves():
    for name in PRESETS:
        build_config(name)
