"""The seed study's own protocol, so its numbers can be reproduced as they were computed, beside layerleak's.

The seed's published code evaluates a coalition S of players (layers, or parameter tensors) as follows,
once per seed (20 seeds):

- draw an attack-train set of ``train_members`` members and ``train_nonmembers`` non-members (15,000 +
  5,000: imbalanced) and a disjoint evaluation set of ``eval_members`` + ``eval_nonmembers`` (5,000 + 5,000);
- min-max scale S's feature columns on attack-train; fit scikit-learn's
  ``LogisticRegression(penalty='l2', solver='saga', tol=1e-4, max_iter=200)`` (l2 is scikit-learn's default, which
  newer releases ask to leave unset);
- score the evaluation set: AUROC, and the best accuracy over all thresholds *of the evaluation set itself*
  (optimistic: the threshold is chosen on the samples it is scored on).

v(S) is the mean over seeds; exact Shapley values use v(∅) = 0 (``empty=0.0``; the seed's choice, which adds
v_chance / L to every player and makes players look alike) or chance (``empty=None``: 0.5). layerleak's own
protocol differs in each step (mia_tasks.coalitions: balanced cross-fitting, every sample scored once, the
threshold never read on the samples it scores, bootstrap intervals, v(∅) = chance); docs/seed-protocol.md
says what each difference does to the conclusion.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from .errors import LayerleakError
from .shapley import exact_shapley


@dataclass(frozen=True)
class SeedProtocol:
    """Sizes and choices of the seed's evaluation; ``scale`` shrinks every size (e.g. 0.1 for a 2,000-sample pool)."""

    train_members: int = 15_000
    train_nonmembers: int = 5_000
    eval_members: int = 5_000
    eval_nonmembers: int = 5_000
    seeds: int = 20
    empty: float | None = 0.0  # v(∅); None = chance (0.5)
    max_iter: int = 200
    tol: float = 1e-4

    def sizes(self, scale: float = 1.0) -> tuple[int, int, int, int]:
        """(train members, train non-members, eval members, eval non-members), each at least 1, times ``scale``."""
        return tuple(max(1, int(round(v * scale))) for v in
                     (self.train_members, self.train_nonmembers, self.eval_members, self.eval_nonmembers))


def best_threshold_accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    """The best accuracy of ``score >= t`` over every threshold t, read on these same samples (the seed's leakage)."""
    y = np.asarray(y, bool)
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, ys = s[order], y[order]
    cut = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # predict the top cut+1 samples as members
    tp = np.cumsum(ys)[cut]
    tn = (~y).sum() - ((cut + 1) - tp)
    return float(max((~y).sum(), *(tp + tn)) / y.size)


