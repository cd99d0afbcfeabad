"""`layerleak models` shows the model the config's dataset makes; `layerleak config` prints the resolved config."""

from __future__ import annotations

import yaml

from flows.cli import main
from flows.presets import load
from mia_tasks.data import load_dataset
from mia_tasks.models import param_count
from mia_tasks.target import build_target


def _table(capsys, *argv: str) -> dict[str, int]:
    assert main(["models", *argv]) == 0
    rows = [l.split() for l in capsys.readouterr().out.splitlines() if l.strip()[:1].isdigit()]
    return {r[1]: int(r[3].replace(",", "")) for r in rows if len(r) == 5 and r[0].isdigit()}


def test_models_shows_the_default_audit_target(capsys):
    cfg = load(None)
    target = build_target(cfg, load_dataset(cfg.dataset))
    expected = {name: param_count(target, name) for name in ("conv1", "conv2", "fc1", "fc2")}
    assert _table(capsys, "cnn") == expected


def test_models_shape_options_and_errors(capsys):
    table = _table(capsys, "cnn", "--option", "num_classes=100")
    assert table["fc2"] == 128 * 100 + 100  # the head follows the classes asked for, not a traceback
    assert main(["models", "cnn", "--option", "depth"]) == 2
    assert "layerleak: error: --option 'depth'" in capsys.readouterr().err


def test_config_prints_the_resolved_config_as_yaml(capsys):
    assert main(["config", "--set", "train.epochs=7", "--set", "sweep.players=groups"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)  # the comments are YAML comments
    expected = load(None, ["train.epochs=7", "sweep.players=groups"]).to_dict()
    assert printed == expected
    assert "# a positive integer" in next(l for l in out.splitlines() if l.strip().startswith("epochs:"))
