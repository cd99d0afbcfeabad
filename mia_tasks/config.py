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
    """The dataset the target is trained on and audited with: its train split holds the members, its test split the
    non-members."""
    name: str = field(default="digits", metadata=allow(choice(_datasets), "which dataset: digits is bundled with scikit-learn; "
                      "cifar10/cifar100 are torchvision's python batches, fashion-mnist its idx files, imagefolder "
                      "train/<class>/ and test/<class>/ folders (or a tarball), npz a .npz of train_x, train_y, test_x, test_y "
                      "(uint8 images or float inputs; docs/own-model.md); synthetic is made up for the tests"))
    root: str | None = field(default=None, metadata=allow(PATH.or_null(), "the local folder (or imagefolder tarball, or npz file) "
                             "holding the dataset; null for the bundled digits and synthetic data"))
    download: bool = field(default=False, metadata=allow(boolean(), "fetch cifar10/cifar100 into dataset.root with torchvision "
                           "first (needs the internet)"))
    mean: list[float] | None = field(default=None, metadata=allow(list_of(number()).or_null(), "per-channel normalisation mean "
                                     "the model was trained with; null = the dataset's usual values"))
    std: list[float] | None = field(default=None, metadata=allow(list_of(POSITIVE).or_null(), "per-channel normalisation "
                                    "standard deviation; null = the dataset's usual values"))
    synthetic_train: int = field(default=600, metadata=allow(POSITIVE_INT, "synthetic dataset (tests): images in its train split"))
    synthetic_test: int = field(default=200, metadata=allow(POSITIVE_INT, "synthetic dataset: images in its test split"))
    synthetic_classes: int = field(default=4, metadata=allow(integer(2), "synthetic dataset: number of classes"))
    synthetic_channels: int = field(default=1, metadata=allow(POSITIVE_INT, "synthetic dataset: image channels"))
    synthetic_size: int = field(default=8, metadata=allow(POSITIVE_INT, "synthetic dataset: image side in pixels"))


@dataclass
class ModelConfig:
    """The target's architecture, and a pretrained checkpoint when the target is not trained here."""
    arch: str = field(default="cnn", metadata=allow(ARCH, "the target's architecture: a built-in one (layerleak models lists "
                      "them) or your own factory, called with the keywords it takes among num_classes, in_channels and "
                      "input_size, plus model.options"))
    options: dict[str, Any] = field(default_factory=dict, metadata=allow(mapping("a mapping {option: value}, e.g. {depth: 20}"),
                                    "keyword options passed to the architecture's factory, e.g. {depth: 20} for resnet"))
    checkpoint: str | None = field(default=None, metadata=allow(PATH.or_null(), "a pretrained target's weights: training is "
                                   "skipped and this model is audited; null = train the target on the members"))
    trust_checkpoint: bool = field(default=False, metadata=allow(boolean(), "allow a checkpoint that needs unpickling (not "
                                   "weights-only); only for files you trust, since unpickling can run code"))


@dataclass
class SplitConfig:
    """Who is a member: the target's training samples, the non-member pool and the audited samples drawn from both."""
    members: int | None = field(default=70, metadata=allow(POSITIVE_INT.or_null(), "members: the target's training samples, "
                                "drawn from the train split with the seed; null = the whole train split (less the "
                                "non-members, for a target trained here)"))
    nonmembers: int = field(default=70, metadata=allow(POSITIVE_INT, "non-members, drawn with the seed from the rest of the "
                            "train split for a target trained here (same distribution), from the test split for a "
                            "pretrained one"))
    audit: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null(), "audited samples per side (members and as "
                              "many non-members); null = the smaller of split.members and split.nonmembers"))
    targets: int = field(default=1, metadata=allow(POSITIVE_INT, "targets audited, each trained on its own random half of the "
                         "population pool (mia_tasks.population); with references.count = K, K + 1 gives targets for free"))
    members_file: str | None = field(default=None, metadata=allow(PATH.or_null(), "a pretrained target's stated members: a .npy, "
                                     ".csv (one index a line, optional header) or .parquet (column sample_id or its only "
                                     "column) of indices into the TRAIN split; null = split.members drawn from it"))
    nonmembers_file: str | None = field(default=None, metadata=allow(PATH.or_null(), "stated non-members: indices into the TEST "
                                        "split, same formats; null = split.nonmembers drawn from the test split"))