def seed_splits(y: np.ndarray, protocol: SeedProtocol, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(attack-train rows, evaluation rows) of one seed: disjoint draws of the protocol's sizes from members and non-members."""
    y = np.asarray(y, bool)
    tm, tn, em, en = protocol.sizes(scale)
    members, nonmembers = np.flatnonzero(y), np.flatnonzero(~y)
    if tm + em > members.size or tn + en > nonmembers.size:
        raise LayerleakError(f"seed protocol: needs {tm} + {em} members and {tn} + {en} non-members, the pool has "
                             f"{members.size} and {nonmembers.size}; lower its scale")
    rng = np.random.default_rng(seed)
    m, n = rng.permutation(members), rng.permutation(nonmembers)
    return np.sort(np.r_[m[:tm], n[:tn]]), np.sort(np.r_[m[tm:tm + em], n[tn:tn + en]])


def seed_value(X: np.ndarray, y: np.ndarray, columns: Sequence[int], protocol: SeedProtocol, seed: int,
               scale: float = 1.0) -> tuple[float, float]:
    """(AUROC, best-threshold accuracy) of the seed's attack on ``columns`` of ``X`` for one seed."""
    y = np.asarray(y, bool)
    train, test = seed_splits(y, protocol, seed, scale)
    Xs = np.asarray(X, np.float64)[:, list(columns)]
    lo, hi = Xs[train].min(axis=0), Xs[train].max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    Xs = (Xs - lo) / span
    model = LogisticRegression(solver="saga", tol=protocol.tol, max_iter=protocol.max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the seed stops at 200 iterations, converged or not
        model.fit(Xs[train], y[train])
    scores = model.decision_function(Xs[test])
    return float(roc_auc_score(y[test], scores)), best_threshold_accuracy(y[test], scores)


def seed_sweep(X: np.ndarray, y: np.ndarray, player_columns: Sequence[Sequence[int]], protocol: SeedProtocol = SeedProtocol(),
               scale: float = 1.0) -> dict:
    """Every coalition's seed-protocol values and the exact Shapley values over AUROC and over accuracy.

    Returns ``{"auc": {...}, "accuracy": {...}, "seeds": S}``; each metric holds ``values`` [2^L] (index =
    coalition bitmask, v(∅) = ``protocol.empty`` or 0.5), ``per_seed`` [S, 2^L], ``shapley`` [L] (of the seed
    mean) and ``shapley_per_seed`` [S, L], whose spread over seeds is what the seed's repeats resample.
    """
    L = len(player_columns)
    if not 1 <= L <= 16:
        raise LayerleakError(f"seed protocol: exact Shapley over {L} players; it takes 1 to 16")
    empty = 0.5 if protocol.empty is None else float(protocol.empty)
    per_seed = np.full((2, protocol.seeds, 1 << L), empty)
    for mask in range(1, 1 << L):
        cols = [c for i in range(L) if mask >> i & 1 for c in player_columns[i]]
        for s in range(protocol.seeds):
            per_seed[:, s, mask] = seed_value(X, y, cols, protocol, s, scale)
    out: dict = {"seeds": protocol.seeds, "empty": empty, "sizes": list(protocol.sizes(scale))}
    for k, metric in enumerate(("auc", "accuracy")):
        values = per_seed[k].mean(axis=0)
        out[metric] = {"values": values, "per_seed": per_seed[k], "shapley": exact_shapley(values),
                       "shapley_per_seed": np.stack([exact_shapley(v) for v in per_seed[k]])}
    return out


def pool_scale(y: np.ndarray, protocol: SeedProtocol) -> float:
    """The largest scale (at most 1) at which the protocol's draws fit the audited pool's members and non-members."""
    y = np.asarray(y, bool)
    tm, tn, em, en = protocol.sizes()
    return min(1.0, y.sum() / (tm + em), (~y).sum() / (tn + en))


def seed_record(X: np.ndarray, y: np.ndarray, players: dict[str, list[str]], player_cols: Sequence[Sequence[int]],
                protocol: SeedProtocol = SeedProtocol()) -> dict:
    """The seed protocol's sweep as a JSON-ready record: per player its Shapley value over AUROC and over
    accuracy (mean over seeds, with the seeds' 2.5-97.5 percentiles: the split's variation, not a confidence
    interval), and v(all), at the largest scale of the seed's sizes that the audited pool allows."""
    scale = pool_scale(y, protocol)
    res = seed_sweep(X, y, player_cols, protocol, scale)
    out = {"protocol": "seed (Nasr et al.'s published code): imbalanced attack-train, min-max scaling, saga logistic regression, "
                       "best threshold read on the evaluation set itself",
           "sizes": dict(zip(("train_members", "train_nonmembers", "eval_members", "eval_nonmembers"), res["sizes"])),
           "scale": scale, "seeds": res["seeds"], "empty": res["empty"], "players": list(players)}
    for metric in ("auc", "accuracy"):
        m = res[metric]
        spread = np.percentile(m["shapley_per_seed"], [2.5, 97.5], axis=0)
        out[metric] = {"v_all": float(m["values"][-1]),
                       "v_all_seed_range": [float(v) for v in np.percentile(m["per_seed"][:, -1], [2.5, 97.5])],
                       "shapley": {p: {"value": float(m["shapley"][i]), "seed_range": [float(spread[0, i]), float(spread[1, i])]}
                                   for i, p in enumerate(players)}}
    return out
