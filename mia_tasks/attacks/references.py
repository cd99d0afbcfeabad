"""Reference models' signals beside the target's, as columns of one attack table.

Calibrated attacks (LiRA, RMIA, calibrated features) compare a sample's signal on the target with the
same signal on reference models, each trained on a random half of a pool holding the sample (so the
sample is IN for about half of them). The table the attacks read carries, per reference k, the
reference's value of each needed column as ``ref.<k>.<column>`` and whether the sample was in its
training half as ``ref.<k>.in`` (0/1), so they travel through ``AttackData`` and cross-fitting like
any feature column.

    table = join_references(target_features, {1: ref1_features, 2: ref2_features}, {1: ids1, 2: ids2})
    values, inside = reference_matrix(AttackData.from_table(table, ["loss", *reference_columns(table)]), "loss")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import LayerleakError
from ..schema import SAMPLE_ID

if TYPE_CHECKING:
    from . import AttackData

CALIBRATED = ("lira", "lira-online", "lira-offline", "rmia")  # attacks that read reference models' columns
REF_PREFIX = "ref."
IN = "in"
MIN_STD = 1e-6  # a floor on every fitted standard deviation: references that agree exactly give no zero division
VARIANCES = ("global", "per-example")


def ref_column(k: int, name: str) -> str:
    """The column holding reference k's ``name`` (a feature column, or ``in`` for its membership bit)."""
    return f"{REF_PREFIX}{k}.{name}"


def parse_ref_column(name: str) -> tuple[int, str] | None:
    """(k, column) of a ``ref.<k>.<column>`` name; None for any other column."""
    if not name.startswith(REF_PREFIX):
        return None
    k, _, rest = name[len(REF_PREFIX):].partition(".")
    return (int(k), rest) if k.isdigit() and rest else None


def reference_columns(columns: Sequence[str], names: Sequence[str] = ("loss",)) -> list[str]:
    """The ``ref.*`` columns of ``names`` and the membership bits, reference by reference."""
    refs = sorted({p[0] for c in columns if (p := parse_ref_column(c))})
    want = [*names, IN]
    return [ref_column(k, n) for k in refs for n in want if ref_column(k, n) in set(columns)]


def join_references(target: pa.Table, references: Mapping[int, pa.Table], members: Mapping[int, Sequence[int]],
                    columns: Sequence[str] = ("loss",)) -> pa.Table:
    """The target's table with each reference's ``columns`` and membership bit, aligned by ``sample_id``.

    ``references[k]`` is reference k's features table (it must hold every sample of ``target``);
    ``members[k]`` the sample ids reference k was trained on.
    """
    ids = np.asarray(target.column(SAMPLE_ID).to_numpy(), np.int64)
    out = target
    for k in sorted(references):
        ref = references[k]
        ref_ids = np.asarray(ref.column(SAMPLE_ID).to_numpy(), np.int64)
        order = np.argsort(ref_ids, kind="stable")
        pos = np.searchsorted(ref_ids[order], ids)
        pos = np.minimum(pos, len(ref_ids) - 1)
        found = ref_ids[order][pos] == ids if len(ref_ids) else np.zeros(len(ids), bool)
        if not found.all():
            missing = ids[~found][:5].tolist()
            raise LayerleakError(f"reference {k}'s features lack {int((~found).sum())} audited samples, e.g. {missing}")
        rows = order[pos]
        for name in columns:
            if name not in ref.column_names:
                raise LayerleakError(f"reference {k}'s features have no column {name!r}")
            values = np.asarray(ref.column(name).to_numpy(), np.float64)[rows]
            out = out.append_column(ref_column(k, name), pa.array(values))
        inside = np.isin(ids, np.asarray(members[k], np.int64)).astype(np.int8)
        out = out.append_column(ref_column(k, IN), pa.array(inside))
    return out


def join_models(features: Any, references: Sequence[tuple[int, Any, Any]], columns: Sequence[str] = ("loss",)) -> Any:
    """``features`` (a featurestore.Features) with its reference models' ``columns`` and membership joined in;
    ``references`` as flows.population.reference_inputs gives them: (k, model k's Splits, model k's Features)."""
    table = join_references(features.table, {k: f.table for k, _, f in references},
                            {k: s.target_members for k, s, _ in references}, columns)
    return dataclasses.replace(features, table=table)