@dataclass
class TrainConfig:
    """How the target (and every reference model and defended target) is trained: SGD with momentum."""
    epochs: int = field(default=40, metadata=allow(POSITIVE_INT, "training epochs of the target"))
    batch_size: int = field(default=64, metadata=allow(POSITIVE_INT, "training batch size"))
    lr: float = field(default=0.05, metadata=allow(POSITIVE, "initial learning rate"))
    momentum: float = field(default=0.9, metadata=allow(number(0, 1, hi_open=True), "SGD momentum"))
    weight_decay: float = field(default=5e-4, metadata=allow(number(0), "SGD weight decay (L2 penalty)"))
    schedule: str = field(default="cosine", metadata=allow(choice(("cosine", "step", "constant")), "learning-rate schedule, "
                          "stepped once per batch: cosine annealing to 0, step (x gamma at each milestone) or constant"))
    milestones: list[int] = field(default_factory=lambda: [100, 150], metadata=allow(list_of(POSITIVE_INT, nonempty=False),
                                  "step schedule: the epochs at which the learning rate is multiplied by train.gamma"))
    gamma: float = field(default=0.1, metadata=allow(number(0, 1, lo_open=True), "step schedule: the learning-rate factor at "
                         "each milestone"))
    augment: bool = field(default=False, metadata=allow(boolean(), "random crops (zero padding of 1/8 of the side) and, for "
                          "colour images, horizontal flips while training"))
    device: str = field(default="auto", metadata=allow(choice(DEVICES), "where training runs: auto = a GPU when the Ray cluster "
                        "offers one, else the CPU; cuda is refused where there is no GPU"))
    accuracy_samples: int | None = field(default=2000, metadata=allow(POSITIVE_INT.or_null(), "a target's train and test accuracy "
                                         "are measured on at most this many members and as many test images (seeded); "
                                         "null = every image"))


@dataclass
class FeaturesConfig:
    """White-box feature extraction: per-sample gradient and activation statistics of every audited layer."""
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS, "the audited layers; null = every layer of a "
                                     "registered type (conv and linear) in forward order"))
    batch_size: int = field(default=128, metadata=allow(POSITIVE_INT, "samples per extraction batch (features do not depend "
                            "on it)"))
    budget_mb: int = field(default=256, metadata=allow(POSITIVE_INT, "peak memory, in MB, for chunks of per-sample gradients "
                           "(a conv layer's are built a few samples at a time)"))
    shard_size: int = field(default=512, metadata=allow(POSITIVE_INT, "audited samples per features/part-NNNNN.parquet, one "
                            "extractor task each"))
    device: str = field(default="auto", metadata=allow(choice(DEVICES), "where extraction runs: auto = one actor per GPU, else "
                        "ray.extract_actors CPU actors"))


@dataclass
class AttackConfig:
    """The membership attacks, their cross-fitted evaluation and the bootstrap behind every interval."""
    name: str = field(default="logistic", metadata=allow(choice(_attacks), "the attack 'layerleak attack' runs without "
                      "--attack; lira and rmia need references.count"))
    C: float = field(default=1.0, metadata=allow(POSITIVE, "the logistic attack's inverse L2 penalty (scikit-learn's C): "
                     "smaller is stronger regularisation"))
    transform: str = field(default="signed-log", metadata=allow(choice(_transforms), "how features are put on a common scale "
                           "before standardising: signed-log (gradient magnitudes span orders of magnitude) or none"))
    folds: int = field(default=5, metadata=allow(integer(2, 127), "cross-fitting: the audited pool in k folds balanced by "
                       "membership; each sample is scored once, by an attack that never saw it"))
    bootstrap: int = field(default=1000, metadata=allow(integer(MIN_BOOTSTRAP), "replicates of the stratified bootstrap over "
                           "audited samples behind every 95% interval (under 100 a percentile interval rests on one or two "
                           "replicates per tail)"))
    kinds: list[str] = field(default_factory=lambda: ["grad"], metadata=allow(list_of(choice(_kinds)), "the feature kinds the "
                             "attack reads: grad (gradient statistics), out (activation statistics), loss"))
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS, "the layers the attack reads; null = every audited "
                                     "layer"))
    nasr_layers: list[str] | None = field(default=None, metadata=allow(LAYERS, "nasr: the layers whose raw per-sample gradients "
                                          "its encoders read; null = the last audited layer"))
    nasr_epochs: int = field(default=30, metadata=allow(POSITIVE_INT, "nasr: training epochs of the attack model"))
    nasr_lr: float = field(default=1e-3, metadata=allow(POSITIVE, "nasr: Adam learning rate"))
    nasr_batch_size: int = field(default=64, metadata=allow(POSITIVE_INT, "nasr: training batch size"))
    calibration: str = field(default="none", metadata=allow(choice(("none", "offline", "online")), "the logistic attack's and "
                             "the sweep's features judged against each sample's OUT references ((x - mu_out)/s_out; online also "
                             "IN: a per-feature log-likelihood ratio); needs references.count"))
    lira_mode: str = field(default="online", metadata=allow(choice(("online", "offline")), "lira: online fits IN and OUT "
                           "Gaussians per sample, offline OUT only"))
    lira_variance: str = field(default="global", metadata=allow(choice(("global", "per-example")), "lira: one pooled variance "
                               "(global; for few references) or each sample's own"))
    rmia_mode: str = field(default="online", metadata=allow(choice(("online", "offline")), "rmia: online uses IN and OUT "
                           "references, offline OUT only with rmia_a"))
    rmia_a: float = field(default=0.3, metadata=allow(number(0, 1), "rmia offline: Pr(x) = (1+a)/2 mean_OUT + (1-a)/2"))
    rmia_gamma: float = field(default=1.0, metadata=allow(POSITIVE, "rmia: the score is the fraction of population samples z "
                              "with LR(x)/LR(z) > gamma"))


