"""Bad input met mid-pipeline: one `layerleak: error:` line, a non-zero exit, no half-written file, and
nothing computed before lost. (Config and dataset mistakes caught before any work: tests/test_cli.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, cli_cmd, copy_run, run_cli, tiny_args
from mia_tasks.errors import one_line


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the resolved config (rewritten by each command) and the
    writer's lock file (OUT/.lock, left empty)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "config.yaml" and str(p.relative_to(root)) != ".lock"}


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single `layerleak: error:` line, last on stderr (progress bars aside), with no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [l.strip() for l in re.split(r"[\r\n]", proc.stderr) if l.strip()]
    errors = [l for l in lines if l.startswith("layerleak: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Unhandled error" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_too_many_players_for_an_exact_sweep(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target", "features"])
    before = _snapshot(out)
    proc = run_cli("sweep", *tiny_args(out, "sweep.max_exact_players=2"))
    _one_error_line(proc, "4 players is too many for an exact sweep", "sweep.max_exact_players=2",
                    "group layers into players (--set sweep.players=groups)", "estimate by sampling (--set sweep.method=sampled)")
    assert _snapshot(out) == before  # features, target and splits untouched; no sweep part written
    _no_temporaries(out)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target"])
    for made in ("model.pt", "metrics.json"):  # the target to train again
        (out / "target" / made).unlink()
    before = _snapshot(out)
    proc = run_cli("train", *tiny_args(out, "train.device=cuda"))
    _one_error_line(proc, "train.device=cuda but the Ray cluster offers no GPU", "train.device=auto or cpu")
    assert _snapshot(out) == before  # the splits kept, no model written
    _no_temporaries(out)


def test_unreachable_ray_address_fails_fast(tiny_run, tmp_path):
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target"])
    before = _snapshot(out)
    start = time.perf_counter()
    proc = run_cli("extract", *tiny_args(out), env={"RAY_ADDRESS": "127.0.0.1:1"})
    wall = time.perf_counter() - start
    _one_error_line(proc, "no Ray cluster answers at 127.0.0.1:1", "unset it to run locally")
    assert wall < 60, f"{wall:.0f}s: ray.init alone would retry for minutes"
    assert _snapshot(out) == before and not (out / "features").exists()


def test_out_below_a_regular_file(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    proc = run_cli("run", "--out", str(blocker / "run"))
    _one_error_line(proc, f"cannot create {blocker / 'run'}", "choose a writable --out")
    assert blocker.read_text() == "not a folder\n"
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("first", [".layerleak", ".lock"])
def test_read_only_out(tiny_run, tmp_path, first):
    """OUT that cannot be written even by root (immutable attribute); tests run as root, so chmod would not do.
    An earlier layerleak's folder gets its marker first; a marked one, its lock file."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak"] * (first == ".lock") + ["config.yaml", "splits.parquet", "target"])
    before = _snapshot(out)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        proc = run_cli("extract", *tiny_args(out))
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    _one_error_line(proc, f"cannot write {out / first}", "choose a writable --out")  # the first write
    assert _snapshot(out) == before
    _no_temporaries(out)


