"""A pretrained target's stated membership: split.members_file audits the samples it was trained on; without it
the report says the membership looks wrong instead of "no measurable leakage"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import run_cli
from mia_tasks.config import DatasetConfig, SplitConfig, TrainConfig
from mia_tasks.data import load_dataset
from mia_tasks.errors import LayerleakError
from mia_tasks.models import build
from mia_tasks.splits import make_splits
from mia_tasks.train import train_epochs

MLP = '''
from torch import nn


def make_net(num_classes, in_channels=1, input_size=8, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))
'''

SETS = ["dataset.name=digits", "split.members=80", "split.nonmembers=80", "attack.bootstrap=200",
        "features.shard_size=100", "ray.num_cpus=2", "ray.extract_actors=2", "ray.fit_actors=2", "sweep.chunk_size=4"]


def _args(out, *extra: str) -> list[str]:
    args = ["--out", str(out)]
    for item in SETS + list(extra):
        args += ["--set", item]
    return args


@pytest.mark.parametrize("values, match", [([1, 1], "repeats 1 indices"), ([5000], "outside 0..999"),
                                           ([], "holds no indices"), ([1.5], "non-integer")])
def test_bad_member_files_are_refused_in_one_line(tmp_path, values, match):
    path = tmp_path / "m.npy"
    np.save(path, np.array(values))
    with pytest.raises(LayerleakError, match=match) as e:
        make_splits(np.zeros(1000, int), np.zeros(500, int), SplitConfig(members_file=str(path)), 0, pretrained=True)
    assert "\n" not in str(e.value)


def test_csv_and_parquet_member_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "m.csv").write_text("sample_id\n4\n2\n9\n")
    pq.write_table(pa.table({"sample_id": [4, 2, 9]}), tmp_path / "m.parquet")
    (tmp_path / "n.csv").write_text("0\n3\n")
    for f in ("m.csv", "m.parquet"):
        sp = make_splits(np.zeros(100, int), np.zeros(50, int),
                         SplitConfig(members_file=str(tmp_path / f), nonmembers_file=str(tmp_path / "n.csv")), 0, pretrained=True)
        assert list(sp.target_members) == [2, 4, 9] and sorted(sp.sample_ids[~sp.member]) == [100, 103]
    with pytest.raises(LayerleakError, match="need model.checkpoint"):
        make_splits(np.zeros(100, int), np.zeros(50, int), SplitConfig(members_file=str(tmp_path / "m.csv")), 0)


@pytest.mark.slow  # two CLI runs on digits: about 85 s on 2 shared cores
def test_stated_members_leak_and_unstated_membership_looks_wrong(ray_head, tmp_path):
    """A small MLP trained on 80 chosen digits: audited with its member file, leakage; without it, the report's
    first verdict says the membership looks wrong, never "no measurable leakage"."""
    (tmp_path / "mlp.py").write_text(MLP)
    arch = f"{tmp_path / 'mlp.py'}:make_net"
    data = load_dataset(DatasetConfig(name="digits"))
    members = np.sort(np.random.default_rng(3).choice(data.n_train, 80, replace=False))  # indices into the train split
    model = build(arch, data.num_classes, data.in_channels, input_size=data.input_size)
    for _ in train_epochs(model, data, list(members), TrainConfig(epochs=100, batch_size=16, lr=0.05, weight_decay=0.0),
                          seed=5, device=torch.device("cpu")):
        pass
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    np.save(tmp_path / "members.npy", members)
    common = [f"model.arch={arch}", f"model.checkpoint={tmp_path / 'mine.pt'}"]

    stated = run_cli("run", *_args(tmp_path / "stated", *common, f"split.members_file={tmp_path / 'members.npy'}"))
    assert stated.returncode == 0, stated.stdout[-3000:] + stated.stderr[-3000:]
    rep = json.loads((tmp_path / "stated" / "report.json").read_text())
    assert rep["target"]["train_accuracy"] > 0.97
    assert rep["membership_check"]["looks_wrong"] is False and rep["leakage_detected"] is True

    guessed = run_cli("run", *_args(tmp_path / "guessed", *common))
    assert guessed.returncode == 0, guessed.stdout[-3000:] + guessed.stderr[-3000:]
    rep = json.loads((tmp_path / "guessed" / "report.json").read_text())
    assert rep["membership_check"]["looks_wrong"] is True
    assert rep["verdicts"][0]["statement"].startswith("membership looks wrong")
    text = json.dumps(rep["verdicts"]) + "".join(p.read_text() for p in (tmp_path / "guessed").glob("report.*") if p.suffix in (".md", ".html"))
    assert "no measurable leakage" not in text.lower() and "MEMBERSHIP LOOKS WRONG" in text and "0 epochs" not in text
