"""The command line as a user meets it: bad input gets one clear line and a non-zero exit; train reuses OUT."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, tiny_args

from mia_tasks.models import build


def _one_error_line(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("layerleak: error: ") and needle in lines[0], lines[0]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("sets,needle", [
    (["dataset.name=cifar100", "dataset.root=/nonexistent/cifar"], "dataset root /nonexistent/cifar does not exist"),
    (["model.arch=vgg11"], "config model.arch: 'vgg11' is not allowed; expected one of alexnet, cnn, resnet"),
    (["dataset.name=mnist"], "config dataset.name: 'mnist' is not allowed; expected one of digits"),
    (["train.epochz=3"], "unknown config key 'train.epochz'"),
    (["train.epochs=many"], "config train.epochs: 'many' is not allowed; expected a positive integer"),
    (["split.members=1200", "split.nonmembers=500"], "exceed the 1300 train images available"),
])
def test_bad_input_one_line_nonzero_nothing_half_written(tmp_path, sets, needle):
    out = tmp_path / "out"
    args = ["train", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args)
    _one_error_line(proc, needle)
    assert set(_files(out)) <= {"config.yaml", ".layerleak", ".lock"}  # at most the resolved config (whole), marker and lock
    assert not [f for f in _files(tmp_path) if f.endswith(".tmp")]


def test_checkpoint_that_does_not_fit(tmp_path):
    torch.save(build("cnn", 3, in_channels=1, input_size=8).state_dict(), tmp_path / "ck.pt")
    proc = run_cli("train", "--out", str(tmp_path / "out"), "--set", f"model.checkpoint={tmp_path / 'ck.pt'}")
    _one_error_line(proc, "does not fit the model: shape mismatch ['fc2.weight (3, 128) vs (10, 128)'")


def test_models_lists_archs_and_layers():
    proc = run_cli("models")
    assert proc.returncode == 0 and "alexnet" in proc.stdout and "resnet" in proc.stdout
    proc = run_cli("models", "resnet", "--option", "depth=20")
    assert proc.returncode == 0 and "22 audited layers" in proc.stdout and "layer3.2.conv2" in proc.stdout


def test_train_then_reuse_and_refuse_other_config(tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", *tiny_args(out))
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = json.loads((out / "target" / "metrics.json").read_text())
    assert metrics["members"] == 60 and metrics["train_accuracy"] > metrics["test_accuracy"]
    assert (out / "splits.parquet").is_file() and (out / "target" / "model.pt").is_file()
    again = run_cli("train", *tiny_args(out))
    assert again.returncode == 0 and "reusing" in again.stdout
    other = run_cli("train", *tiny_args(out, "seed=7"))
    _one_error_line(other, "holds splits outputs made with another config (changed: seed)")
    assert json.loads((out / "target" / "metrics.json").read_text()) == metrics  # nothing computed before is lost


def test_a_stage_with_only_out_continues_with_the_config_out_records(tiny_run, tmp_path):
    """``layerleak run --out OUT`` (no --config/--set) on a finished tiny run: the config OUT records, not the
    default's digits, so nothing is refused and every stage is reused; the folder may have moved (output.dir is OUT)."""
    import shutil

    out = tmp_path / "moved"
    shutil.copytree(tiny_run, out)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "sweep").rglob("*.parquet")}
    proc = run_cli("run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"run: continuing with the config {out}/config.yaml records" in proc.stdout
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in (out / "sweep").rglob("*.parquet")} == before
    assert "synthetic" in (out / "report.md").read_text()
