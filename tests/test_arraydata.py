"""dataset.name=npz and the array checks the Python API shares; the config's files entering the hashes by content
and recorded as absolute paths."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import run_cli, tiny_args
from mia_tasks.arraydata import check_arrays, read_npz
from mia_tasks.config import Config, load_config, stage_hashes
from mia_tasks.errors import LayerleakError
from flows.presets import resolve


def _images(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(7).uniform(60, 200, size=(k, 8, 8, 1))
    y = np.arange(n) % k
    return np.clip(templates[y] + rng.normal(0, 60, size=(n, 8, 8, 1)), 0, 255).astype(np.uint8), y


def test_arrays_are_checked_and_laid_out_as_the_pipeline_takes_them():
    x, y = _images(20, 0)
    tr_x, tr_y, te_x, te_y, k = check_arrays(x, y[:, None], x[:, :, :, 0], y, "t")
    assert tr_x.shape == (20, 1, 8, 8) and te_x.shape == (20, 1, 8, 8) and k == 4  # channels-last and [N, H, W]
    assert (tr_x[:, 0] == x[:, :, :, 0]).all() and tr_y.dtype == np.int64
    f = check_arrays(np.ones((6, 5), np.float64), [0, 1] * 3, np.zeros((4, 5)), [1, 0] * 2, "t", classes=3)
    assert f[0].dtype == np.float32 and f[4] == 3
    with pytest.raises(LayerleakError, match="labels go up to 3 but classes is 2"):
        check_arrays(x, y, x, y, "t", classes=2)
    with pytest.raises(LayerleakError, match="inputs are <U1|inputs are"):
        check_arrays(np.array([["a"]] * 4), [0, 1, 0, 1], np.array([["a"]] * 4), [0, 1, 0, 1], "t")


def test_npz_files_read_with_keras_names_and_refuse_what_they_cannot_hold(tmp_path):
    x, y = _images(12, 0)
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    assert read_npz(tmp_path / "keras.npz")[0].shape == (12, 1, 8, 8)
    np.savez(tmp_path / "partial.npz", train_x=x, train_y=y)
    with pytest.raises(LayerleakError, match="no test_x array"):
        read_npz(tmp_path / "partial.npz")
    np.savez(tmp_path / "objects.npz", train_x=np.array([{"a": 1}] * 3, dtype=object), train_y=y[:3], test_x=x, test_y=y)
    with pytest.raises(LayerleakError, match="cannot be read.*no pickled objects"):
        read_npz(tmp_path / "objects.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(LayerleakError, match="cannot be read"):
        read_npz(tmp_path / "text.npz")


def test_cli_audits_an_npz_and_refuses_a_builtin_model_on_flat_inputs(ray_head, tmp_path):
    x, y = _images(240, 1)
    xt, yt = _images(80, 2)
    np.savez(tmp_path / "imgs.npz", train_x=x, train_y=y, test_x=xt, test_y=yt)
    out = tmp_path / "run"
    proc = run_cli("run", *tiny_args(out, "dataset.name=npz", f"dataset.root={tmp_path / 'imgs.npz'}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scores = pq.read_table(out / "scores.parquet")
    assert scores.num_rows == 120 and "score.logistic" in scores.column_names

    np.savez(tmp_path / "flat.npz", train_x=np.ones((30, 16), np.float32), train_y=np.arange(30) % 2,
             test_x=np.zeros((10, 16), np.float32), test_y=np.arange(10) % 2)
    bad = tmp_path / "bad"
    proc = run_cli("run", *tiny_args(bad, "dataset.name=npz", f"dataset.root={tmp_path / 'flat.npz'}", "split.members=20",
                                     "split.nonmembers=10"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "takes images [N, C, H, W]" in lines[0] and "[16]" in lines[0]
    assert os.listdir(bad / "target") == ["members.parquet"] and not (bad / "features").exists()  # the splits stay valid
    proc = run_cli("run", *tiny_args(tmp_path / "bad2", "dataset.name=npz", f"dataset.root={tmp_path / 'none.npz'}"))
    assert proc.returncode == 2 and "not found" in proc.stderr and not (tmp_path / "bad2").exists()


def test_member_files_and_checkpoints_enter_the_hashes_by_content_and_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "members.npy", np.arange(50))
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_config(resolve(None), ["model.checkpoint=members.npy", "split.members_file=members.npy"])
    assert cfg.split.members_file == str(tmp_path / "a" / "members.npy")  # relative to the working directory, recorded absolute
    moved = tmp_path / "b"
    shutil.copytree(tmp_path / "a", moved)
    other = load_config(resolve(None), [f"model.checkpoint={moved / 'members.npy'}", f"split.members_file={moved / 'members.npy'}"])
    assert stage_hashes(cfg) == stage_hashes(other)  # the same content elsewhere: the same results
    np.save(moved / "members.npy", np.arange(1, 51))
    os.utime(moved / "members.npy", ns=(1, 1))  # another content, whatever the clock says
    assert stage_hashes(other)["splits"] != stage_hashes(cfg)["splits"]
    assert stage_hashes(Config()) == stage_hashes(load_config(resolve(None), []).__class__())
