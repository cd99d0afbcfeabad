"""RMIA, the relative membership-inference attack (Zarifzadeh et al., ICML 2024).

Pr(x|theta) is the target's probability of the true label, p_y = exp(-loss). Pr(x) is its average over
reference models: ``online`` over all of them (IN and OUT for x); ``offline`` over the OUT ones only,
scaled as (1 + a)/2 * mean_OUT + (1 - a)/2 (the paper's linear approximation of the missing IN half).
LR(x) = Pr(x|theta) / Pr(x), and the score of x is the fraction of population samples z with
LR(x) / LR(z) > gamma (gamma = 1 by default). Pr(z) is computed by the same rule as Pr(x), since in a
population of random halves z, too, was IN for some references.

The population samples z are the attacker's known non-members: in ``RmiaAttack`` the non-members of
attack-train (a sample is never compared with itself). ``online`` is the default: the population's random
halves give every sample IN references. Offline, ``a`` matters (on a simulated pool, AUC 0.73 at a = 0.3 and
0.86 at a = 1 against 0.96 online); the paper tunes it by treating a reference as the target. Columns: ``loss`` and the references'
``ref.<k>.loss`` / ``ref.<k>.in`` (mia_tasks.attacks.references); higher score = more likely a member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import LayerleakError
from ..schema import LOSS
from .references import reference_arrays, reference_matrix, side_gaussians
from .threshold import best_threshold

if TYPE_CHECKING:
    from . import AttackData

MODES = ("online", "offline")


def likelihood_ratio(p: np.ndarray, ref_p: np.ndarray, inside: np.ndarray, mode: str = "offline", a: float = 0.3) -> np.ndarray:
    """LR(x) = Pr(x|theta) / Pr(x) for target probabilities ``p`` [n], reference ones ``ref_p`` [K, n] and
    ``inside`` [K, n] (reference k trained on sample i)."""
    if mode not in MODES:
        raise LayerleakError(f"RMIA mode {mode!r}: choose one of {', '.join(MODES)}")
    if not 0.0 <= a <= 1.0:
        raise LayerleakError(f"RMIA offline parameter a={a}: must lie in [0, 1]")
    p, ref_p, inside = reference_arrays(p, ref_p, inside, "RMIA", "probabilities")
    if mode == "online":
        prior = ref_p.mean(axis=0)
    else:
        mean_out = np.clip(side_gaussians(ref_p, inside, "global", "RMIA offline")[1][0], 0.0, 1.0)
        prior = (1 + a) / 2 * mean_out + (1 - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prior > 0, p / prior, np.where(p > 0, np.inf, 1.0))


def rmia_scores(lr_x: np.ndarray, lr_z: np.ndarray, gamma: float = 1.0, x_ids: np.ndarray | None = None,
                z_ids: np.ndarray | None = None) -> np.ndarray:
    """Fraction of population samples z with LR(x) / LR(z) > gamma, per x; with ids, x is never its own z."""
    if gamma <= 0:
        raise LayerleakError(f"RMIA gamma={gamma}: must be > 0")
    lr_x = np.asarray(lr_x, np.float64)
    lr_z = np.sort(np.asarray(lr_z, np.float64))
    if lr_z.size == 0:
        raise LayerleakError("RMIA needs population samples z (known non-members); none were given")
    below = np.searchsorted(lr_z, lr_x / gamma, side="left")  # LR(z) < LR(x)/gamma  <=>  LR(x)/LR(z) > gamma
    total = np.full(lr_x.shape, float(lr_z.size))
    if x_ids is not None and z_ids is not None:
        own = np.isin(np.asarray(x_ids), np.asarray(z_ids))
        below = below - (own & (lr_x < lr_x / gamma))
        total = total - own
    return below / np.maximum(total, 1.0)


class RmiaAttack:
    """RMIA with attack-train's non-members as the population z; threshold chosen on attack-train."""

    def __init__(self, mode: str = "online", a: float = 0.3, gamma: float = 1.0) -> None:
        if mode not in MODES:
            raise LayerleakError(f"RMIA mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode, self.a, self.gamma = mode, float(a), float(gamma)
        self.threshold_ = 0.0

    def ratio(self, data: "AttackData") -> np.ndarray:
        """LR of every row of ``data``."""
        values, inside = reference_matrix(data, LOSS)
        return likelihood_ratio(np.exp(-data.column(LOSS)), np.exp(-values), inside, self.mode, self.a)

    def fit(self, train: "AttackData") -> "RmiaAttack":
        z = train.y == 0
        self.lr_z_, self.z_ids_ = self.ratio(train)[z], train.sample_ids[z]
        self.threshold_, self.train_accuracy_ = best_threshold(train.y, self.score(train))
        return self

    def score(self, data: "AttackData") -> np.ndarray:
        if not hasattr(self, "lr_z_"):
            raise LayerleakError("RMIA: fit the attack on attack-train (its non-members are the population z) before scoring")
        return rmia_scores(self.ratio(data), self.lr_z_, self.gamma, data.sample_ids, self.z_ids_)
