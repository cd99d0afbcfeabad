"""The run directory OUT: every path and result key in it, the rule for whether an output is current,
the folder's marker and the writer's lock. On a local path or any pyarrow filesystem URI.

Every file is written whole or not at all: locally to a temporary name in the same folder and
renamed into place (``os.replace`` semantics), on object stores as one PUT. A RunDir made with a
``run_id`` (the writing run's) commits a file only while OUT/.lock still names that run, so actors a
killed driver left behind cannot write into a folder another run has taken over (the lock itself:
mia_tasks.outlock).
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import pickle
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from .config import ANALYSIS_KEYS, CODE_VERSIONS, HASHES, VERSIONS, Config, dump_config, load_config, stage_hashes
from .errors import LayerleakError, one_line

T = TypeVar("T")

# --- the layout of OUT: every path a stage writes or reads, spelled here only --------------------------
MARKER = ".layerleak"  # this folder is a layerleak run folder
LOCK = ".lock"  # the writing run: an OS lock locally, a lease object on object stores (mia_tasks.outlock)
CONFIG = "config.yaml"
BARE = frozenset({MARKER, LOCK, CONFIG})  # what a run folder holds before its first stage writes anything
SPLITS = "splits.parquet"
MEMBERS = "target/members.parquet"
CHECKPOINT = "target/model.pt"
TARGET_METRICS = "target/metrics.json"
FEATURES = "features"
SWEEP = "sweep"
SHAPLEY = "shapley.json"
SCORES = "scores.parquet"  # per-sample scores of every current attack (mia_tasks.scores, written by the report)
ATTACKS = "attacks"
CALIBRATED_TAG = "calibrated"  # attacks/logistic-calibrated-<offline|online>...json: a calibrated logistic attack
EXPERIMENTS = "experiments"
REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
PLOTS = {"shapley": "plots/shapley.png", "single_layer": "plots/single_layer.png", "groups": "plots/groups.png",
         "roc": "plots/roc.png", "roc_pooled": "plots/roc_pooled.png", "defences": "plots/defences.png",
         "scores": "plots/scores.png"}
DEFENCES = "defences"  # OUT/defences/<name>/: a defended target and its audit, a run folder of the same layout
POPULATION = "population.parquet"  # the population pool: sample_id, label, in.<k> (model k trains on it) per model
MODELS = "models"  # OUT/models/<k>/ for k >= 1: another model of the population (a target or a reference), a run
# folder of the same layout (target/model.pt, target/metrics.json, features/part-*.parquet); model 0 is OUT's own target


def model_dir(k: int) -> str:
    """OUT/models/<k>: model k (>= 1) of the population, a unit of the same layout (open it with ``model_run``)."""
    if k < 1:
        raise LayerleakError(f"model {k}: model 0 is OUT's own target, the others are 1, 2, ...")
    return f"{MODELS}/{k}"


def model_run(rd: RunDir, k: int) -> RunDir:
    """Model k's run folder: OUT itself for model 0 (the target), OUT/models/<k> for the others."""
    return rd if k == 0 else rd.nested(model_dir(k))


def defence_dir(name: str) -> str:
    """OUT/defences/<name>: one defence's folder (open it with ``RunDir.nested``)."""
    if not name or "/" in name or name.startswith("."):
        raise LayerleakError(f"defence name {name!r} cannot name a folder")
    return f"{DEFENCES}/{name}"


def feature_part(shard: int) -> str:
    """OUT/features/part-NNNNN.parquet: one shard of audited samples."""
    return f"{FEATURES}/part-{shard:05d}.parquet"


def sweep_part(target: int, first: int, last: int) -> str:
    """OUT/sweep/part-tTTT-FIRST-LAST.parquet: one chunk of coalitions of one target, with each audited sample's
    out-of-fold correctness (and scores where a metric needs them)."""
    return f"{SWEEP}/part-t{target:03d}-{first:09d}-{last:09d}.parquet"


