"""Calibrated features (``attack.calibration``): each sample's statistics judged against its own reference models.

A gradient statistic that is large for a member may be just as large for a hard non-member; its value on
reference models that did (IN) or did not (OUT) train on the same sample says what is usual for that sample.

- ``none``:    the features as they are.
- ``offline``: (x - mu_out) / s_out per sample and column, over the sample's OUT references.
- ``online``:  the per-feature LiRA log-likelihood ratio log N(x; mu_in, s_in^2) - log N(x; mu_out, s_out^2).

Columns keep their names, so players, coalitions and the sweep read a calibrated table as they read a plain
one. Means and spreads come from ``references.reference_gaussians`` (per-example spread by default here:
features have no pooled scale across samples the way LiRA's confidence has).

    table = join_references(features, ref_tables, ref_members, columns=cols)
    calibrated = calibrate_table(table, cols, "offline")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from scipy.stats import norm

from .attacks.references import ref_column, side_gaussians
from .errors import LayerleakError

CALIBRATIONS = ("none", "offline", "online")


def calibrate(x: np.ndarray, ref: np.ndarray, inside: np.ndarray, mode: str, variance: str = "per-example") -> np.ndarray:
    """Calibrated features [n, d] from the target's ``x`` [n, d], the references' ``ref`` [K, n, d] and
    ``inside`` [K, n] (reference k trained on sample i)."""
    if mode not in CALIBRATIONS:
        raise LayerleakError(f"attack.calibration {mode!r}: choose one of {', '.join(CALIBRATIONS)}")
    x = np.asarray(x, np.float64)
    if mode == "none":
        return x
    ref = np.asarray(ref, np.float64)
    inside = np.asarray(inside, bool)
    if ref.shape[1:] != x.shape or inside.shape != ref.shape[:2]:
        raise LayerleakError(f"calibration: references {ref.shape} and membership {inside.shape} do not match features {x.shape}")
    (mu_in, s_in), (mu_out, s_out) = side_gaussians(ref, inside, variance, f"attack.calibration={mode}")
    if mode == "offline":
        return (x - mu_out) / s_out
    return norm.logpdf(x, mu_in, s_in) - norm.logpdf(x, mu_out, s_out)


def calibrate_table(table: pa.Table, columns: Sequence[str], mode: str, variance: str = "per-example") -> pa.Table:
    """``table`` with ``columns`` replaced by their calibrated values, from the ``ref.<k>.<column>`` and
    ``ref.<k>.in`` columns ``references.join_references`` added."""
    if mode == "none" or not columns:
        return table
    names = set(table.column_names)
    refs = sorted({int(c.split(".")[1]) for c in names if c.startswith("ref.") and c.endswith(".in")})
    missing = [ref_column(k, c) for k in refs for c in columns if ref_column(k, c) not in names]
    if not refs or missing:
        raise LayerleakError(f"attack.calibration={mode} needs every reference model's features "
                             f"({'none joined' if not refs else 'missing ' + ', '.join(missing[:3])})")
    x = np.column_stack([table.column(c).to_numpy() for c in columns]).astype(np.float64)
    ref = np.stack([np.column_stack([table.column(ref_column(k, c)).to_numpy() for c in columns]) for k in refs])
    inside = np.vstack([table.column(ref_column(k, "in")).to_numpy() for k in refs]).astype(bool)
    calibrated = calibrate(x, ref, inside, mode, variance)
    for j, c in enumerate(columns):
        table = table.set_column(table.schema.get_field_index(c), c, pa.array(calibrated[:, j]))
    return table