@dataclass
class SweepConfig:
    """The coalition sweep: the attack fitted on every coalition of players, and the Shapley values from it."""
    players: Any = field(default="layers", metadata=allow(PLAYERS, "the players: each audited layer (layers), the model's "
                         "default grouping (groups: blocks/stages, a user model's top-level children) or a mapping "
                         "{player: [layer, ...]}"))
    kinds: list[str] = field(default_factory=lambda: ["grad"], metadata=allow(PLAYER_KINDS, "the per-layer features each "
                             "player brings: grad and/or out statistics"))
    method: str = field(default="exact", metadata=allow(choice(("exact", "sampled")), "exact: all 2^L - 1 coalitions; "
                        "sampled: permutation sampling with standard errors"))
    max_exact_players: int = field(default=20, metadata=allow(integer(1, 30), "an exact sweep of more players is refused (group "
                                   "layers or sample instead)"))
    chunk_size: int = field(default=512, metadata=allow(POSITIVE_INT, "coalitions per fitter task (one sweep part each)"))
    permutations: int = field(default=2000, metadata=allow(POSITIVE_INT, "sampled: at most this many permutations"))
    tol: float = field(default=0.005, metadata=allow(POSITIVE, "sampled: stop when every standard error is below this"))
    device: str = field(default="auto", metadata=allow(choice(DEVICES), "where the fitters compute: auto = a GPU each when "
                        "there are GPUs, else the CPU"))
    baseline: str = field(default="none", metadata=allow(choice(("none", "loss", "lira", "rmia")), "v(∅): none = 0.5 (a constant "
                          "guess); loss, lira or rmia = that black-box attack's value, which every coalition's attack also sees, "
                          "so a player's Shapley value is its leakage beyond it (lira, rmia need references.count)"))


@dataclass
class ReferencesConfig:
    """Reference models: trained like the target, each on its own random half of the population pool, so each
    audited sample is IN for about half of them (calibrated attacks); targets serve as each other's references."""
    count: int = field(default=0, metadata=allow(integer(0), "K reference models per target (0: no calibrated attacks)"))


def _defences() -> list[str]:
    from .defences import DEFENCES

    return list(DEFENCES)


@dataclass
class DefenceConfig:
    """``layerleak defend``: a defended target trained on the same members with the same recipe, audited again."""
    name: str = field(default="dp-sgd", metadata=allow(choice(_defences), "the defence: dp-sgd (Opacus, to a target ε), "
                      "layer-dp (clip and noise chosen layers only) or regularise (weight decay, early stopping)"))
    epsilon: float = field(default=8.0, metadata=allow(POSITIVE, "dp-sgd: the target ε"))
    delta: float | None = field(default=None, metadata=allow(number(0, 1, lo_open=True, hi_open=True).or_null(),
                                "dp-sgd: δ; null = 1/members"))
    max_grad_norm: float = field(default=1.0, metadata=allow(POSITIVE, "dp-sgd: per-sample clipping norm"))
    per_layer_clipping: bool = field(default=False, metadata=allow(boolean(), "dp-sgd: clip each layer to "
                                     "max_grad_norm/sqrt(#parameter tensors) instead of the whole gradient"))
    layers: list[str] | None = field(default=None, metadata=allow(LAYERS, "layer-dp: the layers to protect; null = the top "
                                     "player(s) by Shapley value"))
    top: int = field(default=1, metadata=allow(POSITIVE_INT, "layer-dp: how many top players when defence.layers is null"))
    clip: float = field(default=1.0, metadata=allow(POSITIVE, "layer-dp: per-sample clipping norm of the chosen layers"))
    noise_multiplier: float = field(default=1.0, metadata=allow(number(0), "layer-dp: noise standard deviation / clip"))
    weight_decay: float = field(default=0.01, metadata=allow(number(0), "regularise: the weight decay"))
    epochs: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null(), "regularise: early stopping after this many "
                               "epochs; null = train.epochs"))


