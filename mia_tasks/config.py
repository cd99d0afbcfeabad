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
from .schema import FEATURE_KINDS, LAYER_KINDS, SCHEMA_VERSION
from .rules import (
    Rule,
    allow,
    boolean,
    check_fields,
    choice,
    either,
    integer,
    list_of,
    mapping,
    number,
    text,
)

DEVICES = ("auto", "cpu", "cuda")


# Choices come from the registries, read when a rule is used (they import torch), so each list exists once.
def _datasets() -> list[str]:
    from .data import DATASETS

    return list(DATASETS)


def _archs() -> list[str]:
    from .models import ARCHS

    return sorted(ARCHS)


def _attacks() -> list[str]:
    from .attacks import ATTACKS

    return list(ATTACKS)


def _kinds() -> list[str]:
    return list(FEATURE_KINDS)


def _transforms() -> list[str]:
    from .transforms import TRANSFORMS

    return list(TRANSFORMS)


def _arch(value: Any) -> str:
    """A registered architecture, or a user's factory, imported here so that its errors come before any work."""
    if isinstance(value, str) and value in _archs():
        return value
    if isinstance(value, str) and all(value.rpartition(":")[::2]):
        from .models import load_factory

        load_factory(value)
        return value
    raise ValueError(value)


ARCH = Rule(lambda: f"one of {', '.join(_archs())}, or a factory 'package.module:factory' or 'path/to/file.py:factory'", _arch)
POSITIVE, POSITIVE_INT, PATH = number(0, lo_open=True), integer(1), text("a path")
MIN_BOOTSTRAP = 100  # attack.bootstrap: the fewest replicates that give a 95% interval a few samples in each tail
LAYERS = list_of(text("a layer name")).or_null()
PLAYERS = either(choice(("layers", "groups")), mapping("a mapping {player: [layer, ...]}", list_of(text("a layer name")), nonempty=True))
PLAYER_KINDS = list_of(choice(LAYER_KINDS))  # players bring per-layer features only


@dataclass
class DatasetConfig:
    name: str = field(default="digits", metadata=allow(choice(_datasets)))
    root: str | None = field(default=None, metadata=allow(PATH.or_null()))
    download: bool = field(default=False, metadata=allow(boolean()))
    # per-channel normalisation; None = the dataset's usual values
    mean: list[float] | None = field(default=None, metadata=allow(list_of(number()).or_null()))
    std: list[float] | None = field(default=None, metadata=allow(list_of(POSITIVE).or_null()))
    synthetic_train: int = field(default=600, metadata=allow(POSITIVE_INT))  # sizes and shape of the 'synthetic' dataset (tests)
    synthetic_test: int = field(default=200, metadata=allow(POSITIVE_INT))
    synthetic_classes: int = field(default=4, metadata=allow(integer(2)))
    synthetic_channels: int = field(default=1, metadata=allow(POSITIVE_INT))
    synthetic_size: int = field(default=8, metadata=allow(POSITIVE_INT))


@dataclass
class ModelConfig:
    arch: str = field(default="cnn", metadata=allow(ARCH))
    options: dict[str, Any] = field(default_factory=dict, metadata=allow(mapping("a mapping {option: value}, e.g. {depth: 20}")))
    checkpoint: str | None = field(default=None, metadata=allow(PATH.or_null()))  # a pretrained target: training is skipped
    trust_checkpoint: bool = field(default=False, metadata=allow(boolean()))  # allow pickled (non weights-only) checkpoints


@dataclass
class SplitConfig:
    members: int | None = field(default=70, metadata=allow(POSITIVE_INT.or_null()))  # target training set size; None = the whole train split
    nonmembers: int = field(default=70, metadata=allow(POSITIVE_INT))  # non-member pool size
    audit: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null()))  # audited samples per side; None = min(members, nonmembers)
    # targets audited, each trained on its own random half of the population pool (mia_tasks.population)
    targets: int = field(default=1, metadata=allow(POSITIVE_INT))
    # a pretrained target's stated members: .npy, .csv (one index a line, optional header) or .parquet (column
    # sample_id or the only column) of indices into the dataset's TRAIN split; null = split.members drawn from it
    members_file: str | None = field(default=None, metadata=allow(PATH.or_null()))
    # stated non-members: indices into the TEST split, same formats; null = split.nonmembers drawn from the test split
    nonmembers_file: str | None = field(default=None, metadata=allow(PATH.or_null()))


