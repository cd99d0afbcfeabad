"""Moment algebra: the seven statistics (``schema.STATS``) of vectors, from their values or from their power sums.

Statistics are combined from power sums (``SUM_COLUMNS``: n, Σx, Σx², Σx³, Σx⁴, Σ|x|, max, min) in
float64; kurtosis is Fisher's excess kurtosis and skewness the biased one (scipy.stats defaults). A
(numerically) constant vector has kurtosis = skewness = 0 by definition here (scipy gives nan). The
row reductions of the hot path can be fused by torch.compile (off unless asked: it costs seconds per
process).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

# Columns of a power-sums tensor [B, 8]; the first six add, the last two take max / min.
SUM_COLUMNS = ("n", "s1", "s2", "s3", "s4", "l1", "max", "min")



def const_tol(dtype: torch.dtype) -> float:
    """Relative variance below which a vector counts as constant (its moments are rounding noise)."""
    return 64 * torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps


def _finish(mx: Tensor, mn: Tensor, mean: Tensor, l1: Tensor, l2: Tensor, m2: Tensor, m3: Tensor, m4: Tensor,
            const: Tensor) -> Tensor:
    """Stack the seven ``STATS`` (float64) from extremes, norms and central moments; constant rows get
    kurtosis = skewness = 0."""
    safe = torch.where(const, torch.ones_like(m2), m2)
    kurt = torch.where(const, torch.zeros_like(m2), m4 / (safe * safe) - 3.0)
    skew = torch.where(const, torch.zeros_like(m2), m3 / safe.pow(1.5))
    return torch.stack([mx, mn, mean, l1, l2, kurt, skew], 1).to(torch.float64)


def stats_of(x: Tensor) -> Tensor:
    """The seven ``STATS`` of each row of ``x`` [B, N], as float64 [B, 7]: the plain reference (float64,
    two-pass central moments)."""
    if x.dim() != 2:
        raise ValueError(f"stats_of expects a [B, N] tensor, got shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(1)
    d = x64 - mean[:, None]
    d2 = d * d
    m2, m3, m4 = d2.mean(1), (d2 * d).mean(1), (d2 * d2).mean(1)
    const = m2 <= const_tol(torch.float64) * (x64 * x64).mean(1)
    return _finish(x64.amax(1), x64.amin(1), mean, x64.abs().sum(1), torch.linalg.vector_norm(x64, 2, dim=1), m2, m3, m4, const)


def _central_sums_eager(x: Tensor) -> Tensor:
    """[b, 7]: Σx, Σd², Σd³, Σd⁴ (d = x - row mean), Σ|x|, max, min, in x's precision (float32 sums are
    cascaded, ~1e-7 relative); two passes, so no moment cancels. Two scratch buffers, reused in place
    (|x|, then d, then d³; d², then d⁴): fewer fresh pages than one temporary per product."""
    n = x.shape[1]
    s1, mx, mn = x.sum(1), x.amax(1), x.amin(1)
    t = x.abs()
    l1 = t.sum(1)
    d = torch.sub(x, (s1 / n)[:, None], out=t)
    d2 = d * d
    s2 = d2.sum(1)
    s3 = d.mul_(d2).sum(1)
    s4 = d2.square_().sum(1)
    return torch.stack([s1, s2, s3, s4, l1, mx, mn], 1)


def _central_sums_fused(x: Tensor) -> Tensor:
    """``_central_sums_eager`` accumulated in float64, written for torch.compile to fuse into two reads."""
    x = x.to(torch.float64)
    mean = x.mean(1, keepdim=True)
    d = x - mean
    d2 = d * d
    return torch.stack([mean[:, 0] * x.shape[1], d2.sum(1), (d2 * d).sum(1), (d2 * d2).sum(1), x.abs().sum(1), x.amax(1), x.amin(1)], 1)


def raw_sums_fused(G: Tensor) -> Tensor:
    """[b, 7]: Σx, Σx², Σx³, Σx⁴, Σ|x|, max, min of each row, accumulated in float64; one read once compiled."""
    x = G.to(torch.float64)
    x2 = x * x
    return torch.stack([x.sum(1), x2.sum(1), (x2 * x).sum(1), (x2 * x2).sum(1), x.abs().sum(1), x.amax(1), x.amin(1)], 1)


# ---------------------------------------------------------------------------------------------
# optional torch.compile of the row reductions (off unless asked: compiling costs seconds per process)

_COMPILED: dict[str, Callable[[Tensor], Tensor]] = {}
_COMPILE_FAILED: set[str] = set()


def compile_wanted(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("LAYERLEAK_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")


def compiled_reduce(name: str, fused: Callable[[Tensor], Tensor], x: Tensor, compiled: bool) -> Tensor | None:
    """The compiled ``fused`` reduction of x, or None (caller runs eager) when not wanted or it fails."""
    if not compiled or name in _COMPILE_FAILED:
        return None
    try:
        fn = _COMPILED.get(name)
        if fn is None:
            fn = _COMPILED[name] = torch.compile(fused, dynamic=True)
        return fn(x.contiguous())
    except Exception as e:  # noqa: BLE001  (any backend/toolchain failure: fall back to eager for good)
        _COMPILE_FAILED.add(name)
        warnings.warn(f"layerleak: torch.compile of {name} failed ({type(e).__name__}); using eager reductions")
        return None


def row_stats(x: Tensor, compiled: bool = False) -> Tensor:
    """``stats_of`` for the hot path (output activations): float64 [B, 7] from x's own precision."""
    if not x.dtype.is_floating_point or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    c = compiled_reduce("central", _central_sums_fused, x, compiled)
    c = (_central_sums_eager(x) if c is None else c).to(torch.float64)
    if not torch.isfinite(c).all() and torch.isfinite(x).all():  # Σd⁴ overflowed in low precision
        c = _central_sums_eager(x.double())
    n = x.shape[1]
    mean = c[:, 0] / n
    m2, m3, m4 = c[:, 1] / n, c[:, 2] / n, c[:, 3] / n
    const = m2 <= const_tol(x.dtype) * (m2 + mean * mean)
    return _finish(c[:, 5], c[:, 6], mean, c[:, 4], torch.sqrt(n * (m2 + mean * mean)), m2, m3, m4, const)


