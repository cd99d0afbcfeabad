"""Defences (issue 15): Opacus's per-sample gradients against the project's statistics, the layer-dp update
rule, DP-SGD's spent ε, the defend command end to end (trained, audited into OUT/defences/<name>/, reused),
and bad input as one error line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from helpers import copy_run, run_cli, tiny_args
from mia_tasks.config import DatasetConfig, DefenceConfig, TrainConfig
from mia_tasks.data import load_dataset
from mia_tasks.defences import defence_hashes, defence_name, defence_settings, top_players
from mia_tasks.defences.dp_sgd import train_dp_sgd
from mia_tasks.defences.layer_dp import train_layer_dp
from mia_tasks.gradstats import STATS, per_sample_features
from mia_tasks.models import build
from mia_tasks.train import train_epochs

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetConfig(name="synthetic", synthetic_train=240, synthetic_test=80))


def _model(data, seed: int = 0):
    torch.manual_seed(seed)
    return build("cnn", data.num_classes, data.in_channels, input_size=data.input_size)


def _stats(g: np.ndarray) -> np.ndarray:
    """The seven statistics of one flat per-sample gradient, straight from numpy/scipy (schema.STATS order)."""
    values = {"max": g.max(), "min": g.min(), "mean": g.mean(), "l1": np.abs(g).sum(), "l2": np.sqrt((g ** 2).sum()),
              "kurtosis": scipy.stats.kurtosis(g, fisher=True, bias=True), "skewness": scipy.stats.skew(g, bias=True)}
    return np.array([values[s] for s in STATS])


def test_opacus_per_sample_gradients_match_the_project_statistics(data):
    """Must show 3: Opacus's grad_sample of a small CNN without BatchNorm (loss summed) gives each layer's seven
    statistics as mia_tasks.gradstats computes them, so a defended model is audited by the same extraction path."""
    from opacus.grad_sample import GradSampleModule

    model = _model(data).double()
    x = data.normalise(data.train_x[:12]).double()
    y = data.train_y[:12]
    ours = per_sample_features(model, x, y)["grad"]
    gsm = GradSampleModule(model, loss_reduction="sum")
    gsm.train()  # Opacus records in training mode; the CNN has no BatchNorm or dropout, so the pass is the same
    with pytest.warns(UserWarning, match="Full backward hook"):  # conv1's input needs no gradient: fine here
        F.cross_entropy(gsm(x), y, reduction="sum").backward()
    assert set(ours) == {"conv1", "conv2", "fc1", "fc2"}
    for layer, got in ours.items():
        m = model.get_submodule(layer)
        flat = torch.cat([p.grad_sample.reshape(len(y), -1) for p in (m.weight, m.bias)], 1).numpy()
        want = np.stack([_stats(row) for row in flat])
        scale = np.abs(want).max(0)
        at = STATS.index
        # the mean's scale is the entries' (the logits layer's mean is an exact zero, written as 0 by the project)
        scale[at("mean")] = max(scale[at("max")], scale[at("min")])
        np.testing.assert_allclose(got.numpy() / scale, want / scale, atol=1e-9, err_msg=layer)
    gsm.remove_hooks()


def test_layer_dp_rewrites_only_the_chosen_layers(data):
    """One step on one batch: the unchosen layers' update is bit-for-bit plain training's, the chosen layer's is
    not; with no noise and a huge clip the chosen layer's update is plain training's too (to rounding)."""
    members = np.arange(16)
    recipe = TrainConfig(epochs=1, batch_size=16)
    plain = _model(data)
    list(train_epochs(plain, data, members, recipe, 0, CPU))
    noisy = _model(data)
    info = train_layer_dp(noisy, data, members, recipe, DefenceConfig(name="layer-dp", clip=0.01, noise_multiplier=1.0),
                          ["fc1"], 0, CPU)
    assert info["layers"] == ["fc1"] and info["clipped_fraction"] == 1.0 and info["epsilon"] is None
    for name, p in plain.named_parameters():
        q = noisy.get_parameter(name)
        if name.startswith("fc1."):
            assert not torch.allclose(p, q, atol=1e-6), name
        else:
            assert torch.equal(p, q), name
    clean = _model(data)
    info = train_layer_dp(clean, data, members, recipe, DefenceConfig(name="layer-dp", clip=1e9, noise_multiplier=0.0),
                          ["fc1", "conv1"], 0, CPU)
    assert info["clipped_fraction"] == 0.0
    for name, p in plain.named_parameters():
        torch.testing.assert_close(clean.get_parameter(name), p, rtol=1e-5, atol=1e-7)
    assert not any(m._forward_hooks or m._backward_hooks for m in clean.modules())  # hooks removed


@pytest.mark.parametrize("per_layer", [False, True])
def test_dp_sgd_spends_at_most_the_target_epsilon(data, per_layer):
    members = np.arange(60)
    recipe = TrainConfig(epochs=3, batch_size=16)
    model = _model(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = train_dp_sgd(model, data, members, recipe, DefenceConfig(epsilon=2.0, per_layer_clipping=per_layer), 0, CPU)
    assert 0 < info["epsilon"] <= 2.0 + 0.02, info
    assert info["clipping"] == ("per_layer" if per_layer else "flat")
    assert info["delta"] == pytest.approx(1 / 60) and info["noise_multiplier"] > 0 and info["steps"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # a plain module again


def test_names_and_hashes_follow_the_settings():
    eps1, eps8 = (defence_settings(DefenceConfig(epsilon=e)) for e in (1.0, 8.0))
    assert defence_name(eps1) == "dp-sgd-eps1" and defence_name(eps8) == "dp-sgd-eps8"
    assert defence_name(defence_settings(DefenceConfig(name="layer-dp"), ["conv2", "fc1"])) == "layer-dp-conv2+fc1"
    base = {"splits": "s", "target": "t", "features": "f", "sweep": "w", "config": "c"}
    h1, h8 = defence_hashes(base, eps1), defence_hashes(base, eps8)
    assert h1["splits"] == "s" and h1["target"] != "t" and h1["sweep"] != h8["sweep"]
    assert defence_hashes(base, dataclasses.replace(DefenceConfig(epsilon=1.0)) and eps1) == h1


def test_top_player_is_ranked_by_the_interval():
    shapley = {"targets": [{"players": [
        {"player": "a", "layers": ["a"], "shapley": {"value": 0.10, "ci95": [-0.02, 0.2]}},
        {"player": "b", "layers": ["b1", "b2"], "shapley": {"value": 0.08, "ci95": [0.05, 0.11]}}]}]}
    assert top_players(shapley, 1) == [{"player": "b", "layers": ["b1", "b2"]}]


@pytest.mark.parametrize("args, says", [
    (["--defence", "fog"], "defence.name"),
    (["--defence", "dp-sgd", "--epsilon", "0"], "defence.epsilon"),
    (["--defence", "dp-sgd", "--epsilon", "-1"], "defence.epsilon"),
])
def test_bad_defence_options_are_one_line(tmp_path, args, says):
    proc = run_cli("defend", *args, "--out", str(tmp_path / "run"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("layerleak: error:") and says in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_layer_is_one_line(tiny_run, tmp_path):
    """Also: without --config/--set, defend audits with the config OUT records (the tiny one, not the default)."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [p.name for p in tiny_run.iterdir()])
    proc = run_cli("defend", "--defence", "layer-dp", "--layers", "conv1,nope", "--out", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "unknown layer(s) nope" in lines[0], proc.stderr[-2000:]
    assert not (out / "defences").exists()


@pytest.mark.slow
def test_defend_trains_audits_and_is_reused(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [p.name for p in tiny_run.iterdir()])
    args = ["defend", "--defence", "layer-dp", *tiny_args(out)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    shapley = json.loads((tiny_run / "shapley.json").read_text())
    top = top_players(shapley, 1)[0]["layers"]
    sub = out / "defences" / ("layer-dp-" + "+".join(top))
    for rel in ("target/model.pt", "target/metrics.json", "shapley.json", "report.json", "attacks/logistic.json"):
        assert (sub / rel).is_file(), rel
    assert len(list((sub / "features").glob("part-*.parquet"))) == len(list((tiny_run / "features").glob("part-*.parquet")))
    metrics = json.loads((sub / "target/metrics.json").read_text())
    assert metrics["defence"]["layers"] == top and metrics["settings"]["defence"] == "layer-dp"
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["defences"]["rows"]]
    assert names == ["original", sub.name] and (out / "plots/defences.png").is_file()
    assert "Defences, re-audited" in (out / "report.md").read_text()
    stamp = (sub / "target/model.pt").stat().st_mtime_ns
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "defence: reusing" in again.stdout and "fitting" not in again.stdout
    assert (sub / "target/model.pt").stat().st_mtime_ns == stamp