@dataclass
class TrainConfig:
    epochs: int = field(default=40, metadata=allow(POSITIVE_INT))
    batch_size: int = field(default=64, metadata=allow(POSITIVE_INT))
    lr: float = field(default=0.05, metadata=allow(POSITIVE))
    momentum: float = field(default=0.9, metadata=allow(number(0, 1, hi_open=True)))
    weight_decay: float = field(default=5e-4, metadata=allow(number(0)))
    schedule: str = field(default="cosine", metadata=allow(choice(("cosine", "step", "constant"))))
    milestones: list[int] = field(default_factory=lambda: [100, 150], metadata=allow(list_of(POSITIVE_INT, nonempty=False)))  # step schedule
    gamma: float = field(default=0.1, metadata=allow(number(0, 1, lo_open=True)))  # step schedule: lr factor at each milestone
    augment: bool = field(default=False, metadata=allow(boolean()))
    device: str = field(default="auto", metadata=allow(choice(DEVICES)))
    # a target's accuracy is measured on at most this many members and as many test images (seeded); null = all
    accuracy_samples: int | None = field(default=2000, metadata=allow(POSITIVE_INT.or_null()))


@dataclass
class FeaturesConfig:
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS))  # None = every conv/linear layer
    batch_size: int = field(default=128, metadata=allow(POSITIVE_INT))
    budget_mb: int = field(default=256, metadata=allow(POSITIVE_INT))  # peak memory for per-sample gradient chunks
    shard_size: int = field(default=512, metadata=allow(POSITIVE_INT))  # samples per Parquet part
    device: str = field(default="auto", metadata=allow(choice(DEVICES)))


@dataclass
class AttackConfig:
    name: str = field(default="logistic", metadata=allow(choice(_attacks)))
    C: float = field(default=1.0, metadata=allow(POSITIVE))
    # signed-log | none: features put on a log scale before standardising
    transform: str = field(default="signed-log", metadata=allow(choice(_transforms)))
    # cross-fitting: the audited pool in k folds balanced by membership; each sample scored by the attack fitted on the others
    folds: int = field(default=5, metadata=allow(integer(2, 127)))
    # replicates of the stratified bootstrap behind every interval: under 100, a 95% percentile interval rests on
    # one or two replicates per tail (and one replicate gives no interval at all)
    bootstrap: int = field(default=1000, metadata=allow(integer(MIN_BOOTSTRAP)))
    kinds: list[str] = field(default_factory=lambda: ["grad"], metadata=allow(list_of(choice(_kinds))))
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS))
    nasr_layers: list[str] | None = field(default=None, metadata=allow(LAYERS))  # None = the last audited layer
    nasr_epochs: int = field(default=30, metadata=allow(POSITIVE_INT))
    nasr_lr: float = field(default=1e-3, metadata=allow(POSITIVE))
    nasr_batch_size: int = field(default=64, metadata=allow(POSITIVE_INT))
    # calibrated with reference models (references.count): the logistic attack's and the sweep's features judged
    # against each sample's OUT references ((x - mu_out)/s_out), online also IN (per-feature log-likelihood ratio)
    calibration: str = field(default="none", metadata=allow(choice(("none", "offline", "online"))))
    lira_mode: str = field(default="online", metadata=allow(choice(("online", "offline"))))  # the 'lira' attack
    lira_variance: str = field(default="global", metadata=allow(choice(("global", "per-example"))))  # global: pooled (few references)
    rmia_mode: str = field(default="online", metadata=allow(choice(("online", "offline"))))
    rmia_a: float = field(default=0.3, metadata=allow(number(0, 1)))  # offline: Pr(x) = (1+a)/2 mean_OUT + (1-a)/2
    rmia_gamma: float = field(default=1.0, metadata=allow(POSITIVE))  # score: fraction of z with LR(x)/LR(z) > gamma