def sums_of(x: Tensor) -> Tensor:
    """Power sums (``SUM_COLUMNS``) of each row of ``x`` [B, N], float64 [B, 8]."""
    x64 = x.detach().to(torch.float64)
    x2 = x64 * x64
    n = torch.full((x64.shape[0],), float(x64.shape[1]), dtype=torch.float64, device=x64.device)
    return torch.stack([n, x64.sum(1), x2.sum(1), (x2 * x64).sum(1), (x2 * x2).sum(1), x64.abs().sum(1), x64.amax(1), x64.amin(1)], 1)


def merge_sums(a: Tensor, b: Tensor) -> Tensor:
    """Power sums of the concatenation of two parts (e.g. weight and bias), from the parts' sums."""
    return torch.cat([a[:, :6] + b[:, :6], torch.maximum(a[:, 6:7], b[:, 6:7]), torch.minimum(a[:, 7:8], b[:, 7:8])], 1)


def outer_sums(sg: Tensor, sa: Tensor) -> Tensor:
    """Power sums of the outer product g aᵀ from the power sums of g and of a (no product formed)."""
    ext = torch.stack([sg[:, 6] * sa[:, 6], sg[:, 6] * sa[:, 7], sg[:, 7] * sa[:, 6], sg[:, 7] * sa[:, 7]], 1)
    return torch.cat([sg[:, :6] * sa[:, :6], ext.amax(1, keepdim=True), ext.amin(1, keepdim=True)], 1)


def stats_from_sums(s: Tensor, tol: float = const_tol(torch.float64)) -> Tensor:
    """The seven ``STATS`` [B, 7] (float64) from power sums [B, 8] (``SUM_COLUMNS``).

    Central moments come from raw moments in float64; a vector whose variance is below ``tol`` times its
    mean square counts as constant (kurtosis = skewness = 0). Pass a larger ``tol`` when the sums were
    accumulated in lower precision (``64 * finfo(dtype).eps``).
    """
    s = s.to(torch.float64)
    n = s[:, 0]
    mu, e2, e3, e4 = s[:, 1] / n, s[:, 2] / n, s[:, 3] / n, s[:, 4] / n
    mu2 = mu * mu
    m2 = e2 - mu2
    m3 = e3 - 3 * mu * e2 + 2 * mu * mu2
    m4 = e4 - 4 * mu * e3 + 6 * mu2 * e2 - 3 * mu2 * mu2
    return _finish(s[:, 6], s[:, 7], mu, s[:, 5], torch.sqrt(s[:, 2].clamp_min(0)), m2, m3, m4, m2 <= tol * e2)
