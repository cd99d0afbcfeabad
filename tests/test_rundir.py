"""The run-folder contract: one module owns OUT's layout, no import cycles, a marked folder, one writer at a time.

The lock tests use real OS locks and processes; the lease (object stores) runs on pyarrow's in-memory
``mock://`` filesystem, which goes through the same non-local code path as s3:// or gs://.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import ROOT, run_cli, tiny_args
from mia_tasks.config import Config, dump_config
from mia_tasks.errors import LayerleakError
from mia_tasks.outlock import ReaderLock, WriterLock, reading, writing
from mia_tasks.rundir import LOCK, MARKER, RunDir, is_current, new_run_id, read_holder, stamp

PACKAGES = ("mia_tasks", "flows")


# --- the import graph --------------------------------------------------------------------------------

def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: all of them but the bodies of ``if TYPE_CHECKING:`` (type hints only)."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function, as full dotted names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return found


def test_no_import_cycle_and_the_library_never_imports_ray_or_flows():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imports(name, path, modules)
        if name.startswith("mia_tasks"):
            bad = sorted(m for m in imported if m.split(".")[0] in ("ray", "flows"))
            assert not bad, f"{name} imports {bad}"
        graph[name] = sorted(m for m in imported if m in modules and m != name)
    # depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_import_graph_sees_function_level_imports(tmp_path):
    """The walker finds an import inside a function, relative ones included (what the cycle hid behind)."""
    modules = {"flows.a": tmp_path / "a.py", "flows.b": tmp_path / "b.py"}
    modules["flows.a"].write_text("def f():\n    from .b import g\n    from . import b\n")
    assert _imports("flows.a", modules["flows.a"], modules) >= {"flows.b"}


# OUT's paths and result keys: spelled in mia_tasks/rundir.py only (string constants outside docstrings).
OUT_NAMES = ("splits.parquet", "members.parquet", "model.pt", "metrics.json", "shapley.json", "config.yaml",
             "report.json", "report.md", "report.html", "plots/", "attacks/", "experiments/", "features/", "sweep/",
             "config_hash", "features_hash", ".layerleak")


def _strings(tree: ast.AST):
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_out_paths_and_result_keys_are_spelled_in_one_module():
    """Code that names a file or key of OUT (a string without spaces: prose such as help texts may mention them)."""
    offenders = []
    for name, path in _modules().items():
        if name == "mia_tasks.rundir":
            continue
        for node in _strings(ast.parse(path.read_text())):
            if any(c.isspace() for c in node.value):
                continue
            hits = [n for n in OUT_NAMES if n in node.value]
            if name.startswith("mia_tasks.report"):  # report.json's own fields (config_hash of the whole config) are not OUT's keys
                hits = [n for n in hits if n not in ("config_hash", "features_hash")]
            if hits:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "OUT paths spelled outside mia_tasks/rundir.py:\n" + "\n".join(offenders)


def test_is_current_is_one_rule_for_records_and_part_metadata():
    hashes = {"splits": "s", "target": "t", "features": "f", "sweep": "w"}
    assert is_current({"config_hash": "w", "method": "exact"}, "shapley", hashes)
    assert not is_current({"config_hash": "f"}, "shapley", hashes)
    assert not is_current(None, "target", hashes)
    sets = {"seed": 0, "C": 1.0, "transform": "none"}
    rec = {"attack": "logistic", **stamp("attack", hashes, sets)}
    assert is_current(json.loads(json.dumps(rec)), "attack", hashes, sets)
    assert not is_current(rec, "attack", hashes, {**sets, "C": 0.5})
    assert stamp("experiment", hashes, sets) == {"features_hash": "f", "settings": sets}


# --- the marker --------------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _users_folder(folder: Path) -> None:
    (folder / "sweep").mkdir(parents=True)
    (folder / "report.md").write_text("# my own report\n")
    (folder / "config.yaml").write_text("experiment: mine\nlr: 0.1\n")
    pq.write_table(pa.table({"x": [1, 2, 3]}), folder / "sweep" / "part-mine.parquet")


def test_marker_new_empty_foreign_and_earlier_run_folders(tmp_path):
    new = RunDir(str(tmp_path / "new"))
    new.claim()
    assert (tmp_path / "new" / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    RunDir(str(tmp_path / "empty")).claim()
    assert (tmp_path / "empty" / MARKER).is_file()

    _users_folder(tmp_path / "mine")
    before = _snapshot(tmp_path / "mine")
    with pytest.raises(LayerleakError, match=r"is not empty and is not a layerleak run folder \(no \.layerleak\); choose a new --out"):
        RunDir(str(tmp_path / "mine")).claim()
    with pytest.raises(LayerleakError, match="is not a layerleak run folder"):
        RunDir(str(tmp_path / "mine")).check_run_folder("report")
    assert _snapshot(tmp_path / "mine") == before

    earlier = tmp_path / "earlier"  # made by the previous version: config.yaml with its hashes, no marker
    earlier.mkdir()
    (earlier / "config.yaml").write_text(dump_config(Config()))
    (earlier / "splits.parquet").write_bytes(b"whatever")
    RunDir(str(earlier)).check_run_folder("report")  # readable as it is, nothing written
    assert not (earlier / MARKER).exists()
    RunDir(str(earlier)).claim()
    assert (earlier / MARKER).is_file()


def test_run_into_a_users_folder_exits_2_and_changes_nothing(tmp_path):
    folder = tmp_path / "mine"
    _users_folder(folder)
    before = _snapshot(folder)
    proc = run_cli("run", *tiny_args(folder), timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"layerleak: error: OUT {folder} is not empty and is not a layerleak run folder (no .layerleak); "
                     f"choose a new --out"]
    assert _snapshot(folder) == before


def test_report_only_reads_and_names_the_command_that_makes_what_is_missing(tiny_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("report", *tiny_args(empty), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"run 'layerleak run --out {empty}'" in proc.stderr
    assert list(empty.iterdir()) == []  # no config.yaml, marker or lock; nothing trained or extracted

    out = tmp_path / "nosweep"
    subprocess.run(["cp", "-a", str(tiny_run), str(out)], check=True)
    for p in (out / "sweep").iterdir():
        p.unlink()
    (out / "shapley.json").unlink()
    before = _snapshot(out)
    proc = run_cli("report", *tiny_args(out), timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip() == (f"layerleak: error: OUT {out} has no sweep results (shapley.json) made with this config; "
                                   f"run 'layerleak sweep --out {out}' (or 'layerleak run') with the same --config/--set")
    assert _snapshot(out) == before


def test_report_without_config_reads_the_config_out_records(tiny_run, tmp_path):
    """'layerleak report --out X' alone reports X as it was made (its config.yaml), not the default config."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(tiny_run), str(out)], check=True)
    (out / "report.json").unlink()
    proc = run_cli("report", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["dataset"]["name"] == "synthetic" and report["config"]["output"]["dir"] == str(out)
    assert report["shapley"] == json.loads((out / "shapley.json").read_text()) and report["ignored"] == []


# --- the lock ----------------------------------------------------------------------------------------

HOLD = """
import sys, time
from mia_tasks.rundir import RunDir
from mia_tasks.outlock import WriterLock
rd = RunDir(sys.argv[1], run_id=sys.argv[2])
rd.claim()
with WriterLock(rd):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder_process(out: Path, run_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), run_id], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_naming_the_holder_and_a_sigkilled_holder_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = _holder_process(out, "runA")
    try:
        rd = RunDir(str(out), run_id="runB")
        with pytest.raises(LayerleakError, match=rf"being written by another layerleak run runA \(pid {holder.pid} on host "):
            with writing(rd):
                pass
        with pytest.raises(LayerleakError, match=r"run runA .*run 'layerleak report' when it has finished"):
            with reading(RunDir(str(out)), "report"):
                pass
        # runA's own actors may commit; runB's may not
        RunDir(str(out), run_id="runA").write_text("x.txt", "a")
        with pytest.raises(LayerleakError, match="run runB no longer holds OUT"):
            RunDir(str(out), run_id="runB").write_text("y.txt", "b")
        assert not (out / "y.txt").exists() and not list(out.glob(".y.txt.*"))
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    with writing(rd):  # the kernel released the dead holder's lock: taken over at once
        assert read_holder(rd)["run_id"] == "runB" and read_holder(rd)["pid"] == os.getpid()
        rd.write_text("y.txt", "b")
        with pytest.raises(LayerleakError, match="run runA no longer holds OUT"):  # the dead run's leftovers drop their parts
            RunDir(str(out), run_id="runA").write_text("x.txt", "late")
    assert (out / "x.txt").read_text() == "a"
    with reading(RunDir(str(out)), "report"):  # no writer now
        pass


def test_lease_on_an_object_store(tmp_path):
    """mock:// is a non-local pyarrow filesystem: OUT/.lock is a lease object with an expiry, renewed by a heartbeat."""
    rd = RunDir("mock:///bucket/run", run_id="runA")
    assert not rd.local
    with writing(rd):
        lease = read_holder(rd)
        assert lease["run_id"] == "runA" and lease["expires"] > time.time()
        other = RunDir(rd, run_id="runB")
        with pytest.raises(LayerleakError, match=r"being written by another layerleak run runA"):
            with WriterLock(other, settle_s=0):
                pass
        with pytest.raises(LayerleakError, match="run 'layerleak report' when it has finished"):
            with ReaderLock(RunDir(rd).unowned(), "report"):
                pass
        rd.write_text("part.txt", "a")
        with pytest.raises(LayerleakError, match="run runB no longer holds OUT"):
            other.write_text("part.txt", "b")
    assert read_holder(rd) is None  # released: the lease object is gone
    assert rd.read_text(MARKER) and rd.read_text("part.txt") == "a"

    # a lease left by a killed driver: expired, so taken over; the heartbeat keeps a live one fresh
    rd.unowned().write_json(LOCK, {"run_id": "dead", "pid": 1, "host": "h", "since": "then", "expires": time.time() - 1})
    lock = WriterLock(RunDir(rd, run_id="runC"), lease_s=0.6, settle_s=0)
    with lock:
        first = read_holder(rd)["expires"]
        time.sleep(0.5)
        assert read_holder(rd)["run_id"] == "runC" and read_holder(rd)["expires"] > first
        with pytest.raises(LayerleakError, match="run dead no longer holds OUT"):
            RunDir(rd, run_id="dead").write_text("part.txt", "late")
    assert rd.read_text("part.txt") == "a"


def test_new_run_ids_differ():
    assert len({new_run_id() for _ in range(100)}) == 100


# --- two runs, one OUT; a killed driver -----------------------------------------------------------------

def _table(folder: Path, keys: list[str]):
    import pandas as pd

    return pd.read_parquet(folder).sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_two_configs_started_together_on_one_out(tiny_run, tmp_path):
    """seed=0 and seed=1 started at once into one OUT: one is refused with one line naming the holder, and OUT
    ends equal to a clean run of the config it holds (the issue found seed 0's features under seed 1's sweep)."""
    import numpy as np

    from helpers import cli_cmd

    out = tmp_path / "run"
    procs = {seed: subprocess.Popen(cli_cmd("sweep", *tiny_args(out, f"seed={seed}")), cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in (0, 1)}
    done = {seed: (*p.communicate(timeout=600), p.returncode) for seed, p in procs.items()}
    refused = [seed for seed, (_, _, rc) in done.items() if rc == 2]
    assert len(refused) == 1, {s: (rc, err[-1500:]) for s, (_, err, rc) in done.items()}
    loser, winner = refused[0], 1 - refused[0]
    assert done[winner][2] == 0, done[winner][1][-2000:]
    err = done[loser][1].strip().splitlines()
    assert len(err) == 1 and re.fullmatch(rf"layerleak: error: OUT {out} is being written by another layerleak run \w+ "
                                          rf"\(pid {procs[winner].pid} on host \S+, since .+\); wait for it to finish, or "
                                          rf"choose another --out", err[0]), err

    clean = tiny_run
    if winner == 1:
        clean = tmp_path / "clean"
        proc = run_cli("sweep", *tiny_args(clean, "seed=1"))
        assert proc.returncode == 0, proc.stderr[-2000:]
    saved = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == winner
    got, want = _table(out / "features", ["sample_id"]), _table(clean / "features", ["sample_id"])
    assert list(got.columns) == list(want.columns) and got["sample_id"].tolist() == want["sample_id"].tolist()
    np.testing.assert_allclose(got.drop(columns=["member"]).to_numpy(float), want.drop(columns=["member"]).to_numpy(float),
                               rtol=1e-6, atol=1e-9)
    got, want = _table(out / "sweep", ["target", "coalition"]), _table(clean / "sweep", ["target", "coalition"])
    assert list(got.columns) == list(want.columns) and got[["target", "coalition"]].equals(want[["target", "coalition"]])
    for col in got.columns:  # numbers to float tolerance; packed per-sample columns exactly
        if got[col].dtype.kind in "fiub":
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9, err_msg=col)
        else:
            assert got[col].tolist() == want[col].tolist(), col
    assert json.loads((out / "shapley.json").read_text())["config_hash"] == json.loads((clean / "shapley.json").read_text())["config_hash"]


@pytest.mark.slow  # a whole killed run and its rerun; the fast unit test above covers the takeover
def test_a_lock_left_by_a_sigkilled_driver_is_taken_over(tiny_run, tmp_path):
    """SIGKILL the driver's process group in the middle of extraction; the same command again takes OUT over
    (the kernel released the lock) and completes, keeping the finished parts."""
    from helpers import cli_cmd, copy_run

    out = tmp_path / "run"
    copy_run(tiny_run, out, ["config.yaml", "splits.parquet", "target"])
    args = tiny_args(out, "features.batch_size=1")  # a result-free setting: same hash, slower extraction
    proc = subprocess.Popen(cli_cmd("extract", *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    start = time.time()
    while not list(out.glob("features/part-*.parquet")):
        assert proc.poll() is None and time.time() - start < 240, "no part written before the run ended"
        time.sleep(0.05)
    first = read_holder(RunDir(str(out)))
    assert first["pid"] == proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = run_cli("extract", *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reused" in rerun.stdout and len(list((out / "features").glob("part-*.parquet"))) == 5
    assert (out / MARKER).is_file() and read_holder(RunDir(str(out))) is None  # released at the end