def attack_result(name: str, layers: list[str] | None, kinds: list[str], default_kinds: list[str],
                  calibration: str = "none") -> str:
    """OUT/attacks/<name>.json for the default selection, else a name that says which layers and kinds; a
    calibrated logistic attack's (``calibration`` offline or online) is logistic-calibrated-<calibration>[...].json,
    so it lives beside the uncalibrated one."""
    parts = [name]
    if name == "logistic" and calibration != "none":
        parts.append(f"{CALIBRATED_TAG}-{calibration}")
    if name == "logistic" and sorted(kinds) != sorted(default_kinds):
        parts.append("+".join(kinds))
    if layers and name in ("logistic", "nasr"):
        parts.append("+".join(layers))
    return f"{ATTACKS}/" + "-".join(parts) + ".json"


def attack_calibration(rel: str) -> str:
    """The calibration an OUT/attacks file's name says its logistic result was made with ('none' when it names
    none): the inverse of ``attack_result``'s calibration part."""
    parts = posixpath.basename(rel).removesuffix(".json").split("-")
    return parts[2] if len(parts) > 2 and parts[:2] == ["logistic", CALIBRATED_TAG] else "none"


def default_attack_stem(name: str, calibration: str = "none") -> str:
    """The attacks/ file stem (the report's key) of attack ``name`` on its default selection (every layer, the
    configured kinds), e.g. ``logistic`` or ``logistic-calibrated-offline``."""
    return posixpath.basename(attack_result(name, None, [], [], calibration)).removesuffix(".json")


def experiment_result(name: str, attack: str) -> str:
    """OUT/experiments/<experiment>-<attack>.json."""
    return f"{EXPERIMENTS}/{name}-{attack}.json"


# --- result keys and the one rule for whether an output is current ---------------------------------------
# Each output carries the hash of the stage settings that made it (config.STAGE_SECTIONS declares which
# settings change which stage) under a key, and results that depend on more than the features carry
# those settings too (config.attack_settings, experiments.experiment_settings).
HASH_KEY = "config_hash"
SETTINGS_KEY = "settings"
STAMPS = {  # output -> (the key its hash is stored under, the stage whose hash it is)
    "splits": (HASH_KEY, "splits"), "target": (HASH_KEY, "target"), "features": (HASH_KEY, "features"),
    "sweep": (HASH_KEY, "sweep"), "shapley": (HASH_KEY, "sweep"), "attack": (HASH_KEY, "features"),
    "experiment": ("features_hash", "features"), "population": (HASH_KEY, "population"),
}
# Which files prove that a stage has outputs in OUT (a config.yaml of another config is refused then).
STAGE_OUTPUTS = {"splits": SPLITS, "target": TARGET_METRICS, "features": FEATURES, "sweep": SWEEP}


def stamp(output: str, hashes: dict[str, str], settings: dict | None = None) -> dict[str, Any]:
    """The result keys an ``output`` made now carries: its stage hash, and its settings when it has any."""
    key, stage = STAMPS[output]
    return {key: hashes[stage], **({SETTINGS_KEY: settings} if settings is not None else {})}


def is_current(record: dict | None, output: str, hashes: dict[str, str], settings: dict | None = None) -> bool:
    """Whether a saved result (a JSON record, or a Parquet part's metadata) was made with these settings."""
    return record is not None and all(record.get(k) == v for k, v in stamp(output, hashes, settings).items())


def new_run_id() -> str:
    """A fresh id for one writing command: written in OUT/.lock and checked before every commit."""
    return uuid.uuid4().hex[:12]