def test_unwritable_features_folder_fails_inside_the_actors_with_one_line(tiny_run, tmp_path):
    """The write fails in the extractor actors: the error crosses Ray and still reaches the user as one line."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target"])
    (out / "features").write_text("a file where the features folder should be\n")
    before = _snapshot(out)
    proc = run_cli("extract", *tiny_args(out))
    _one_error_line(proc, f"cannot create {out / 'features'}", "choose a writable --out")
    assert _snapshot(out) == before
    _no_temporaries(out)


def test_more_fitters_than_cpus_is_capped_not_a_hang(tiny_run, ray_head, tmp_path):
    """ray.fit_actors=4 on the 2-CPU head: two actors could never be placed and ActorPool would wait on them forever."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target", "features"])
    proc = run_cli("sweep", *tiny_args(out, "ray.fit_actors=4"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: ray.fit_actors=4 but the cluster has 2 CPUs; starting 2 actors" in proc.stdout
    assert json.loads((out / "shapley.json").read_text()) == json.loads((tiny_run / "shapley.json").read_text())


# --- issue 11's table of bad inputs: each one line, exit 2, OUT as it was ----------------------------------

def _main(*argv: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process, for errors found before any work (a subprocess costs 10-25 s of imports
    on a busy machine); stdout and stderr captured as a subprocess's would be."""
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(["layerleak", *argv], code, out.getvalue(), err.getvalue())


def _whole_copy(tiny_run: Path, out: Path, keep: tuple[str, ...] = (".layerleak", "config.yaml", "splits.parquet", "target",
                                                                   "features", "sweep", "shapley.json")) -> dict[str, str]:
    """A copy of the tiny run (what a user has computed) and its snapshot."""
    copy_run(tiny_run, out, [k for k in keep if (tiny_run / k).exists()])
    return _snapshot(out)


def _unchanged(out: Path, before: dict[str, str]) -> None:
    after = _snapshot(out)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    _no_temporaries(out)


@pytest.mark.parametrize("sets,needle", [
    (["seed=-1"], "config seed: -1 is not allowed; expected a non-negative integer"),
    (["train.momentum=1.5"], "config train.momentum: 1.5 is not allowed; expected a number in [0, 1)"),
    (["train.momentum=banana"], "config train.momentum: 'banana' is not allowed; expected a number in [0, 1)"),
    (["sweep.tol=-1"], "config sweep.tol: -1 is not allowed; expected a positive number"),
    (["sweep.permutations=abc"], "config sweep.permutations: 'abc' is not allowed; expected a positive integer"),
    (["ray.max_retries=-5"], "config ray.max_retries: -5 is not allowed; expected a non-negative integer"),
])
def test_bad_config_value(tiny_run, tmp_path, sets, needle):
    out = tmp_path / "run"
    before = _whole_copy(tiny_run, out)
    config = (out / "config.yaml").read_text()
    _one_error_line(_main("run", *tiny_args(out, *sets)), needle)
    _unchanged(out, before)
    assert (out / "config.yaml").read_text() == config  # refused before anything is written


@pytest.mark.parametrize("text,needle", [
    ("- seed: 0\n- dataset: {name: digits}\n", "the top level must be a mapping of sections (seed, dataset, model"),
    ("digits\n", "the top level must be a mapping of sections (seed, dataset, model"),
    ("seed: 0\ntrain:\n  epochs: 3\n   lr: 0.1\n", "is not valid YAML: line 4, column 6: mapping values are not allowed here"),
])
def test_bad_config_file(tiny_run, tmp_path, text, needle):
    out, config = tmp_path / "run", tmp_path / "mine.yaml"
    before = _whole_copy(tiny_run, out)
    config.write_text(text)
    _one_error_line(_main("run", "--config", str(config), "--out", str(out)), f"config file {config}", needle)
    _unchanged(out, before)


def _image_folder(root: Path, n_train: int = 64, n_test: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def image_run(ray_head, tmp_path_factory):
    """Splits and a target made from a small image folder (JPEG files, 2 classes)."""
    base = tmp_path_factory.mktemp("images")
    folder, out = _image_folder(base / "set"), base / "run"
    env = {"LAYERLEAK_CACHE": str(base / "cache")}
    proc = run_cli("train", *tiny_args(out, "dataset.name=imagefolder", f"dataset.root={folder}", "train.epochs=3"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, out, env


@pytest.mark.parametrize("damage,needle", [
    ("truncated", "cannot be decoded (Truncated File Read); it may be truncated or damaged: remove or replace it"),
    ("not-an-image", "is not an image that Pillow can read; remove or replace it"),
    ("other-size", "is 9x7 pixels, the other images are 8x8; resize or remove it"),
    ("one-class", "has one class ('cat'); membership inference needs a classifier of at least 2 classes"),
])
def test_bad_image_folder(image_run, tmp_path, damage, needle):
    from PIL import Image

    folder, made, env = image_run
    out, damaged = tmp_path / "run", tmp_path / "set"
    before = _whole_copy(made, out)
    shutil.copytree(folder, damaged)
    bad = damaged / "train" / "dog" / "3.jpg"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:300])
    elif damage == "not-an-image":
        bad.write_text("notes, not pixels\n")
    elif damage == "other-size":
        Image.fromarray(np.zeros((7, 9, 3), dtype=np.uint8)).save(bad)
    else:
        shutil.rmtree(damaged / "train" / "dog")
        shutil.rmtree(damaged / "test" / "dog")
    proc = run_cli("train", *tiny_args(out, "dataset.name=imagefolder", f"dataset.root={damaged}", "train.epochs=3"), env=env)
    _one_error_line(proc, needle, *([] if damage == "one-class" else [str(bad)]))
    _unchanged(out, before)  # the splits and target of the folder as it was are kept


def _user_model(path: Path, body: str) -> str:
    path.write_text("import torch\nfrom torch import nn\n\n" + body)
    return f"model.arch={path}:make"


def test_user_model_that_raises_on_import(tiny_run, tmp_path):
    out = tmp_path / "run"
    before = _whole_copy(tiny_run, out)
    arch = _user_model(tmp_path / "mine.py", "raise ImportError('no module named fancy_layers\\n(installed in another env?)')\n")
    proc = _main("run", *tiny_args(out, arch))
    _one_error_line(proc, f"model.arch '{tmp_path / 'mine.py'}:make': importing {tmp_path / 'mine.py'} raised ImportError: "
                          "no module named fancy_layers (installed in another env?)")
    _unchanged(out, before)


@pytest.mark.parametrize("body,needle", [
    ("def make(num_classes):\n    return 'a model'\n", "the factory returned str, not a torch.nn.Module"),
    ("class Net(nn.Module):\n    def __init__(self, num_classes):\n        super().__init__()\n        self.fc = nn.Linear(64, num_classes)\n\n"
     "    def forward(self, x):\n        raise RuntimeError('my layer broke\\nsee the log')\n\n\ndef make(num_classes):\n    return Net(num_classes)\n",
     "failed: RuntimeError: my layer broke see the log"),
])
def test_user_model_failing_inside_a_ray_task(tiny_run, tmp_path, body, needle):
    """Errors raised in the training task reach the user as one line (was a 53-line RayTaskError with colour codes)."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet"])
    (out / "target").mkdir()
    shutil.copy2(tiny_run / "target" / "members.parquet", out / "target" / "members.parquet")
    before = _snapshot(out)
    proc = run_cli("train", *tiny_args(out, _user_model(tmp_path / "mine.py", body)))
    _one_error_line(proc, needle, *(["Ray task train_events"] if "RuntimeError" in needle else []))
    assert "\x1b[" not in proc.stderr
    _unchanged(out, before)  # the splits kept, no model written


@pytest.mark.parametrize("name", ["splits.parquet", "target/model.pt", "target/metrics.json"])
def test_truncated_output_in_out_is_made_again(tiny_run, tmp_path, name):
    """Derived data, like a truncated feature part: said in one whole line, made again, the same as before."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet", "target"])
    whole = (out / name).read_bytes()
    (out / name).write_bytes(whole[: len(whole) // 2])
    proc = run_cli("train", *tiny_args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if "is damaged" in line]
    assert len(said) == 1 and said[0].startswith(f"[layerleak] OUT/{name} is damaged (") and said[0].endswith("; making it again")
    if name == "splits.parquet":  # the whole reason, not cut mid-sentence as it was
        assert "Either the file is corrupted or this is not a parquet file." in said[0]
    if name.endswith("metrics.json"):
        made, old = json.loads((out / name).read_text()), json.loads(whole)
        assert {k: made[k] for k in ("train_accuracy", "test_accuracy", "config_hash")} == \
               {k: old[k] for k in ("train_accuracy", "test_accuracy", "config_hash")}
    else:
        assert (out / name).read_bytes() == whole  # deterministic: the same splits, the same trained weights


def test_sigterm_ends_like_ctrl_c(tiny_run, tmp_path):
    """SIGTERM to the driver mid-stage: one line and exit 143 (was Ray's C++ stack dump), finished outputs kept."""
    out = tmp_path / "run"
    copy_run(tiny_run, out, [".layerleak", "config.yaml", "splits.parquet"])
    (out / "target").mkdir()
    shutil.copy2(tiny_run / "target" / "members.parquet", out / "target" / "members.parquet")
    before = _snapshot(out)
    proc = subprocess.Popen(cli_cmd("train", *tiny_args(out, "train.epochs=100000")), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:  # the splits are reused: next comes Ray
            if line.startswith("[layerleak] splits:"):
                break
        time.sleep(3)  # into ray.init or the training task
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "layerleak: terminated (SIGTERM); finished parts are kept, rerun the same command to resume", stderr[-3000:]
    assert "SIGTERM received" not in stderr and "PC: @" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    _unchanged(out, before)


def test_one_line_keeps_long_messages_whole():
    long = "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.\n" * 3
    assert one_line(ValueError(long)) == " ".join(long.split()) and one_line(RuntimeError()) == "RuntimeError"
    assert one_line("\x1b[36mray::task()\x1b[39m failed\n  at line 3") == "ray::task() failed at line 3"


def test_garbage_checkpoint_with_trust_is_one_line_without_advice(ray_head, tmp_path):
    """A file that is no checkpoint says so, even with model.trust_checkpoint=true, and never advises trusting it."""
    (tmp_path / "ck.pt").write_bytes(b"\x80\x02garbage" * 50)
    out = tmp_path / "run"  # a new OUT: the checkpoint enters the splits' hash, so no earlier run's folder fits it
    proc = run_cli("train", *tiny_args(out, f"model.checkpoint={tmp_path / 'ck.pt'}", "model.trust_checkpoint=true"))
    line = _one_error_line(proc, f"checkpoint {tmp_path / 'ck.pt'} is not a PyTorch checkpoint (")
    assert "trust_checkpoint" not in line
    assert not (out / "target" / "metrics.json").exists() and not (out / "target" / "model.pt").exists()
    assert not [f for f in out.rglob("*") if ".tmp" in f.name]  # nothing half-written


# --- issue 20 item 8: bad input refused before any work, in one line, OUT untouched ------------------------

@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_config_file_is_refused(tmp_path, text):
    out, config = tmp_path / "run", tmp_path / "empty.yaml"
    config.write_text(text)
    _one_error_line(_main("config", "--config", str(config), "--out", str(out)), f"config file {config} is empty")
    assert not out.exists()
    config.write_text("seed: 0\n")  # the fix: a section
    assert _main("config", "--config", str(config), "--out", str(out)).returncode == 0


@pytest.mark.parametrize("command", ["config", "train"])
def test_empty_out_is_refused(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the default output.dir (runs/default) would be made here
    _one_error_line(_main(command, *tiny_args(Path("x"))[2:], "--out", ""), "--out '' is an empty path")
    assert not list(tmp_path.iterdir())


def test_bootstrap_too_small_for_an_interval(tmp_path):
    out = tmp_path / "run"
    _one_error_line(_main("run", *tiny_args(out, "attack.bootstrap=1")),
                    "config attack.bootstrap: 1 is not allowed; expected an integer in [100, inf]")
    assert not out.exists()
    assert _main("config", *tiny_args(out, "attack.bootstrap=100")).returncode == 0


@pytest.mark.parametrize("arch", ["cnn", "user"])
def test_unknown_model_option(tmp_path, arch):
    if arch == "user":
        arch = f"{tmp_path / 'mine.py'}:make"
        _user_model(tmp_path / "mine.py", "def make(num_classes, in_channels, width=8):\n"
                                          "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    proc = _main("models", arch, "--option", "widht=16")
    _one_error_line(proc, f"model {arch!r} takes no option(s) ['widht']", "fix or remove the option")


def test_unreachable_object_store_out(tmp_path):
    out = "s3://layerleak-no-such-bucket-20/run"  # no network here: resolving the bucket fails at once
    _one_error_line(_main("train", *tiny_args(Path(out))[2:], "--out", out), f"cannot open OUT {out}", "choose a local --out")


def _images(root: Path, classes: dict[str, tuple[str, ...]]) -> Path:
    from PIL import Image

    for split, names in classes.items():
        for cls in names:
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _small_images(root: Path, cache: Path, monkeypatch) -> list[str]:
    monkeypatch.setenv("LAYERLEAK_CACHE", str(cache))
    return ["dataset.name=imagefolder", f"dataset.root={root}", "split.members=4", "split.nonmembers=4"]


def test_train_and_test_with_other_classes(tmp_path, monkeypatch):
    folder = _images(tmp_path / "set", {"train": ("cat", "dog"), "test": ("cat", "fox")})
    out, sets = tmp_path / "run", _small_images(tmp_path / "set", tmp_path / "cache", monkeypatch)
    _one_error_line(_main("train", *tiny_args(out, *sets)), "train/ and test/ have different classes",
                    "train/ only: dog", "test/ only: fox")
    assert not out.exists()  # failed before the first stage: no folder left behind
    (folder / "test" / "fox").rename(folder / "test" / "dog")  # the fix
    from mia_tasks.config import DatasetConfig
    from mia_tasks.data import load_dataset

    assert load_dataset(DatasetConfig(name="imagefolder", root=str(folder))).num_classes == 2


def test_truncated_image_archive(tmp_path, monkeypatch):
    import tarfile

    folder = _images(tmp_path / "set", {"train": ("cat", "dog"), "test": ("cat", "dog")})
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(folder / split, arcname=split)
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    out, sets = tmp_path / "run", _small_images(archive, tmp_path / "cache", monkeypatch)
    _one_error_line(_main("train", *tiny_args(out, *sets)), f"image archive {archive} cannot be read", "it may be truncated")
    assert not out.exists()


def test_download_without_network(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    out = tmp_path / "run"
    _one_error_line(_main("train", "--out", str(out), "--set", "dataset.name=cifar10", "--set", f"dataset.root={tmp_path / 'c10'}",
                          "--set", "dataset.download=true"),
                    f"dataset cifar10: downloading into {tmp_path / 'c10'} failed (URLError", "dataset.download=false")
    assert not out.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights(tmp_path, value):
    import torch

    from mia_tasks.config import DatasetConfig
    from mia_tasks.data import load_dataset
    from mia_tasks.models import build, load_checkpoint

    data = load_dataset(DatasetConfig(name="synthetic", synthetic_train=240, synthetic_test=80))
    model = build("cnn", data.num_classes, data.in_channels, input_size=data.input_size)
    state = model.state_dict()
    first = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[first].view(-1)[0] = value
    torch.save(state, tmp_path / "ck.pt")
    with pytest.raises(Exception) as e:
        load_checkpoint(build("cnn", data.num_classes, data.in_channels, input_size=data.input_size), str(tmp_path / "ck.pt"))
    assert f"checkpoint {tmp_path / 'ck.pt'} holds NaN or infinite values in 1 tensor(s) ({first})" in one_line(e.value)


def test_full_disk_under_out(tiny_run, tmp_path, monkeypatch):
    """ENOSPC while a stage writes (a patched fsync: no tmpfs small enough here): one line naming the disk, the
    half-written file removed, what OUT held kept; the same command after space is freed finishes that write."""
    import errno
    import os

    out = tmp_path / "run"
    before = _whole_copy(tiny_run, out, (".layerleak", "config.yaml"))
    fsync = os.fsync

    def full(fd: int) -> None:
        if "splits" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)
    monkeypatch.setattr(os, "fsync", full)
    _one_error_line(_main("train", *tiny_args(out)), f"no space left on the disk holding {out}", "splits.parquet",
                    "free space there or choose another --out")
    after = _snapshot(out)
    assert {k: after.get(k) for k in before} == before and set(after) <= {*before, "target/members.parquet"}  # whole files only
    _no_temporaries(out)
    assert not (out / "splits.parquet").exists()
    monkeypatch.setattr(os, "fsync", fsync)  # space freed: the write that failed now succeeds
    from mia_tasks.rundir import RunDir

    RunDir(str(out)).unowned().write_bytes("splits.parquet", b"whole")
    assert (out / "splits.parquet").read_bytes() == b"whole"


def test_damaged_cifar_batches(tmp_path):
    from mia_tasks.data import CIFAR_LAYOUT

    folder, train_files, test_files, _, _ = CIFAR_LAYOUT["cifar10"]
    (tmp_path / "c10" / folder).mkdir(parents=True)
    for f in train_files + test_files:
        (tmp_path / "c10" / folder / f).write_bytes(b"\x80\x04\x95")  # a pickle cut short
    out = tmp_path / "run"
    _one_error_line(_main("train", "--out", str(out), "--set", "dataset.name=cifar10", "--set", f"dataset.root={tmp_path / 'c10'}"),
                    f"dataset cifar10 under {tmp_path / 'c10'}: a file cannot be read", "download or copy the dataset again")
    assert not out.exists()
