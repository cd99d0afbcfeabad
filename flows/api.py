"""The Python API: ``audit(model, members, nonmembers)`` audits an in-memory model on in-memory data, for notebooks.

It is ``layerleak run`` underneath: the model and the data are written into OUT/inputs (content-addressed, so
another model or other data in the same OUT is refused as another config, never mixed in), then the same stages run
on Ray (a local instance unless ``ray.address`` / RAY_ADDRESS says otherwise) into the same run folder, and the
result reads that folder: ``AuditResult.load(OUT)`` works on any finished run, the CLI's included.

    from layerleak import audit
    result = audit(model, (x_members, y_members), (x_nonmembers, y_nonmembers), out="runs/mine")
    result.shapley          # per-layer Shapley values with their 95% intervals, a pandas DataFrame
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mia_tasks.arraydata import as_arrays, check_arrays, npz_fingerprint, write_npz
from mia_tasks.errors import LayerleakError
from mia_tasks.models.pickled import FACTORY, dump_module
from mia_tasks.rundir import BARE, REPORT_HTML, REPORT_JSON, REPORT_MD, SCORES, RunDir

INPUTS = "inputs"  # OUT/inputs: what audit() was given (the run's dataset and model files)


def _pd():
    try:
        import pandas
    except ImportError:
        raise LayerleakError("the audit's tables are pandas DataFrames: pip install pandas") from None
    return pandas


def _interval(entry: dict | None, prefix: str) -> dict[str, Any]:
    """{prefix: value, prefix_low, prefix_high} of a {value, ci95} entry."""
    entry = entry or {}
    ci = entry.get("ci95") or [None, None]
    return {prefix: entry.get("value"), f"{prefix}_low": ci[0], f"{prefix}_high": ci[1]}


@dataclass(frozen=True)
class AuditResult:
    """A finished audit, read from its run folder: verdicts, Shapley values, attacks and per-sample scores."""

    out: Path
    report: dict

    @classmethod
    def load(cls, out: str | os.PathLike) -> AuditResult:
        """The result held by run folder ``out`` (its report.json; run 'layerleak report --out OUT' if it has none)."""
        rd = RunDir(str(out))
        if not rd.exists(REPORT_JSON):
            raise LayerleakError(f"{out} holds no {REPORT_JSON}; run 'layerleak run --out {out}' (or 'layerleak report') first")
        return cls(Path(str(out)), rd.read_json(REPORT_JSON))

    @property
    def leakage_detected(self) -> bool | None:
        """True: the all-layer attack's interval lies above chance; False: no measurable leakage; None: not decided
        (for example a membership that looks wrong)."""
        return self.report.get("leakage_detected")

    @property
    def answer(self) -> list[str]:
        """The report's answer in plain words, as its first lines read."""
        return list(self.report.get("answer", []))

    @property
    def membership_check(self) -> dict | None:
        """A pretrained target's accuracies on members and non-members and whether the membership looks right."""
        return self.report.get("membership_check")

    @property
    def verdicts(self):
        """One row per verdict step (leakage, players, differences, params_depth), with its statement."""
        return _pd().DataFrame(self.report.get("verdicts", []), columns=["step", "statement"])

    @property
    def shapley(self):
        """Per-layer (per-player) Shapley values of target 0 with 95% intervals over audited samples, whether the
        interval excludes zero and whether it stays flagged after Holm's correction; the layer alone's value too."""
        rows = []
        for p in self.report.get("headline", []):
            rows.append({"player": p["player"], "depth": p.get("depth"), "params": p.get("params"),
                         **_interval(p.get("shapley"), "shapley"), "excludes_zero": p.get("excludes_zero"),
                         "flagged": p.get("flagged"), **_interval(p.get("alone"), "alone")})
        return _pd().DataFrame(rows)

    @property
    def attacks(self):
        """One row per attack OUT holds: its layers, sizes, and each metric with its 95% interval."""
        rows = []
        for stem, rec in self.report.get("attacks", {}).items():
            row: dict[str, Any] = {"attack": stem, "layers": ",".join(rec.get("layers") or []), "n": rec.get("n"),
                                   "members": rec.get("members")}
            for metric, entry in (rec.get("metrics") or {}).items():
                row.update(_interval(entry, metric))
            rows.append(row)
        return _pd().DataFrame(rows)

    @property
    def scores(self):
        """OUT/scores.parquet: one row per audited sample (its index in the members / non-members given: split
        'train' = members, 'test' = non-members), membership, loss and every attack's out-of-fold score."""
        rd = RunDir(str(self.out))
        if not rd.exists(SCORES):
            raise LayerleakError(f"{self.out} holds no {SCORES}; run 'layerleak report --out {self.out}'")
        return rd.read_parquet(SCORES).to_pandas()

    @property
    def paths(self) -> dict[str, str]:
        """Where the report lies: html, md, json, and the per-sample scores."""
        return {"html": str(self.out / REPORT_HTML), "md": str(self.out / REPORT_MD), "json": str(self.out / REPORT_JSON),
                "scores": str(self.out / SCORES)}

    def __repr__(self) -> str:
        return "\n".join([f"AuditResult({self.out})", *self.answer, f"report: {self.paths['html']}"])


