"""``sweep.baseline``: each layer's white-box leakage beyond a black-box attack.

With a baseline, v(∅) is the baseline attack's cross-fitted value (its out-of-fold correctness, resampled
with the same bootstrap weights as every v(S)), and every coalition's attack sees the baseline's score as
one more feature beside its players' (calibrated, with ``attack.calibration``) features. A layer's Shapley
value is then what its statistics add beyond the black-box attack.

The score given to the logistic attack is label-free, so it can be computed once for the whole pool:
``loss`` -> -loss; ``lira`` -> online LiRA with pooled variance; ``rmia`` -> RMIA (online) against every
audited sample as the population z. v(∅) uses the attack itself, cross-fitted as ``layerleak attack`` does.
"""

from __future__ import annotations

import numpy as np

from .attacks import AttackData
from .attacks.lira import confidence_from_loss, lira_scores
from .attacks.references import reference_matrix
from .attacks.rmia import likelihood_ratio, rmia_scores
from .errors import LayerleakError
from .schema import LOSS

BASELINES = ("none", "loss", "lira", "rmia")
BASELINE_ATTACK = {"loss": "loss-threshold", "lira": "lira", "rmia": "rmia"}  # v(∅): this attack, cross-fitted
BASELINE_COLUMN = "baseline"  # the baseline score's name among a coalition's features
NEEDS_REFERENCES = ("lira", "rmia")


def baseline_score(name: str, data: AttackData) -> np.ndarray:
    """The label-free baseline score [n] of ``data``'s rows (``loss`` and, for lira/rmia, the references' columns)."""
    if name not in BASELINE_ATTACK:
        raise LayerleakError(f"sweep.baseline {name!r}: choose one of {', '.join(BASELINES)}")
    loss = data.column(LOSS)
    if name == "loss":
        return -loss
    values, inside = reference_matrix(data, LOSS)
    if name == "lira":
        return lira_scores(confidence_from_loss(loss), confidence_from_loss(values), inside, "online", "global")
    lr = likelihood_ratio(np.exp(-loss), np.exp(-values), inside, "online")
    return rmia_scores(lr, lr, 1.0, data.sample_ids, data.sample_ids)