@dataclass
class RayConfig:
    """Where the work runs: the Ray cluster and how many actors it gets (no key here changes a result)."""
    address: str | None = field(default=None, metadata=allow(text("a Ray address host:port or ray://host:port").or_null(),
                                "the Ray cluster to join; null = RAY_ADDRESS, else a new loopback-only local instance"))
    extract_actors: int = field(default=2, metadata=allow(POSITIVE_INT, "CPU extractor actors when the cluster has no GPU"))
    fit_actors: int = field(default=2, metadata=allow(POSITIVE_INT, "sweep fitter actors (each holds one CPU and about 0.7 GiB)"))
    num_cpus: int | None = field(default=None, metadata=allow(POSITIVE_INT.or_null(), "logical CPUs of the local instance "
                                 "(keep >= ray.fit_actors); null = all cores"))
    max_retries: int = field(default=3, metadata=allow(integer(0), "restarts of a killed actor and retries of its task"))


@dataclass
class OutputConfig:
    """The run folder OUT."""
    dir: str = field(default="runs/default", metadata=allow(PATH, "the run folder OUT: a local path, or an s3:// or gs:// URI "
                     "(--out sets it)"))


@dataclass
class Config:
    """The whole audit."""
    seed: int = field(default=0, metadata=allow(integer(0), "every random choice (splits, training, folds, bootstrap) comes "
                      "from this seed"))
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
    return absolute_paths(cfg)


# the config's local files: given relative to the working directory, recorded absolute (config.yaml then works from
# anywhere); the stage hashes read the content of those that are results' inputs, not their paths (FILE_CONTENT)
PATH_KEYS = ("dataset.root", "model.checkpoint", "split.members_file", "split.nonmembers_file")
FILE_CONTENT = ("model.checkpoint", "split.members_file", "split.nonmembers_file")


def _absolute(value: str | None) -> str | None:
    if not value or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value  # a missing file keeps its name for the error that follows


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with its existing local paths (PATH_KEYS, and the file of a ``file.py:factory`` model.arch) absolute."""
    sections: dict[str, dict[str, Any]] = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if _absolute(value) != value:
            sections.setdefault(section, {})[name] = _absolute(value)
    file, sep, factory = cfg.model.arch.rpartition(":")
    if sep and file.endswith(".py") and _absolute(file) != file:
        sections.setdefault("model", {})["arch"] = f"{_absolute(file)}:{factory}"
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)
                                       for section, values in sections.items()})


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Any) -> Any:
    """sha256 of a local file's content (cached per path, size and mtime), or the path itself when it is no file."""
    if not isinstance(path, str):
        return path
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return path
    if not p.is_file():
        return path
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = "sha256:" + h.hexdigest()
    return _DIGESTS[key]


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
    # not attack.bootstrap: the coalitions' fits do not read it (shapley.json records it and is redone when it changes)
    "sweep": ("dataset", "split", "model", "train", "features", "feature_schema", "sweep_fit",
              *(k for k in ATTACK_SETTINGS["logistic"].values() if k != "attack.bootstrap"), "sweep", "sweep_references"),
    # the population pool's model halves (mia_tasks.population): its own stage, so adding targets or references
    # keeps the splits, the target and the models already trained (each model's half depends on its index only)
    "population": ("seed", "dataset", "split", "model.checkpoint", "population"),
}
# How results are evaluated, not what is trained or extracted: a change is no other audit, OUT is accepted and the
# outputs they affect are made again (attack.folds: the sweep's fits and the attacks; attack.bootstrap: the intervals)
ANALYSIS_KEYS = ("attack.folds", "attack.bootstrap")
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
    it, a changed image folder makes every stage's outputs no longer current, so they are made again. A checkpoint
    or member file enters by its content (FILE_CONTENT): another file under the same name is another config.
    """
    tree = _strip(cfg.to_dict(), "")
    if content:
        tree["dataset"]["content"] = content
    for key in FILE_CONTENT:  # a checkpoint or member file is its content: moved or renamed, the same results
        section, name = key.split(".")
        if tree[section].get(name):
            tree[section][name] = file_digest(tree[section][name])
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
