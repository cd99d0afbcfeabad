"""Membership-inference attacks behind one interface, the feature-column selector and ``evaluate``.

Every attack is a class with ``fit(train) -> self``, ``score(data) -> np.ndarray`` (higher = more
likely a member) and ``threshold_`` (its decision threshold, chosen from attack-train alone; a
sample is predicted a member when ``score >= threshold_``). ``train``/``data`` are ``AttackData``.
The white-box ``nasr`` attack works on the target's raw inputs instead of the features table: give
it ``AttackData`` with ``inputs`` set, or call ``NasrAttack.fit(images, labels, member)`` directly.

    cols = select_columns(table.column_names, layers=["fc1", "fc2"], kinds=("grad",))
    train = AttackData.from_table(table, cols, sample_ids=train_ids)
    metrics = evaluate(make_attack("logistic", C=1.0), train, AttackData.from_table(table, cols, eval_ids))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from ..errors import LayerleakError
from ..metrics import attack_metrics
from ..schema import FEATURE_KINDS, LABEL, LOSS, MEMBER, SAMPLE_ID, layers_in, parse_column
from .lira import LiraAttack, OfflineLiraAttack, OnlineLiraAttack
from .logistic import LogisticAttack
from .nasr import NasrAttack
from .rmia import RmiaAttack
from .threshold import ConfidenceThresholdAttack, LossThresholdAttack

@dataclass
class AttackData:
    """Rows the attack sees: a feature matrix with its column names, member labels and ids.

    ``X`` (n, d) float64 features; ``y`` (n,) 1 = member, 0 = non-member; ``sample_ids`` (n,);
    ``labels`` (n,) the samples' class labels; ``inputs`` the raw inputs (images), only for attacks
    that query the target model themselves (nasr).
    """

    X: np.ndarray
    columns: list[str]
    y: np.ndarray
    sample_ids: np.ndarray
    labels: np.ndarray
    inputs: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float64)
        if self.X.ndim != 2:
            raise LayerleakError(f"attack features must be a 2-D matrix, got shape {self.X.shape}")
        self.columns = list(self.columns)
        self.y = np.asarray(self.y).astype(np.int64).ravel()
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64).ravel()
        self.labels = np.asarray(self.labels, dtype=np.int64).ravel()
        n = self.X.shape[0]
        if len(self.columns) != self.X.shape[1]:
            raise LayerleakError(f"attack data has {self.X.shape[1]} feature columns but {len(self.columns)} names")
        for name in ("y", "sample_ids", "labels"):
            if getattr(self, name).shape[0] != n:
                raise LayerleakError(f"attack data: {name} has {getattr(self, name).shape[0]} rows, features have {n}")
        if not np.isin(self.y, (0, 1)).all():
            raise LayerleakError("attack data: member labels y must be 0/1")
        if self.inputs is not None and len(self.inputs) != n:
            raise LayerleakError(f"attack data: inputs has {len(self.inputs)} rows, features have {n}")

    def __len__(self) -> int:
        return self.X.shape[0]

    def column(self, name: str) -> np.ndarray:
        """One feature column by name; a LayerleakError naming the columns present if missing."""
        if name not in self.columns:
            raise LayerleakError(f"attack data has no column {name!r}; it has {_preview(self.columns)}")
        return self.X[:, self.columns.index(name)]

    def subset(self, rows: np.ndarray) -> "AttackData":
        """The rows selected by a boolean mask or integer positions."""
        inputs = None if self.inputs is None else self.inputs[rows]
        return AttackData(self.X[rows], self.columns, self.y[rows], self.sample_ids[rows], self.labels[rows], inputs)

    @classmethod
    def from_table(cls, table: Any, columns: Sequence[str], sample_ids: Iterable[int] | None = None) -> "AttackData":
        """Build from a features table (pyarrow Table, pandas DataFrame or dict of arrays).

        Takes ``sample_id``, ``label``, ``member`` and the given feature ``columns``; with
        ``sample_ids``, keeps those rows in that order (unknown ids are an error).
        """
        def col(name: str) -> np.ndarray:
            try:
                c = table[name]
            except (KeyError, IndexError):
                raise LayerleakError(f"features table has no column {name!r}") from None
            return np.asarray(c.to_numpy() if hasattr(c, "to_numpy") else c)

        ids = col(SAMPLE_ID).astype(np.int64)
        rows = slice(None)
        if sample_ids is not None:
            want = np.asarray(list(sample_ids), dtype=np.int64)
            pos = {int(s): i for i, s in enumerate(ids)}
            missing = [int(s) for s in want if int(s) not in pos]
            if missing:
                raise LayerleakError(f"{len(missing)} sample ids not in the features table, e.g. {missing[:5]}")
            rows = np.array([pos[int(s)] for s in want], dtype=np.int64)
        X = np.column_stack([col(c).astype(np.float64)[rows] for c in columns]) if columns else np.zeros((len(ids[rows]), 0))
        return cls(X, list(columns), col(MEMBER).astype(np.int64)[rows], ids[rows], col(LABEL)[rows])


class Attack(Protocol):
    threshold_: float

    def fit(self, train: AttackData) -> "Attack": ...

    def score(self, data: AttackData) -> np.ndarray: ...


ATTACKS: dict[str, type] = {
    "logistic": LogisticAttack,
    "nasr": NasrAttack,
    "loss-threshold": LossThresholdAttack,
    "confidence-threshold": ConfidenceThresholdAttack,
    # calibrated with reference models: read the target's loss and the references' ref.<k>.loss / ref.<k>.in
    "lira": LiraAttack,  # online unless mode="offline"
    "lira-online": OnlineLiraAttack,
    "lira-offline": OfflineLiraAttack,
    "rmia": RmiaAttack,
}


def make_attack(name: str, **kwargs: Any) -> Attack:
    """An attack from the registry by name, with its options (nasr also needs ``model``)."""
    if name not in ATTACKS:
        raise LayerleakError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}")
    try:
        return ATTACKS[name](**kwargs)
    except TypeError as e:
        raise LayerleakError(f"attack {name!r}: {e}") from None


def _preview(names: Sequence[str], k: int = 12) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def select_columns(
    columns: Sequence[str],
    layers: Iterable[str] | None = None,
    kinds: Iterable[str] = FEATURE_KINDS,
    stats: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Feature columns of the chosen layers and feature kinds, in the table's order.

    ``layers=None`` takes every layer; ``kinds`` from ``grad``, ``out``, ``loss`` (``loss`` is not
    per layer: it is taken whenever asked for); ``stats=None`` takes every statistic; ``exclude``
    drops columns (those constant by construction, ``Features.constant``). Unknown layers, kinds or
    stats, or an empty selection, raise a LayerleakError naming what exists.
    """
    columns = list(columns)
    kinds = tuple(kinds)
    skip = set(exclude)
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad:
        raise LayerleakError(f"unknown feature kind(s) {bad}: choose from {list(FEATURE_KINDS)}")
    available = layers_in(columns)
    if layers is not None:
        layers = list(layers)
        unknown = [l for l in layers if l not in available]
        if unknown:
            raise LayerleakError(f"unknown layer(s) {unknown}: the features table has layers {available}")
        wanted_layers = set(layers)
    else:
        wanted_layers = set(available)
    wanted_stats = None
    if stats is not None:
        wanted_stats = set(stats)
        present = {parse_column(c)[2] for c in columns} - {None}
        unknown = sorted(wanted_stats - present)
        if unknown:
            raise LayerleakError(f"unknown statistic(s) {unknown}: the features table has {sorted(present)}")
    chosen = []
    for c in columns:
        kind, layer, stat = parse_column(c)
        if kind not in kinds or c in skip:
            continue
        if kind == LOSS or (layer in wanted_layers and (wanted_stats is None or stat in wanted_stats)):
            chosen.append(c)
    if not chosen:
        raise LayerleakError(f"no feature columns for layers {sorted(wanted_layers)} and kinds {list(kinds)}")
    return chosen


def evaluate(attack: Attack, train: AttackData, eval_data: AttackData) -> dict[str, float]:
    """Fit ``attack`` on attack-train, score attack-eval, and return the metrics at its threshold."""
    attack.fit(train)
    scores = attack.score(eval_data)
    return attack_metrics(eval_data.y, scores, threshold=attack.threshold_)


__all__ = [
    "ATTACKS", "Attack", "AttackData", "ConfidenceThresholdAttack", "LiraAttack", "LogisticAttack",
    "LossThresholdAttack", "NasrAttack", "OfflineLiraAttack", "OnlineLiraAttack", "RmiaAttack", "evaluate",
    "make_attack", "select_columns",
]
