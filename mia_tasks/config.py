"""The audit's configuration: dataclasses loaded from commented YAML presets, validated before any work.

``load_config(path, overrides)`` reads a preset, applies ``--set a.b=value`` overrides and validates
every key and value; errors name the key and the allowed values. ``stage_hashes(cfg)`` gives each
stage a stable hash of exactly the settings that change its results, so a run folder can tell
whether its outputs were made by this config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LayerleakError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "flows" / "configs"
DATASETS = ("digits", "cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic")
FEATURE_KINDS = ("grad", "out", "loss")


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    mean: list[float] | None = None  # per-channel normalisation; None = the dataset's usual values
    std: list[float] | None = None
    synthetic_train: int = 600  # sizes and shape of the 'synthetic' dataset (tests)
    synthetic_test: int = 200
    synthetic_classes: int = 4
    synthetic_channels: int = 1
    synthetic_size: int = 8


@dataclass
class ModelConfig:
    arch: str = "cnn"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 20} for resnet
    checkpoint: str | None = None  # a pretrained target: training is skipped
    trust_checkpoint: bool = False  # allow pickled (non weights-only) checkpoints


@dataclass
class SplitConfig:
    members: int | None = 70  # target training set size; None = the whole train split
    nonmembers: int = 70  # non-member pool size
    audit: int | None = None  # audited samples per side; None = min(members, nonmembers)
    attack_train: int = 35  # attacker-known members (= non-members) per repeat
    attack_eval: int = 35  # evaluation members (= non-members) per repeat
    repeats: int = 10


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list[int] = field(default_factory=lambda: [100, 150])
    gamma: float = 0.1
    augment: bool = False
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class FeaturesConfig:
    layers: list[str] | None = None  # None = every conv/linear layer
    batch_size: int = 128
    budget_mb: int = 256  # peak memory for per-sample gradient chunks
    shard_size: int = 512  # samples per Parquet part
    device: str = "auto"


@dataclass
class AttackConfig:
    name: str = "logistic"
    C: float = 1.0
    transform: str = "signed-log"  # signed-log | none: features put on a log scale before standardising
    kinds: list[str] = field(default_factory=lambda: ["grad"])
    layers: list[str] | None = None
    nasr_layers: list[str] | None = None  # None = the last audited layer
    nasr_epochs: int = 30
    nasr_lr: float = 1e-3
    nasr_batch_size: int = 64


@dataclass
class SweepConfig:
    players: Any = "layers"  # layers | groups | {player: [layer, ...]}
    kinds: list[str] = field(default_factory=lambda: ["grad"])
    method: str = "exact"  # exact | sampled (permutation sampling with standard errors)
    max_exact_players: int = 20
    chunk_size: int = 512  # coalitions per fitter task
    permutations: int = 2000  # sampled: at most this many permutations
    tol: float = 0.005  # sampled: stop when every standard error is below this
    device: str = "auto"


@dataclass
class RayConfig:
    address: str | None = None  # None = RAY_ADDRESS or a new local instance
    extract_actors: int = 2  # CPU extractor actors when there is no GPU
    fit_actors: int = 2
    num_cpus: int | None = None  # local instance size; None = all cores
    max_retries: int = 3


@dataclass
class OutputConfig:
    dir: str = "runs/default"


@dataclass
class Config:
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading ---------------------------------------------------------------------------------

def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise LayerleakError(f"config {where or 'file'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise LayerleakError(f"unknown config key {path!r}: {'section ' + where if where else 'top level'} has {', '.join(fields)}")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else fields[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, path)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _set(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise LayerleakError(f"--set {assignment!r}: expected key.path=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise LayerleakError(f"--set {key}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML preset (default: flows/configs/default.yaml), apply overrides, validate."""
    path = Path(path) if path else CONFIG_DIR / "default.yaml"
    if not path.is_file() and (CONFIG_DIR / path).is_file():
        path = CONFIG_DIR / path
    if not path.is_file():
        raise LayerleakError(f"config file {path} not found (presets: {', '.join(p.name for p in sorted(CONFIG_DIR.glob('*.yaml')))})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LayerleakError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    for assignment in overrides or []:
        _set(tree, assignment)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise LayerleakError(f"config {key}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(cfg: Config) -> None:
    """Check types and values of every key; raise LayerleakError naming the key and what is allowed."""
    from .models import ARCHS  # local import: models imports torch

    _check(_is_int(cfg.seed), "seed", f"must be an integer, got {cfg.seed!r}")
    d = cfg.dataset
    _check(d.name in DATASETS, "dataset.name", f"unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
    _check(d.root is None or isinstance(d.root, str), "dataset.root", "must be a path")
    for key in ("mean", "std"):
        v = getattr(d, key)
        _check(v is None or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)), f"dataset.{key}", "must be a list of numbers or null")
    _check(d.std is None or all(x > 0 for x in d.std), "dataset.std", "must be positive")
    m = cfg.model
    _check(isinstance(m.arch, str) and (m.arch in ARCHS or ":" in m.arch), "model.arch",
           f"unknown architecture {m.arch!r}; choose one of {', '.join(sorted(ARCHS))} or 'module:factory'")
    _check(isinstance(m.options, dict), "model.options", "must be a mapping")
    s = cfg.split
    for key in ("nonmembers", "attack_train", "attack_eval", "repeats"):
        v = getattr(s, key)
        _check(_is_int(v) and v >= 1, f"split.{key}", f"must be a positive integer, got {v!r}")
    for key in ("members", "audit"):
        v = getattr(s, key)
        _check(v is None or (_is_int(v) and v >= 1), f"split.{key}", f"must be a positive integer or null, got {v!r}")
    t = cfg.train
    _check(_is_int(t.epochs) and t.epochs >= 1, "train.epochs", f"must be a positive integer, got {t.epochs!r}")
    _check(_is_int(t.batch_size) and t.batch_size >= 1, "train.batch_size", "must be a positive integer")
    _check(isinstance(t.lr, (int, float)) and t.lr > 0, "train.lr", "must be a positive number")
    _check(t.schedule in ("cosine", "step", "constant"), "train.schedule", f"{t.schedule!r}; allowed: cosine, step, constant")
    for key, v in (("train.device", t.device), ("features.device", cfg.features.device), ("sweep.device", cfg.sweep.device)):
        _check(v in ("auto", "cpu", "cuda"), key, f"{v!r}; allowed: auto, cpu, cuda")
    f = cfg.features
    for key in ("batch_size", "budget_mb", "shard_size"):
        v = getattr(f, key)
        _check(_is_int(v) and v >= 1, f"features.{key}", f"must be a positive integer, got {v!r}")
    _check(f.layers is None or (isinstance(f.layers, list) and f.layers), "features.layers", "must be a list of layer names or null")
    a = cfg.attack
    _check(a.name in ("logistic", "nasr", "loss-threshold", "confidence-threshold"), "attack.name",
           f"{a.name!r}; allowed: logistic, nasr, loss-threshold, confidence-threshold")
    _check(isinstance(a.C, (int, float)) and a.C > 0, "attack.C", "must be a positive number")
    _check(a.transform in ("signed-log", "none"), "attack.transform", f"{a.transform!r}; allowed: signed-log, none")
    for key, kinds in (("attack.kinds", a.kinds), ("sweep.kinds", cfg.sweep.kinds)):
        _check(isinstance(kinds, list) and kinds and all(k in FEATURE_KINDS for k in kinds), key,
               f"{kinds!r}; a non-empty list of {', '.join(FEATURE_KINDS)}")
    _check("loss" not in cfg.sweep.kinds, "sweep.kinds", "players bring per-layer features only: grad and/or out")
    w = cfg.sweep
    _check(w.players in ("layers", "groups") or (isinstance(w.players, dict) and w.players), "sweep.players",
           "'layers', 'groups' or a mapping {player: [layer, ...]}")
    _check(w.method in ("exact", "sampled"), "sweep.method", f"{w.method!r}; allowed: exact, sampled")
    _check(_is_int(w.max_exact_players) and 1 <= w.max_exact_players <= 30, "sweep.max_exact_players", "an integer in 1..30")
    _check(_is_int(w.chunk_size) and w.chunk_size >= 1, "sweep.chunk_size", "must be a positive integer")
    r = cfg.ray
    _check(_is_int(r.extract_actors) and r.extract_actors >= 1, "ray.extract_actors", "must be a positive integer")
    _check(_is_int(r.fit_actors) and r.fit_actors >= 1, "ray.fit_actors", "must be a positive integer")
    _check(isinstance(cfg.output.dir, str) and cfg.output.dir, "output.dir", "must be a path")


# --- hashes ----------------------------------------------------------------------------------

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


STAGE_SECTIONS = {
    "splits": ("seed", "dataset", "split", "model.checkpoint"),
    "target": ("seed", "dataset", "split", "model", "train"),
    "features": ("seed", "dataset", "split", "model", "train", "features"),
    "sweep": ("seed", "dataset", "split", "model", "train", "features", "attack.C", "attack.transform", "sweep"),
}
RESULT_FREE = {"dataset.root", "dataset.download", "train.device", "features.device", "features.batch_size",
               "features.budget_mb", "sweep.device", "sweep.chunk_size", "model.trust_checkpoint"}


def _select(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _strip(tree: Any, prefix: str) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items() if (f"{prefix}.{k}" if prefix else k) not in RESULT_FREE}
    return tree


def stage_hashes(cfg: Config) -> dict[str, str]:
    """A hash per stage over the settings that change its results (paths, devices and batch sizes excluded)."""
    tree = _strip(cfg.to_dict(), "")
    out = {stage: _digest({k: _select(tree, k) for k in keys if _has(tree, k)}) for stage, keys in STAGE_SECTIONS.items()}
    out["config"] = _digest({k: v for k, v in tree.items() if k not in ("ray", "output")})
    return out


def _has(tree: dict[str, Any], key: str) -> bool:
    try:
        _select(tree, key)
        return True
    except KeyError:
        return False


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, with its hashes, for OUT/config.yaml."""
    return yaml.safe_dump({"hashes": stage_hashes(cfg), **cfg.to_dict()}, sort_keys=False)