class RunDir:
    """OUT as a filesystem and a root; paths are relative to OUT and may not escape it.

    ``RunDir(rd)`` of another RunDir is a copy holding the same run id: stages hand ``rd`` to their
    Ray tasks and actors, which then commit only while that run holds OUT.
    """

    def __init__(self, out: str | RunDir, run_id: str | None = None):
        if isinstance(out, RunDir):
            self.__dict__.update(vars(out))
            self.run_id = run_id or out.run_id
            return
        self.run_id = run_id
        self.parent: RunDir | None = None  # the run folder whose lock this one writes under (a nested one's)
        self.uri = str(out)
        if "://" in self.uri and not self.uri.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            self.local = False
        else:
            path = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
            self.local = True

    def path(self, rel: str) -> str:
        """Absolute path of ``rel`` inside OUT; refuses paths that would leave OUT."""
        full = posixpath.normpath(posixpath.join(self.root, rel))
        if full != self.root and not full.startswith(self.root.rstrip("/") + "/"):
            raise LayerleakError(f"path {rel!r} would be written outside OUT ({self.root})")
        return full

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str, suffix: str = "") -> list[str]:
        """Names of the files directly in folder ``rel`` ending with ``suffix``, sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                      and not i.base_name.startswith("."))

    def subfolders(self, rel: str) -> list[str]:
        """Names of the folders directly in folder ``rel``, sorted (e.g. the defences in OUT/defences)."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def mkdir(self, rel: str = "") -> None:
        try:
            self.fs.create_dir(self.path(rel), recursive=True)
        except OSError as e:
            raise LayerleakError(f"cannot create {self.path(rel)}: {e.strerror or e}; choose a writable --out") from None

    # --- whole-or-absent writes ---
    def write_bytes(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        self.mkdir(posixpath.dirname(rel))
        if not self.local:
            self.check_owner(rel)
            with self.fs.open_output_stream(final) as f:
                f.write(data)
            return
        tmp = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.check_owner(rel)
            os.replace(tmp, final)
        except (OSError, LayerleakError) as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, LayerleakError):
                raise
            if e.errno == errno.ENOSPC:
                raise LayerleakError(f"no space left on the disk holding {self.uri} (writing {final}): free space there or "
                                     f"choose another --out, then rerun the same command; finished parts are kept") from None
            raise LayerleakError(f"cannot write {final}: {e.strerror or e}; choose a writable --out") from None

    def nested(self, rel: str) -> RunDir:
        """OUT/<rel> as a run folder of the same layout (a defence's audit), written under OUT's own lock."""
        sub = RunDir(self)
        sub.root, sub.uri = self.path(rel), f"{self.uri.rstrip('/')}/{rel}"
        sub.parent = self.parent or self
        return sub

    def unowned(self) -> RunDir:
        """The same OUT without a run id: its writes skip the owner check (the marker, the lock's own record)."""
        plain = RunDir(self)
        plain.run_id = None
        return plain

    def check_owner(self, rel: str) -> None:
        """Before a commit: refuse (and so drop ``rel``) unless OUT/.lock still names this RunDir's run."""
        if self.run_id is None:
            return
        holder = read_holder(self.parent or self)
        if holder is None or holder.get("run_id") != self.run_id:
            raise LayerleakError(f"run {self.run_id} no longer holds OUT {self.uri} ({holder_text(holder)}); "
                                 f"dropped {rel} instead of writing it")

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")

    def write_parquet(self, rel: str, table: pa.Table, metadata: dict[str, Any] | None = None) -> None:
        if metadata:
            meta = dict(table.schema.metadata or {})
            meta.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    # --- reads ---
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def parquet_metadata(self, rel: str) -> dict[str, Any]:
        """The JSON key/values a part file carries (raises on a truncated or non-Parquet file)."""
        with self.fs.open_input_file(self.path(rel)) as f:
            meta = pq.read_schema(f).metadata or {}
        out = {}
        for k, v in meta.items():
            try:
                out[k.decode()] = json.loads(v)
            except ValueError:
                continue
        return out

    def read_derived(self, rel: str, read: Callable[[str], T]) -> T | None:
        """``read(rel)`` of an output a stage can make again, or None when it is missing or damaged (a truncated
        Parquet, JSON or checkpoint file: said in one line, and the caller makes it again)."""
        if not self.exists(rel):
            return None
        try:
            return read(rel)
        except (OSError, ValueError, EOFError, RuntimeError, UnicodeDecodeError, pa.ArrowException, zipfile.BadZipFile,
                pickle.UnpicklingError) as e:
            print(f"[layerleak] OUT/{rel} is damaged ({one_line(e)}); making it again", flush=True)
            return None

    # --- the folder: marker and lock ---
    def claim(self) -> None:
        """Make OUT a layerleak run folder: create it (or adopt an empty one) with its marker OUT/.layerleak.

        A non-empty folder without the marker is refused and left untouched, unless it is a run folder of
        an earlier layerleak (a config.yaml holding a layerleak config and its stage hashes): that one is
        marked and used.
        """
        if self.exists(MARKER):
            return
        if self._entries():
            if not self.earlier_run_folder():
                raise LayerleakError(f"OUT {self.uri} is not empty and is not a layerleak run folder (no {MARKER}); "
                                     f"choose a new --out")
            print(f"[layerleak] OUT {self.uri}: a run folder of an earlier layerleak (no {MARKER}); marking it as one")
        self.unowned().write_text(MARKER, "layerleak run folder\n")  # before the lock: no owner to check yet

    def check_run_folder(self, command: str) -> None:
        """For a command that only reads OUT: it must be a layerleak run folder (nothing is written to check it)."""
        if not self._entries():
            raise LayerleakError(f"OUT {self.uri} does not exist or is empty; run 'layerleak run --out {self.uri}' first")
        if not (self.exists(MARKER) or self.earlier_run_folder()):
            raise LayerleakError(f"OUT {self.uri} is not a layerleak run folder (no {MARKER}); "
                                 f"'layerleak {command}' reads only run folders")

    def earlier_run_folder(self) -> bool:
        """A folder made before run folders were marked: its config.yaml is a layerleak config with stage hashes."""
        try:
            old = yaml.safe_load(self.read_text(CONFIG))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return False
        # the stage hashes every config.yaml carried before run folders were marked (not STAGE_OUTPUTS: it may grow)
        return (isinstance(old, dict) and isinstance(old.get("hashes"), dict) and {"splits", "target", "features", "sweep"} <= set(old["hashes"])
                and {"seed", "dataset", "model", "split", "train"} <= set(old))

    def _entries(self) -> list[str]:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise LayerleakError(f"OUT {self.uri} is a file, not a folder; choose a new --out")
        names = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))]
        return [n for n in names if not (n.startswith(".") and n.endswith(".tmp"))]  # a write in flight is no content

    # --- config ---
    def saved_config(self) -> Config | None:
        """The config OUT/config.yaml records, with OUT itself as output.dir; None when OUT has none."""
        if not self.exists(CONFIG):
            return None
        try:
            tree = yaml.safe_load(self.read_text(CONFIG))
        except (yaml.YAMLError, UnicodeDecodeError):
            tree = None
        if not isinstance(tree, dict):
            raise LayerleakError(f"OUT {self.uri}/{CONFIG} is not a layerleak config; give the run's --config/--set")
        return self._config_of(tree)

    def _config_of(self, tree: dict[str, Any]) -> Config:
        """A config.yaml's content read as this code reads a config (its hashes and code versions left out)."""
        tree = {k: v for k, v in tree.items() if k not in (HASHES, VERSIONS)}
        tree["output"] = {**(tree.get("output") if isinstance(tree.get("output"), dict) else {}), "dir": self.uri}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(tree, f)
            f.flush()
            try:
                return load_config(f.name)
            except LayerleakError as e:
                raise LayerleakError(f"OUT {self.uri}/{CONFIG}: {str(e).replace(f.name, CONFIG)}; give the run's --config/--set") from None

    def prepare(self, cfg: Config) -> dict[str, str]:
        """Create OUT, refuse a config whose stages differ from outputs already there, save config.yaml.

        A stage hash that differs while the stage's settings are the same (config.yaml's config, read by this code,
        hashes as ``cfg`` does) is no other config but another layerleak version (CODE_VERSIONS, e.g. the feature
        schema): OUT is accepted, that stage's outputs are no longer current and are made again by their stage,
        and every other output is kept."""
        self.mkdir()
        hashes = stage_hashes(cfg)
        if self.exists(CONFIG):
            try:
                old = yaml.safe_load(self.read_text(CONFIG)) or {}
            except yaml.YAMLError:
                old = {}
            old = old if isinstance(old, dict) else {}
            old_hashes = old.get(HASHES) if isinstance(old.get(HASHES), dict) else {}
            differ = [stage for stage, marker in STAGE_OUTPUTS.items()
                      if old_hashes.get(stage) not in (None, hashes[stage]) and self._has_outputs(marker)]
            recorded = self._recorded_hashes(old) if differ else {}
            analysis = []  # stages redone because only how results are evaluated changed (ANALYSIS_KEYS)
            for stage in differ:
                if recorded.get(stage) != hashes[stage]:
                    changed = _changed_keys(old, cfg.to_dict())
                    if changed and all(k in ANALYSIS_KEYS for k in changed):
                        analysis.append(stage)
                        continue
                    raise LayerleakError(f"OUT {self.uri} holds {stage} outputs made with another config "
                                         f"(changed: {', '.join(changed) or 'see ' + CONFIG}); use a new --out, or delete "
                                         f"OUT/{STAGE_OUTPUTS[stage]}")
            if analysis:
                print(f"[layerleak] OUT {self.uri}: {', '.join(_changed_keys(old, cfg.to_dict()))} changed: the {', '.join(analysis)} "
                      f"outputs are made again with it, the rest is kept", flush=True)
                differ = [d for d in differ if d not in analysis]
            if differ:
                print(f"[layerleak] OUT {self.uri}: its {', '.join(differ)} outputs were made by another layerleak version "
                      f"({_versions_text(old.get(VERSIONS))}), not another config; they are made again, the rest is kept",
                      flush=True)
        self.write_text(CONFIG, dump_config(cfg))
        return hashes

    def _recorded_hashes(self, old: dict[str, Any]) -> dict[str, str]:
        """The stage hashes that config.yaml's config has under this code ({} when this code cannot read it)."""
        try:
            return stage_hashes(self._config_of(old))
        except LayerleakError:
            return {}

    def _has_outputs(self, marker: str) -> bool:
        if marker.endswith((".json", ".parquet")):
            return self.exists(marker)
        return bool(self.listdir(marker, ".parquet"))


def read_holder(rd: RunDir) -> dict[str, Any] | None:
    """The writing run's record in OUT/.lock (run id, pid, host, since[, expires]), or None when there is none."""
    try:
        rec = json.loads(rd.read_text(LOCK))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and "run_id" in rec else None


def holder_text(holder: dict[str, Any] | None) -> str:
    """``run R (pid P on host H, since T)`` for messages."""
    if not holder:
        return f"no run recorded in OUT/{LOCK}"
    return f"run {holder['run_id']} (pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')})"


def _versions_text(recorded: Any) -> str:
    """``feature_schema 1, now 2`` for the code versions that changed since config.yaml recorded them (a release
    before code versions were recorded: ``feature_schema now 2``)."""
    if not isinstance(recorded, dict):
        return ", ".join(f"{k} now {v}" for k, v in CODE_VERSIONS.items())
    changed = [f"{k} {recorded.get(k)}, now {v}" for k, v in CODE_VERSIONS.items() if recorded.get(k) != v]
    return "; ".join(changed) or "the same code versions, other stage hashes"


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in (HASHES, VERSIONS):
            continue
        a, b = old.get(k), new.get(k)
        path = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, path + ".")
        elif a != b:
            keys.append(path)
    return keys


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