@dataclass
class SweepConfig:
    # layers | groups | {player: [layer, ...]}
    players: Any = field(default="layers", metadata=allow(PLAYERS))
    kinds: list[str] = field(default_factory=lambda: ["grad"], metadata=allow(PLAYER_KINDS))
    method: str = field(default="exact", metadata=allow(choice(("exact", "sampled"))))  # sampled: permutation sampling with standard errors
    max_exact_players: int = field(default=20, metadata=allow(integer(1, 30)))
    chunk_size: int = field(default=512, metadata=allow(POSITIVE_INT))  # coalitions per fitter task
    permutations: int = field(default=2000, metadata=allow(POSITIVE_INT))  # sampled: at most this many permutations
    tol: float = field(default=0.005, metadata=allow(POSITIVE))  # sampled: stop when every standard error is below this
    device: str = field(default="auto", metadata=allow(choice(DEVICES)))
    # none | loss | lira | rmia: v(∅) is this black-box attack's value and every coalition's attack also sees its
    # score, so a player's Shapley value is its leakage beyond it (lira, rmia need references.count; exact sweeps)
    baseline: str = field(default="none", metadata=allow(choice(("none", "loss", "lira", "rmia"))))


@dataclass
class ReferencesConfig:
    """Reference models: trained like the target, each on its own random half of the population pool, so each
    audited sample is IN for about half of them (calibrated attacks); targets serve as each other's references."""
    count: int = field(default=0, metadata=allow(integer(0)))  # K reference models per target


def _defences() -> list[str]:
    from .defences import DEFENCES

    return list(DEFENCES)


@dataclass
class DefenceConfig:
    """``layerleak defend``: a defended target trained on the same members with the same recipe, audited again."""
    name: str = field(default="dp-sgd", metadata=allow(choice(_defences)))  # dp-sgd | layer-dp | regularise
    epsilon: float = field(default=8.0, metadata=allow(POSITIVE))  # dp-sgd: the target ε
    delta: float | None = field(default=None, metadata=allow(number(0, 1, lo_open=True, hi_open=True).or_null()))  # dp-sgd; None = 1/members
    max_grad_norm: float = field(default=1.0, metadata=allow(POSITIVE))  # dp-sgd: per-sample clipping norm
    per_layer_clipping: bool = field(default=False, metadata=allow(boolean()))  # dp-sgd: each layer to max_grad_norm/sqrt(#params tensors)
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS))  # layer-dp: None = the top player(s) by Shapley value
    top: int = field(default=1, metadata=allow(POSITIVE_INT))  # layer-dp: how many top players when layers is None
    clip: float = field(default=1.0, metadata=allow(POSITIVE))  # layer-dp: per-sample clipping norm of the chosen layers
    noise_multiplier: float = field(default=1.0, metadata=allow(number(0)))  # layer-dp: noise std / clip
    weight_decay: float = field(default=0.01, metadata=allow(number(0)))  # regularise
    epochs: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null()))  # regularise: early stopping; None = train.epochs


@dataclass
class RayConfig:
    address: str | None = field(default=None, metadata=allow(text("a Ray address host:port or ray://host:port").or_null()))  # None = RAY_ADDRESS or a new local instance
    extract_actors: int = field(default=2, metadata=allow(POSITIVE_INT))  # CPU extractor actors when there is no GPU
    fit_actors: int = field(default=2, metadata=allow(POSITIVE_INT))
    num_cpus: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null()))  # local instance size; None = all cores
    max_retries: int = field(default=3, metadata=allow(integer(0)))


@dataclass
class OutputConfig:
    dir: str = field(default="runs/default", metadata=allow(PATH))


@dataclass
class Config:
    seed: int = field(default=0, metadata=allow(integer(0)))  # numpy's generators take non-negative seeds
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading ---------------------------------------------------------------------------------

