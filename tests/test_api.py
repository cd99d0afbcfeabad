"""layerleak.audit(): an in-memory model on numpy arrays / a torch Dataset through the real pipeline (real Ray head,
real Parquet), the README's example script, and the API's bad input (one LayerleakError, no folder left behind)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from layerleak import AuditResult, audit
from mia_tasks.errors import LayerleakError

from helpers import ROOT

FAST = ["attack.bootstrap=200", "ray.num_cpus=2", "ray.extract_actors=1", "ray.fit_actors=1", "features.shard_size=64"]


class Net(nn.Module):
    """A class of this test module: audit() must pickle it by value for the Ray workers."""

    def __init__(self, d: int = 16, k: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 32), nn.Linear(32, k)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _data(n: int = 160, d: int = 16, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d))[y] + rng.normal(0, 1.5, size=(n, d))).astype(np.float32)
    return x, y


def _fit(x, y, steps: int = 400) -> Net:
    torch.manual_seed(0)
    net = Net(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return net.eval()


def test_example_script_prints_the_shapley_dataframe(ray_head, tmp_path):
    """The README's notebook-style example, run as a user runs it."""
    out = tmp_path / "example"
    proc = subprocess.run([sys.executable, "examples/audit_numpy.py", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "player  params  shapley  shapley_low  shapley_high  flagged" in proc.stdout
    for layer in ("fc1", "fc2", "out"):
        assert any(line.split()[:1] == [layer] for line in proc.stdout.splitlines())
    result = AuditResult.load(out)
    scores = result.scores
    assert len(scores) == 600 and set(scores["split"]) == {"train", "test"}
    assert scores.loc[scores["member"], "split"].eq("train").all()
    assert (out / "report.html").is_file()


def test_audit_on_arrays_and_on_a_dataset_give_one_run_that_resumes(ray_head, tmp_path):
    x, y = _data()
    net = _fit(x[:80], y[:80])
    out = tmp_path / "api"
    first = audit(net, (x[:80], y[:80]), (x[80:], y[80:]), out=out, overrides=FAST)
    assert isinstance(first.shapley, pd.DataFrame) and list(first.shapley["player"]) == ["fc1", "fc2"]
    assert first.shapley["shapley_low"].le(first.shapley["shapley"]).all()
    assert first.shapley["shapley"].le(first.shapley["shapley_high"]).all()
    assert {"logistic", "loss-threshold"} <= set(first.attacks["attack"])
    assert list(first.verdicts.columns) == ["step", "statement"] and len(first.verdicts) >= 3
    assert first.membership_check is not None  # a pretrained target: its membership is checked
    scores = first.scores
    assert len(scores) == 160 and scores["member"].sum() == 80
    # sample_id maps back to the arrays given: train index = members' row, test index = non-members' row
    members = scores[scores["member"]]
    assert sorted(members["index"]) == list(range(80)) and members["split"].eq("train").all()
    assert (members.sort_values("index")["label"].to_numpy() == y[:80]).all()

    again = audit(net, torch.utils.data.TensorDataset(torch.from_numpy(x[:80]), torch.from_numpy(y[:80])),
                  torch.utils.data.TensorDataset(torch.from_numpy(x[80:]), torch.from_numpy(y[80:])), out=out, overrides=FAST)
    assert again.report["shapley"] == first.report["shapley"]  # the same inputs: the same run, resumed

    other = _fit(x[:80], y[:80], steps=50)  # another model into the same OUT: refused, nothing mixed in
    with pytest.raises(LayerleakError, match="another config"):
        audit(other, (x[:80], y[:80]), (x[80:], y[80:]), out=out, overrides=FAST)
    assert AuditResult.load(out).report["shapley"] == first.report["shapley"]


@pytest.mark.parametrize("members, nonmembers, match", [
    ((np.zeros((10, 4), np.float32), np.zeros(9, int)), None, "labels have shape"),
    ((np.zeros((10, 4), np.float32), np.zeros(10, int)), None, "one class"),
    ((np.zeros((10, 4), np.float32), np.arange(10) % 2), (np.zeros((10, 5), np.float32), np.arange(10) % 2), "one dtype and shape"),
    ((np.full((10, 4), np.nan, np.float32), np.arange(10) % 2), None, "NaN"),
    ((np.zeros((10, 4), np.float32), np.linspace(0, 1, 10)), None, "not class indices"),
    ("images.npy", None, "got str"),
])
def test_audit_bad_input_is_one_error_and_no_folder(tmp_path, members, nonmembers, match):
    nonmembers = nonmembers or (np.zeros((10, 4), np.float32), np.arange(10) % 2)
    out = tmp_path / "never"
    with pytest.raises(LayerleakError, match=match):
        audit(Net(4, 2), members, nonmembers, out=out)
    assert not out.exists()


def test_audit_refuses_what_it_cannot_write_and_a_bad_override_leaves_no_folder(tmp_path):
    x, y = _data(40, 4, 2)
    with pytest.raises(LayerleakError, match="not a torch.nn.Module"):
        audit("model.pt", (x, y), (x, y), out=tmp_path / "a")
    with pytest.raises(LayerleakError, match="local path"):
        audit(Net(4, 2), (x, y), (x, y), out="s3://bucket/run")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(LayerleakError, match="not a layerleak run folder"):
        audit(Net(4, 2), (x, y), (x, y), out=busy)
    assert os.listdir(busy) == ["notes.txt"]
    with pytest.raises(LayerleakError, match="attack.bootstrap"):  # after the inputs are written: all removed again
        audit(Net(4, 2), (x, y), (x, y), out=tmp_path / "b", overrides=["attack.bootstrap=1"])
    assert not (tmp_path / "b").exists()