def _digest(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()[:16]


def _write_once(path: Path, blob: bytes) -> None:
    """Write ``blob`` whole at ``path`` unless it is there already (the name is its content's digest)."""
    if path.is_file():
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def write_inputs(out: Path, model: nn.Module, arrays: tuple) -> dict[str, str]:
    """OUT/inputs/data-<digest>.npz, model-<digest>.pkl (the module) and model-<digest>.pt (its state dict)."""
    inputs = out / INPUTS
    inputs.mkdir(parents=True, exist_ok=True)
    tmp = inputs / f".data.tmp{os.getpid()}.npz"
    write_npz(tmp, arrays)
    data = inputs / f"data-{npz_fingerprint(tmp)}.npz"
    os.replace(tmp, data)
    module = dump_module(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    # the model's identity: its class, its structure and its weights (a pickle's bytes vary between calls)
    digest = _digest(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode(),
                     *(f"{k}:{v.dtype}:{list(v.shape)}".encode() + v.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k, v in state.items()))
    pkl, pt = inputs / f"model-{digest}.pkl", inputs / f"model-{digest}.pt"
    _write_once(pkl, module)
    _write_once(pt, buf.getvalue())
    return {"data": str(data), "module": str(pkl), "checkpoint": str(pt)}


def audit(model: nn.Module, members: Any, nonmembers: Any, *, out: str | os.PathLike = "runs/audit",
          config: str | None = None, overrides: Sequence[str] = (), num_classes: int | None = None) -> AuditResult:
    """Audit ``model`` (trained on ``members``, not on ``nonmembers``) with layerleak's whole pipeline into ``out``.

    ``members``, ``nonmembers``: (inputs, labels) as numpy arrays or tensors, or a torch Dataset of (input, label).
    Float inputs reach the model exactly as given; uint8 images [N, C, H, W] are normalised by dataset.mean/std.
    ``config``: a preset name or YAML file for the other settings; ``overrides``: ``key=value`` strings as --set
    takes them (for example ``"split.audit=200"``, ``"attack.bootstrap=2000"``). Rerunning with the same model and
    data resumes; other data or another model in the same ``out`` is refused. Bad input raises LayerleakError.
    """
    if not isinstance(model, nn.Module):
        raise LayerleakError(f"audit(model=...): got {type(model).__name__}, not a torch.nn.Module")
    if "://" in str(out):
        raise LayerleakError(f"audit(out={str(out)!r}): the Python API writes a local run folder; give a local path")
    x_m, y_m = as_arrays(members, "members")
    x_n, y_n = as_arrays(nonmembers, "nonmembers")
    arrays = check_arrays(x_m, y_m, x_n, y_n, "audit(members, nonmembers)", num_classes)
    root = Path(out).expanduser().resolve()
    new = not root.exists()
    from .cli import parser, run_stage

    try:
        RunDir(str(root)).claim()  # refuses a folder that is no run folder before anything is written into it
        files = write_inputs(root, model, arrays)
        sets = ["dataset.name=npz", f"dataset.root={files['data']}", f"model.arch={FACTORY}",
                f"model.options={json.dumps({'path': files['module']})}", f"model.checkpoint={files['checkpoint']}",
                "model.trust_checkpoint=false", "split.members=null", f"split.nonmembers={len(arrays[3])}", *overrides]
        argv = ["run", "--out", str(root), *(["--config", config] if config else [])]
        for s in sets:
            argv += ["--set", s]
        run_stage(parser().parse_args(argv))
    except BaseException:
        if new and root.is_dir() and set(os.listdir(root)) <= BARE | {INPUTS}:
            shutil.rmtree(root, ignore_errors=True)  # nothing was computed: no folder left behind
        raise
    return AuditResult.load(root)
