"""A population of models: the pool's random halves, several targets and reference models (issues 13 and 14).

Library tests need no Ray; the slow test runs the tiny audit with three targets, SIGKILLs the driver
mid-training and checks that the rerun keeps the finished models and reports every target.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import ROOT, popen, run_cli, tiny_args
from mia_tasks.config import load_config, stage_hashes
from mia_tasks.errors import LayerleakError
from mia_tasks.population import (Population, check_population, draw_population, model_config, model_hashes,
                                  population_size, references_of)
from mia_tasks.splits import make_splits

DEFAULT = ROOT / "flows" / "configs" / "default.yaml"


def _splits(members: int = 70, nonmembers: int = 70, audit: int | None = None):
    cfg = load_config(DEFAULT, [f"split.members={members}", f"split.nonmembers={nonmembers}"]
                      + ([f"split.audit={audit}"] if audit else []))
    y = np.arange(1000) % 10
    return make_splits(y, np.arange(300) % 10, cfg.split, seed=0)


def test_model_zero_is_the_target_and_every_model_trains_on_a_random_half():
    splits = _splits()
    pop = Population(draw_population(splits, 64, seed=0))
    assert pop.size == 64
    np.testing.assert_array_equal(pop.members(0), np.sort(splits.target_members))
    pool = pop.table.column("sample_id").to_numpy()
    assert set(pool) == set(splits.target_members) | set(splits.sample_ids) and len(pool) == 140
    inside = pop.membership()
    assert (inside.sum(axis=1) == 70).all()  # each model: half the pool, as many as the target's members
    assert len({tuple(np.flatnonzero(r)) for r in inside}) == 64  # every half its own
    per_sample = inside.mean(axis=0)  # each audited sample IN for about half of the models
    assert per_sample.mean() == pytest.approx(0.5) and 0.25 < per_sample.min() and per_sample.max() < 0.75


def test_adding_models_keeps_the_halves_already_drawn():
    splits = _splits()
    small, large = draw_population(splits, 3, seed=5), draw_population(splits, 17, seed=5)
    for k in range(3):
        assert small.column(f"in.{k}").equals(large.column(f"in.{k}"))
    assert not draw_population(splits, 3, seed=6).column("in.1").equals(small.column("in.1"))  # seeded


def test_each_model_sees_the_audited_samples_with_its_own_membership():
    splits = _splits(audit=50)
    pop = Population(draw_population(splits, 4, seed=0))
    assert pop.splits_for(splits, 0) is splits
    for k in (1, 2, 3):
        mine = pop.splits_for(splits, k)
        np.testing.assert_array_equal(mine.sample_ids, splits.sample_ids)
        np.testing.assert_array_equal(mine.member, np.isin(splits.sample_ids, pop.members(k)))
        np.testing.assert_array_equal(mine.target_members, pop.members(k))
    with pytest.raises(LayerleakError, match="not in the population"):
        pop.members(4)


def test_pretrained_target_references_take_half_the_pool():
    cfg = load_config(DEFAULT, ["split.members=null", "split.nonmembers=40"])
    splits = make_splits(np.arange(200) % 10, np.arange(100) % 10, cfg.split, seed=0, pretrained=True)
    pop = Population(draw_population(splits, 3, seed=0, pretrained=True))
    assert pop.table.num_rows == 240
    assert [len(pop.members(k)) for k in range(3)] == [200, 120, 120]


def test_targets_and_references_share_one_population():
    assert population_size(1, 0) == 1 and population_size(3, 0) == 3 and population_size(3, 16) == 17
    assert population_size(17, 16) == 17
    assert references_of(0, 17, 16) == list(range(1, 17))
    assert references_of(2, 17, 16) == [0, 1, *range(3, 17)]
    assert references_of(1, 5, 2) == [0, 2]


def test_models_have_their_own_seed_and_hashes_and_the_default_keeps_its_hashes():
    cfg = load_config(DEFAULT)
    assert model_config(cfg, 0) is cfg
    seeds = {model_config(cfg, k).seed for k in range(1, 20)}
    assert len(seeds) == 19 and cfg.seed not in seeds
    h = stage_hashes(cfg)
    assert model_hashes(h, 0) is h
    assert len({model_hashes(h, k)["target"] for k in range(20)}) == 20
    # several targets or references change only the population's draw: the target, its features and sweep stay current
    many = stage_hashes(load_config(DEFAULT, ["split.targets=3", "references.count=16"]))
    for stage in ("splits", "target", "features", "sweep"):
        assert many[stage] == h[stage]
    assert many["population"] != h["population"]


def test_several_targets_need_targets_trained_here(tmp_path):
    cfg = load_config(DEFAULT, ["split.targets=2", f"model.checkpoint={tmp_path / 'model.pt'}"])
    with pytest.raises(LayerleakError, match=r"split.targets \(2\) needs targets trained here"):
        check_population(cfg)
    check_population(load_config(DEFAULT, ["references.count=4", f"model.checkpoint={tmp_path / 'model.pt'}"]))


def _digest(path: Path) -> tuple[float, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _units(out: Path, targets: int) -> dict[int, Path]:
    return {0: out / "target", **{k: out / "models" / str(k) / "target" for k in range(1, targets)}}


@pytest.mark.slow
def test_three_targets_resume_after_sigkill_and_report_every_target(ray_head, tmp_path):
    """issue 13, must show 4: parallel training tasks; a SIGKILLed driver's rerun keeps finished models."""
    out, targets = tmp_path / "run", 4
    args = tiny_args(out, f"split.targets={targets}", "train.epochs=80")
    proc = popen("run", *args)
    units, finished = _units(out, targets), {}
    deadline = time.monotonic() + 600
    try:
        while not finished and time.monotonic() < deadline and proc.poll() is None:
            finished = {k: u for k, u in units.items() if (u / "metrics.json").exists()}
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        log = proc.communicate()[0]
    assert finished, f"no model finished before the driver ended:\n{log[-3000:]}"
    time.sleep(2)  # tasks of the dead driver are killed by Ray; a straggler may still commit a whole unit
    before = {k: {f: _digest(units[k] / f) for f in ("model.pt", "metrics.json")} for k in units
              if (units[k] / "metrics.json").exists()}
    assert len(before) < targets, "every model finished before the kill: nothing left to resume"

    rerun = run_cli("run", *args, timeout=1500)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for k, files in before.items():  # finished models reused: the very same files
        assert {f: _digest(units[k] / f) for f in files} == files
    assert "reusing" in rerun.stdout
    for k in range(1, targets):
        metrics = json.loads((units[k] / "metrics.json").read_text())
        assert metrics["model"] == k and metrics["train_accuracy"] > metrics["test_accuracy"]
        assert len(list((out / "models" / str(k) / "features").glob("part-*.parquet"))) == 5
    population = pq.read_table(out / "population.parquet")
    assert [c for c in population.column_names if c.startswith("in.")] == [f"in.{k}" for k in range(targets)]

    report = json.loads((out / "report.json").read_text())
    assert [t["target"] for t in report["targets"]] == list(range(targets))
    between = report["between_targets"]
    assert between["targets"] == targets and between["v_all"]["n"] == targets
    values = [t["v_all"]["value"] for t in report["targets"]]
    assert between["v_all"]["value"] == pytest.approx(np.mean(values))
    lo, hi = between["v_all"]["ci95"]
    assert lo < np.mean(values) < hi
    assert [p["player"] for p in between["players"]] == [p["player"] for p in report["targets"][0]["players"]]
    assert between["ranking_stability"]["n_targets"] == targets
    md = (out / "report.md").read_text()
    assert f"## Several targets ({targets})" in md and f"mean of {targets}" in md


def test_cli_refuses_several_pretrained_targets_in_one_line(tmp_path):
    proc = run_cli("train", "--out", str(tmp_path / "out"), "--set", "split.targets=2",
                   "--set", f"model.checkpoint={tmp_path / 'model.pt'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerleak: error: split.targets (2) needs targets trained here")