def reference_matrix(data: "AttackData", name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 [K, n], inside bool [K, n]): every reference's ``name`` and membership bit per sample."""
    refs = sorted({p[0] for c in data.columns if (p := parse_ref_column(c)) and p[1] == name})
    if not refs:
        raise LayerleakError(f"calibrated attacks need reference models' {name!r} columns ({ref_column(1, name)}, ...); "
                             "set references.count and run the population stage")
    values = np.vstack([data.column(ref_column(k, name)) for k in refs])
    inside = np.vstack([data.column(ref_column(k, IN)) for k in refs]).astype(bool)
    return values, inside


def reference_arrays(target: np.ndarray, values: np.ndarray, inside: np.ndarray, attack: str,
                     signal: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target float64 [n], values float64 [K, n], inside bool [K, n]): a calibrated attack's inputs, the target's
    ``signal`` per sample and every reference's beside its membership bits, refused unless their shapes agree."""
    target = np.asarray(target, np.float64)
    values = np.asarray(values, np.float64)
    inside = np.asarray(inside, bool)
    if target.ndim != 1 or values.ndim != 2 or values.shape != inside.shape or values.shape[1] != target.shape[0]:
        raise LayerleakError(f"{attack}: the target's {signal} must be [n] and the references' {signal} and membership "
                             f"[K, n] (K references, n samples); got {target.shape}, {values.shape} and {inside.shape}")
    return target, values, inside


def reference_gaussians(values: np.ndarray, mask: np.ndarray, variance: str = "global") -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (mean, std) [n, ...] of ``values`` [K, n, ...] over the references where ``mask`` [K, n] holds.

    ``global`` pools the within-sample variance over all samples (per trailing column); ``per-example``
    uses each sample's own, falling back to the pooled one where it has fewer than two observations.
    Standard deviations are floored at ``MIN_STD`` and at 1e-3 of the pooled one.
    """
    if variance not in VARIANCES:
        raise LayerleakError(f"reference variance {variance!r}: choose one of {', '.join(VARIANCES)}")
    values = np.asarray(values, np.float64)
    mask = np.asarray(mask, bool).reshape(mask.shape + (1,) * (values.ndim - 2))
    count = mask.sum(axis=0)
    mean = np.where(mask, values, 0.0).sum(axis=0) / np.maximum(count, 1)
    sq = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
    dof = np.maximum(count - 1, 0)
    pooled = np.sqrt(sq.sum(axis=0) / np.maximum(dof.sum(axis=0), 1))
    if variance == "global":
        std = np.broadcast_to(pooled, mean.shape)
    else:
        std = np.where(count >= 2, np.sqrt(sq / np.maximum(dof, 1)), pooled)
    return mean, np.maximum(std, np.maximum(MIN_STD, 1e-3 * pooled))


def side_gaussians(values: np.ndarray, inside: np.ndarray, variance: str, what: str
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((IN mean, IN std), (OUT mean, OUT std)) per sample: reference_gaussians on each side.

    With K references a sample has every one of them on one side with probability 2^(1-K): over many
    samples and targets (17 targets x 2,000 samples with K = 16 expect one) that happens. Such a sample's
    missing mean is its other side's mean minus (or plus) the average IN - OUT gap over the samples that have
    both sides (its spread the pooled one), so it is scored as a typical sample would be, rather than the whole
    audit refused.
    """
    values = np.asarray(values, np.float64)
    inside = np.asarray(inside, bool)
    (mu_in, s_in), (mu_out, s_out) = (reference_gaussians(values, m, variance) for m in (inside, ~inside))
    trailing = (1,) * (values.ndim - 2)
    no_in = (inside.sum(axis=0) == 0).reshape(inside.shape[1:] + trailing)
    no_out = (inside.sum(axis=0) == inside.shape[0]).reshape(inside.shape[1:] + trailing)
    if no_in.any() or no_out.any():
        both = np.broadcast_to(~(no_in | no_out), mu_in.shape)
        if not both.any(axis=0).all():
            raise LayerleakError(f"{what}: no audited sample has both IN and OUT reference models among "
                                 f"{inside.shape[0]}; use more references (references.count)")
        gap = np.where(both, mu_in - mu_out, 0.0).sum(axis=0) / both.sum(axis=0)
        mu_in = np.where(no_in, mu_out + gap, mu_in)
        mu_out = np.where(no_out, mu_in - gap, mu_out)
    return (mu_in, s_in), (mu_out, s_out)