def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise LayerleakError(f"config {where}: expected a section (a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}), "
                             f"got {type(data).__name__} {data!r}")
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise LayerleakError(f"--set {assignment!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it, "
                             f"e.g. --set '{key.strip()}=\"...\"'") from None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise LayerleakError(f"--set {key}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply overrides, validate (presets are found by name in flows.presets)."""
    path = Path(path)
    if not path.is_file():
        raise LayerleakError(f"config file {path} not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LayerleakError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LayerleakError(f"config file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if tree is None:
        raise LayerleakError(f"config file {path} is empty (or only comments): give a preset such as default.yaml, "
                             f"or write at least one section, e.g. 'seed: 0'")
    if not isinstance(tree, dict):
        raise LayerleakError(f"config file {path}: the top level must be a mapping of sections "
                             f"({', '.join(f.name for f in dataclasses.fields(Config))}), got a {type(tree).__name__}")
    for assignment in overrides or []:
        _set(tree, assignment)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _yaml_problem(e: yaml.YAMLError) -> str:
    """YAML's complaint with its line and column (1-based), on one line."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def validate(cfg: Config) -> None:
    """Check every key against its rule (type, range, choices); raise LayerleakError naming the key and what is allowed."""
    check_fields(cfg)
    needs = [f"attack.calibration={cfg.attack.calibration}"] if cfg.attack.calibration != "none" else []
    needs += [f"sweep.baseline={cfg.sweep.baseline}"] if cfg.sweep.baseline in ("lira", "rmia") else []
    if needs and cfg.references.count == 0:
        raise LayerleakError(f"{needs[0]} needs reference models: set references.count (e.g. --set references.count=16)")
    if cfg.sweep.baseline != "none" and cfg.sweep.method != "exact":
        raise LayerleakError(f"sweep.baseline={cfg.sweep.baseline} needs sweep.method=exact (v(∅) is the baseline's value)")


# --- hashes ----------------------------------------------------------------------------------

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The settings of a fitted attack that change its numbers besides the features it reads, as {name in the
# result: config key}. A saved attack or experiment result is current only when they match
# (rundir.is_current); the sweep fits the logistic attack, so its hash covers the logistic ones.
_EVALUATION = {"seed": "seed", "folds": "attack.folds", "bootstrap": "attack.bootstrap"}  # cross-fitting and intervals
ATTACK_SETTINGS = {
    "logistic": {**_EVALUATION, "C": "attack.C", "transform": "attack.transform", "calibration": "attack.calibration"},
    "nasr": {**_EVALUATION, "epochs": "attack.nasr_epochs", "lr": "attack.nasr_lr", "batch_size": "attack.nasr_batch_size"},
    "loss-threshold": dict(_EVALUATION),
    "confidence-threshold": dict(_EVALUATION),
}
_REFERENCES = {**_EVALUATION, "references": "references.count"}
ATTACK_SETTINGS.update({
    "lira": {**_REFERENCES, "mode": "attack.lira_mode", "variance": "attack.lira_variance"},
    "lira-online": {**_REFERENCES, "variance": "attack.lira_variance"},
    "lira-offline": {**_REFERENCES, "variance": "attack.lira_variance"},
    "rmia": {**_REFERENCES, "mode": "attack.rmia_mode", "a": "attack.rmia_a", "gamma": "attack.rmia_gamma"},
})
STAGE_SECTIONS = {
    "splits": ("seed", "dataset", "split", "model.checkpoint"),
    "target": ("seed", "dataset", "split", "model", "train"),
    "features": ("seed", "dataset", "split", "model", "train", "features", "feature_schema"),
    "sweep": ("dataset", "split", "model", "train", "features", "feature_schema", "sweep_fit", *ATTACK_SETTINGS["logistic"].values(), "sweep",
              "sweep_references"),
    # the population pool's model halves (mia_tasks.population): its own stage, so adding targets or references
    # keeps the splits, the target and the models already trained (each model's half depends on its index only)
    "population": ("seed", "dataset", "split", "model.checkpoint", "population"),
}
# Versions of the code's output formats that change a stage's results as a setting would.
# sweep_fit 2: the baseline's score (sweep.baseline) is unpenalised in every coalition's attack
# sweep_fit 3: a calibrated baseline (lira, rmia) scores every sample over the whole audited pool (attack_runs.calibrated_scores)
CODE_VERSIONS = {"feature_schema": SCHEMA_VERSION, "sweep_fit": 3}
# calibrated attacks' results: 2 = raw scores over the whole pool, threshold-free metrics on them (1: per-fold margins)
CALIBRATED_SCORING = 2
RESULT_FREE = {"dataset.root", "dataset.download", "train.device", "features.device", "features.batch_size",
               "features.budget_mb", "sweep.device", "sweep.chunk_size", "model.trust_checkpoint", "split.targets"}


def _select(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _strip(tree: Any, prefix: str) -> Any:
    if isinstance(tree, dict):
        return {k: _strip(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items() if (f"{prefix}.{k}" if prefix else k) not in RESULT_FREE}
    return tree


def stage_hashes(cfg: Config, content: str = "") -> dict[str, str]:
    """A hash per stage over the settings that change its results (paths, devices and batch sizes excluded).

    ``content`` is the dataset's fingerprint beyond its config (``mia_tasks.data.dataset_fingerprint``): with
    it, a changed image folder makes every stage's outputs no longer current, so they are made again.
    """
    tree = _strip(cfg.to_dict(), "")
    if content:
        tree["dataset"]["content"] = content
    versioned = {**tree, **CODE_VERSIONS, "population": {"targets": cfg.split.targets, "references": cfg.references.count},
                 "sweep_references": sweep_references(cfg)}
    out = {stage: _digest({k: _select(versioned, k) for k in keys if _has(versioned, k)}) for stage, keys in STAGE_SECTIONS.items()}
    out["config"] = _digest({k: v for k, v in tree.items() if k not in ("ray", "output", "defence")})  # defences: own hashes
    return out


def sweep_references(cfg: Config) -> int:
    """The reference models the sweep's values depend on: references.count with a calibrated sweep, else 0 (so
    adding references leaves an uncalibrated sweep current)."""
    calibrated = cfg.attack.calibration != "none" or cfg.sweep.baseline in ("lira", "rmia")
    return cfg.references.count if calibrated else 0


def attack_settings(cfg: Config, name: str, calibration: str | None = None) -> dict[str, Any]:
    """The settings (ATTACK_SETTINGS) that a result of ``layerleak attack --attack name`` made with ``cfg`` records:
    with the logistic attack, its calibration (``calibration``, default attack.calibration) and the references it
    read (0 uncalibrated); but for nasr, the targets it was run on (split.targets: a result on several targets
    carries their block)."""
    tree = cfg.to_dict()
    out = {k: _select(tree, key) for k, key in ATTACK_SETTINGS[name].items()}
    if name == "logistic":
        out["calibration"] = cfg.attack.calibration if calibration is None else calibration
        out["references"] = cfg.references.count if out["calibration"] != "none" else 0
    if name != "nasr":
        out["targets"] = cfg.split.targets
    if "references" in ATTACK_SETTINGS[name]:
        out["scoring"] = CALIBRATED_SCORING
    return out


def _has(tree: dict[str, Any], key: str) -> bool:
    try:
        _select(tree, key)
        return True
    except KeyError:
        return False


# What OUT/config.yaml records beside the config: its stage hashes, and the code versions they were made with (a
# config.yaml of a release before code versions were recorded has only the hashes).
HASHES, VERSIONS = "hashes", "code_versions"


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, with its hashes and the code versions (CODE_VERSIONS), for OUT/config.yaml."""
    return yaml.safe_dump({HASHES: stage_hashes(cfg), VERSIONS: dict(CODE_VERSIONS), **cfg.to_dict()}, sort_keys=False)
