"""Per-sample, per-layer gradient and activation statistics: the hot path of feature extraction.

For every audited layer (Linear, Conv1d, Conv2d) and every sample, the seven ``STATS`` of the gradient of
that sample's cross-entropy loss w.r.t. the layer's own weight and bias (flattened together), and of the
layer's output activation, from ONE batched forward and backward pass (loss summed, so each row is exact
and independent of the batch):

- forward hooks keep each layer's input ``a`` and reduce its output to statistics at once (before an
  in-place ReLU can change it); tensor hooks on the outputs receive the output gradients ``g`` and reduce
  them with ``a`` to power sums right away, so nothing per-sample outlives its layer;
- Linear: the weight gradient is g aᵀ, so Σ(g_i a_j)^k = (Σ g_i^k)(Σ a_j^k), L1 = ‖g‖₁‖a‖₁ and the
  max/min are among the four products of extremes: O(m + n) per sample, nothing materialised;
- Conv: the weight gradient Σ_p g_p a_pᵀ over output positions p is materialised for a chunk of samples
  at a time (the chunk follows ``budget_mb``) and reduced at once: with many positions by oneDNN/cuDNN's
  weight-gradient kernel run as a grouped convolution (one group per sample), with few by unfold + batched
  matmul, where Σx and (few positions L) Σx², Σx³, Σx⁴ come from small contractions batched over a block
  of samples and only max/min/L1 read G; on small zero-padded maps, kernel offsets that see a single
  output position are outer products like a Linear layer's and are never materialised;
- parameters are frozen during the pass, so autograd skips the batched weight gradients it would
  otherwise compute and throw away (and ``.grad`` fields stay untouched).

Statistics are combined from power sums (n, Σx, Σx², Σx³, Σx⁴, Σ|x|, max, min) in float64; kurtosis is
Fisher's excess kurtosis and skewness the biased one (scipy.stats defaults). A (numerically) constant
vector has kurtosis = skewness = 0 by definition here (scipy gives nan).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import LayerleakError

STATS = ("max", "min", "mean", "l1", "l2", "kurtosis", "skewness")
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

# Columns of a power-sums tensor [B, 8]; the first six add, the last two take max / min.
SUM_COLUMNS = ("n", "s1", "s2", "s3", "s4", "l1", "max", "min")

# Target bytes of one materialised chunk of per-sample weight gradients: large enough to amortise the
# Python loop, small enough to stay in the last-level cache. ``budget_mb`` caps it further.
_TILE_BYTES = 4 << 20


# ---------------------------------------------------------------------------------------------
# statistics from values and from power sums


def _const_tol(dtype: torch.dtype) -> float:
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
    const = m2 <= _const_tol(torch.float64) * (x64 * x64).mean(1)
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


def _raw_sums_fused(G: Tensor) -> Tensor:
    """[b, 7]: Σx, Σx², Σx³, Σx⁴, Σ|x|, max, min of each row, accumulated in float64; one read once compiled."""
    x = G.to(torch.float64)
    x2 = x * x
    return torch.stack([x.sum(1), x2.sum(1), (x2 * x).sum(1), (x2 * x2).sum(1), x.abs().sum(1), x.amax(1), x.amin(1)], 1)


# ---------------------------------------------------------------------------------------------
# optional torch.compile of the row reductions (off unless asked: compiling costs seconds per process)

_COMPILED: dict[str, Callable[[Tensor], Tensor]] = {}
_COMPILE_FAILED: set[str] = set()


def _compile_wanted(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("LAYERLEAK_COMPILE", "0").strip().lower() in ("1", "true", "yes", "on")


def _reduce(name: str, fused: Callable[[Tensor], Tensor], x: Tensor, compiled: bool) -> Tensor | None:
    """The compiled ``fused`` reduction of x, or None (caller runs eager) when not wanted or it fails."""
    if not compiled or name in _COMPILE_FAILED:
        return None
    try:
        fn = _COMPILED.get(name)
        if fn is None:
            fn = _COMPILED[name] = torch.compile(fused, dynamic=True)
        return fn(x.contiguous())
    except Exception as e:  # any backend/toolchain failure: fall back to eager for good
        _COMPILE_FAILED.add(name)
        warnings.warn(f"layerleak: torch.compile of {name} failed ({type(e).__name__}); using eager reductions")
        return None


def _row_stats(x: Tensor, compiled: bool = False) -> Tensor:
    """``stats_of`` for the hot path (output activations): float64 [B, 7] from x's own precision."""
    if not x.dtype.is_floating_point or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    c = _reduce("central", _central_sums_fused, x, compiled)
    c = (_central_sums_eager(x) if c is None else c).to(torch.float64)
    if not torch.isfinite(c).all() and torch.isfinite(x).all():  # Σd⁴ overflowed in low precision
        c = _central_sums_eager(x.double())
    n = x.shape[1]
    mean = c[:, 0] / n
    m2, m3, m4 = c[:, 1] / n, c[:, 2] / n, c[:, 3] / n
    const = m2 <= _const_tol(x.dtype) * (m2 + mean * mean)
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


def stats_from_sums(s: Tensor, tol: float = _const_tol(torch.float64)) -> Tensor:
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


# ---------------------------------------------------------------------------------------------
# per-sample gradient power sums of one layer, from its input a and output gradient g


@dataclass(frozen=True)
class _Plan:
    budget_bytes: int  # cap on the bytes of per-sample gradients materialised at once
    compiled: bool  # torch.compile the row reductions
    cached: bool = True  # CPU: keep chunks cache-sized (_TILE_BYTES, _BLOCK_BYTES); GPU: the budget alone decides

    def tile(self, cap: int) -> int:
        return min(self.budget_bytes, cap) if self.cached else self.budget_bytes


def _chunk_moments(G: Tensor) -> Tensor:
    """Σx², Σx³, Σx⁴ of each row of G [b, N], [b, 3]."""
    G2 = G * G
    return torch.stack([G2.sum(1), torch.linalg.vecdot(G2, G), torch.linalg.vecdot(G2, G2)], 1)


def _contracted_moments(g: Tensor, A: Tensor) -> Tensor:
    """Σx², Σx³, Σx⁴ over G = g Aᵀ (summed over groups) without forming G, float64 [b, 3].

    g [b, Gr, n, L], A [b, Gr, m, L]: Σ_ij (Σ_p g_ip A_jp)^k = Σ_{p..} (Σ_i Π g_i·)(Σ_j Π A_j·). Both sides
    come from one Gram matrix of [x, products of the unique position pairs p ≤ q] (L + L(L+1)/2 columns),
    pairs p < q counted twice; worth it only when L is small. Done in float64: the terms can cancel.
    """
    L = g.shape[-1]
    p, q = torch.triu_indices(L, L, device=g.device)
    w = torch.where(p == q, 1.0, 2.0).to(torch.float64)  # multiplicity of each unique pair

    def gram(x: Tensor) -> Tensor:
        xt = x.transpose(-1, -2).to(torch.float64, memory_format=torch.contiguous_format)  # [b, Gr, L, rows]
        f = torch.cat([xt, xt[:, :, p] * xt[:, :, q]], -2)  # [b, Gr, L + P, rows]
        return f @ f.transpose(-1, -2)  # [b, Gr, L + P, L + P]

    prod = (gram(g) * gram(A)).sum(1)  # [b, L + P, L + P], groups summed
    s2 = prod[:, :L, :L].sum((1, 2))
    s3 = (prod[:, L:, :L].sum(2) * w).sum(1)
    s4 = (prod[:, L:, L:] * (w[:, None] * w)).sum((1, 2))
    return torch.stack([s2, s3, s4], 1)


def _chunked_sums(B: int, numel: int, build: Callable[[int, int], Tensor], per_sample_bytes: int, plan: _Plan,
                  s1: Tensor | None = None, moments: Tensor | None = None) -> Tensor:
    """Power sums [B, 8] of per-sample vectors of ``numel`` values that ``build(b0, b1)`` materialises [b, numel]
    a chunk of samples at a time, reduced at once and dropped. ``s1`` [B] / ``moments`` [B, 3] (Σx / Σx², Σx³,
    Σx⁴), when given, come from factors and spare passes over the chunks (eager only: compiled, one fused read
    gives everything)."""
    chunk = max(1, min(B, plan.tile(_TILE_BYTES) // max(1, per_sample_bytes)))
    parts = []
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        G = build(b0, b1)
        r = _reduce("raw", _raw_sums_fused, G, plan.compiled)
        if r is None:
            mom = _chunk_moments(G) if moments is None else moments[b0:b1]
            sum1 = G.sum(1) if s1 is None else s1[b0:b1]
            mx, mn = G.amax(1), G.amin(1)
            l1 = G.abs_().sum(1)
            r = torch.stack([sum1.to(mom.dtype), mom[:, 0], mom[:, 1], mom[:, 2], l1.to(mom.dtype), mx.to(mom.dtype), mn.to(mom.dtype)], 1)
        parts.append(r.to(torch.float64))
        del G
    r = torch.cat(parts)
    cnt = torch.full((B, 1), float(numel), dtype=torch.float64, device=r.device)
    return torch.cat([cnt, r[:, :4], r[:, 4:5], r[:, 5:6], r[:, 6:7]], 1)


# Cap on the bytes of one block of input patches and factor contractions (all samples of a small layer).
_BLOCK_BYTES = 32 << 20


def _outer_chunk_sums(g: Tensor, A: Tensor | Callable[[int, int], Tensor], plan: _Plan, m: int | None = None) -> Tensor:
    """Power sums [B, 8] of the per-sample weight gradients G_b = g_b A_bᵀ (per group) via batched matmul.

    g [B, Gr, n, L] output gradients per group; A [B, Gr, m, L] input patches, or a function
    (start, stop) -> that slice (then pass ``m``), so the patches of the whole batch never exist at once. Samples go in
    blocks: the block's patches are made once, Σx (and, for few positions L, Σx², Σx³, Σx⁴) come from
    factor contractions batched over the block, and only what needs the values (max, min, L1) reads G,
    materialised a cache-sized chunk at a time.
    """
    B, gr, n, L = g.shape
    patches = A if callable(A) else (lambda b0, b1: A[b0:b1])
    m = A.shape[2] if m is None else m
    esize = g.element_size()
    contract = not plan.compiled and L ** 4 * (n + m) <= 4 * n * m  # moments from L^k contractions, not passes over G
    factor_s1 = not plan.compiled and L * (n + m) < n * m
    pairs = L * (L + 1) // 2  # float64 [x, pair products] and their pieces, per row of g and of A
    per_sample_block = gr * m * L * esize + (16 * gr * (L + pairs) * (n + m) if contract else 0)
    per_sample_chunk = (1 if contract else 2) * gr * n * m * esize
    half = max(1, plan.budget_bytes // 2)
    block = max(1, min(B, min(half, plan.tile(_BLOCK_BYTES)) // per_sample_block))
    parts = []
    for b0 in range(0, B, block):
        b1 = min(B, b0 + block)
        gb, pb = g[b0:b1], patches(b0, b1)
        s1 = (gb.sum(2) * pb.sum(2)).sum((1, 2)) if factor_s1 else None  # Σx = Σ_p (Σ_i g_ip)(Σ_j A_jp)
        moments = _contracted_moments(gb, pb) if contract else None

        def build(c0: int, c1: int) -> Tensor:
            return torch.matmul(gb[c0:c1], pb[c0:c1].transpose(-1, -2)).reshape(c1 - c0, -1)

        parts.append(_chunked_sums(b1 - b0, gr * n * m, build, per_sample_chunk, replace(plan, budget_bytes=half), s1, moments))
    return torch.cat(parts)


def _padded_input(module: nn.Module, a: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The conv input with any non-zero or asymmetric padding applied, and the padding left to the kernel."""
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return a, tuple(module.padding)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(a, list(module._reversed_padding_repeated_twice), mode=mode), (0,) * (a.dim() - 2)


def _geometry(module: nn.Module) -> tuple:
    """What unfolding needs of a Conv1d/Conv2d: (2-D?, kernel size, dilation, stride); hashable."""
    return isinstance(module, nn.Conv2d), tuple(module.kernel_size), tuple(module.dilation), tuple(module.stride)


def _unfold(geometry: tuple, a: Tensor, padding: tuple[int, ...]) -> Tensor:
    """F.unfold of a conv input [b, C, *spatial] with the layer's ``_geometry``: [b, C·K, L]."""
    two_d, kernel, dilation, stride = geometry
    if two_d:
        return F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)
    return F.unfold(a.unsqueeze(2), (1, kernel[0]), dilation=(1, dilation[0]), padding=(0, padding[0]), stride=(1, stride[0]))


def _conv_patches(module: nn.Module, a: Tensor, padding: tuple[int, ...]) -> Tensor:
    """Unfolded input patches [b, Gr, C/Gr·K, L] of a Conv1d/Conv2d for the (padded) input chunk a."""
    cols = _unfold(_geometry(module), a, padding)
    return cols.reshape(cols.shape[0], module.groups, -1, cols.shape[-1])


def _source_pixels(geometry: tuple, spatial: tuple[int, ...], padding: tuple[int, ...], device: torch.device) -> Tensor:
    """[K, L] long: the flat input pixel that kernel offset k reads at output position p, -1 for zero padding."""
    index = torch.arange(1, math.prod(spatial) + 1, dtype=torch.float64, device=device).reshape(1, 1, *spatial)
    return _unfold(geometry, index, padding)[0].round().long() - 1


@dataclass(frozen=True)
class _Offsets:
    """A conv's kernel offsets by how many output positions read real input (not zero padding)."""

    count: int  # K, all offsets
    dense_src: Tensor  # [Kd, L]: for offsets seeing 2+ positions, source pixel + 1 (0: padding)
    single_pos: Tensor  # [K1]: for offsets seeing one position, that position ...
    single_pix: Tensor  # [K1]: ... and the input pixel read there
    zero: int  # offsets that read only padding


@functools.lru_cache(maxsize=256)
def _offsets(geometry: tuple, spatial: tuple[int, ...], padding: tuple[int, ...], device: torch.device) -> _Offsets:
    """``_Offsets`` of one layer geometry and input size, made once (no host syncs on later batches)."""
    src = _source_pixels(geometry, spatial, padding, device)
    seen = (src >= 0).sum(1)
    single = (seen == 1).nonzero().flatten()
    pos = (src[single] >= 0).nonzero()[:, 1]  # row order kept: one position per single offset
    return _Offsets(src.shape[0], src[seen >= 2] + 1, pos, src[single, pos], int((seen == 0).sum()))


# Output positions from which the per-sample weight gradients come from a grouped convolution backward
# (one group per sample: oneDNN's weight-gradient kernel) rather than unfold + batched matmul.
_GROUPED_MIN_POSITIONS = 32


def _patch_route_sums(module: nn.Module, a: Tensor, g: Tensor, padding: tuple[int, ...], plan: _Plan) -> Tensor:
    """Power sums [B, 8] of a conv's per-sample weight gradients from patches, g [B, Gr, n, L].

    On a small, zero-padded map some kernel offsets k read real input at only one output position p (the
    others read padding): that offset's weight-gradient columns are the outer product g_p a_kᵀ, whose
    sums come from the factors' sums (as for a Linear layer), and offsets reading only padding give
    zeros. Only the offsets that see two or more positions are materialised (CIFAR AlexNet's 2x2 maps:
    5 of 9 offsets), their patches gathered straight from the input.
    """
    B, gr, n, L = g.shape
    C = a.shape[1] // gr
    offsets = _offsets(_geometry(module), tuple(a.shape[2:]), padding, g.device)
    Kd = offsets.dense_src.shape[0]
    if Kd == offsets.count:
        return _outer_chunk_sums(g, lambda b0, b1: _conv_patches(module, a[b0:b1], padding), plan, C * offsets.count)
    parts = []
    if Kd:
        flat = a.flatten(2)  # [B, C_in, pixels]; gathered with a zero in front for the padding reads

        def dense_patches(b0: int, b1: int) -> Tensor:
            return F.pad(flat[b0:b1], (1, 0))[..., offsets.dense_src].reshape(b1 - b0, gr, C * Kd, L)

        parts.append(_outer_chunk_sums(g, dense_patches, plan, C * Kd))
    if len(offsets.single_pos):
        # power sums of g at each position and of a at each pixel (over the group's channels), then paired
        sg = sums_of(g.transpose(-1, -2).reshape(-1, n)).reshape(B, gr, L, 8)[:, :, offsets.single_pos]
        sa = sums_of(a.reshape(B, gr, C, -1).transpose(-1, -2).reshape(-1, C)).reshape(B, gr, -1, 8)[:, :, offsets.single_pix]
        blocks = outer_sums(sg.reshape(-1, 8), sa.reshape(-1, 8)).reshape(B, -1, 8)
        parts.append(torch.cat([blocks[:, :, :6].sum(1), blocks[:, :, 6].amax(1, keepdim=True), blocks[:, :, 7].amin(1, keepdim=True)], 1))
    if offsets.zero:  # gr·n·C gradient entries per padding-only offset, all exactly 0
        z = torch.zeros(B, 8, dtype=torch.float64, device=g.device)
        z[:, 0] = gr * n * C * offsets.zero
        parts.append(z)
    s = parts[0]
    for part in parts[1:]:
        s = merge_sums(s, part)
    return s


def _conv_grad_sums(module: nn.Module, a: Tensor, g: Tensor, plan: _Plan) -> Tensor:
    B, O, gr = g.shape[0], module.out_channels, module.groups
    L = math.prod(g.shape[2:])
    a, padding = _padded_input(module, a)
    numel = module.weight.numel()
    esize = g.element_size()
    if L >= _GROUPED_MIN_POSITIONS:
        kshape = tuple(module.weight.shape[1:])
        spatial = tuple(a.shape[2:])

        def build(b0: int, b1: int) -> Tensor:
            bc = b1 - b0
            weight = g.new_empty((bc * O, *kshape))  # only its shape matters: the input gradient is not asked for
            wg = torch.ops.aten.convolution_backward(
                g[b0:b1].reshape(1, bc * O, *g.shape[2:]), a[b0:b1].reshape(1, -1, *spatial), weight, None,
                module.stride, padding, module.dilation, False, (0,) * len(spatial), bc * gr, (False, True, False))[1]
            return wg.reshape(bc, -1)

        s = _chunked_sums(B, numel, build, 2 * numel * esize, plan)
    else:
        s = _patch_route_sums(module, a, g.reshape(B, gr, O // gr, L), padding, plan)
    if module.bias is not None:
        s = merge_sums(s, sums_of(g.reshape(B, O, -1).sum(2)))
    return s


def _linear_grad_sums(module: nn.Linear, a: Tensor | None, sa: Tensor | None, g: Tensor, plan: _Plan) -> Tensor:
    B = g.shape[0]
    if g.dim() == 2:
        s = outer_sums(sums_of(g), sa)
        gb = g
    else:  # sequence input [B, ..., m]: G = Σ_t g_t a_tᵀ per sample
        gl = g.reshape(B, 1, -1, module.out_features).transpose(-1, -2)  # [B, 1, n, T]
        al = a.reshape(B, 1, -1, module.in_features).transpose(-1, -2)  # [B, 1, m, T]
        s = _outer_chunk_sums(gl, al, plan)
        gb = g.reshape(B, -1, module.out_features).sum(1)
    if module.bias is not None:
        s = merge_sums(s, sums_of(gb))
    return s


# ---------------------------------------------------------------------------------------------
# the single forward/backward pass


class _Recorder:
    """Hooks on the audited layers: activations in, output statistics out, gradient statistics back."""

    def __init__(self, model: nn.Module, layers: Sequence[str], plan: _Plan):
        self.plan = plan
        self.modules: dict[str, nn.Module] = {}
        for name in layers:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise LayerleakError(f"layer {name!r} is not a module of the model; see `layerleak models` for its audited layers") from None
            if not isinstance(mod, SUPPORTED):
                raise LayerleakError(f"layer {name!r} is a {type(mod).__name__}; per-sample gradient statistics support Linear, Conv1d and Conv2d")
            self.modules[name] = mod
        self.calls: dict[str, int] = {}
        self.saved: dict[str, tuple] = {}
        self.leaves: list[Tensor] = []  # graph starts made by the hooks (the usual case: parameters frozen)
        self.roots: list[Tensor] = []  # hooked outputs already in a graph before any leaf (rare)
        self.out: dict[str, Tensor] = {}
        self.grad: dict[str, Tensor] = {}
        self.errors: list[str] = []
        self.recording = False
        self.handles = [mod.register_forward_hook(self._forward_hook(name)) for name, mod in self.modules.items()]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor):
            if not self.recording:
                return None
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                raise LayerleakError(
                    f"layer {name!r} is called more than once in one forward pass (a shared module); its per-sample "
                    "gradient mixes the calls, so leave it out of the audited layers or give each call its own module")
            a = inputs[0].detach()
            if a.dim() < 2 or output.dim() < 2:
                raise LayerleakError(f"layer {name!r} got an unbatched input of shape {tuple(a.shape)}; per-sample statistics need a batch dimension")
            with torch.no_grad():
                self.out[name] = _row_stats(output.detach().reshape(output.shape[0], -1), self.plan.compiled)
                if isinstance(module, nn.Linear) and a.dim() == 2:
                    self.saved[name] = (None, sums_of(a), 0)
                else:
                    self.saved[name] = (a, None, a._version)
            if not output.requires_grad:
                # Nothing upstream needs a gradient (parameters are frozen): start the graph here. The clone
                # keeps the leaf safe from a following in-place op (ReLU(inplace=True)).
                leaf = output.detach().requires_grad_()
                self.leaves.append(leaf)
                leaf.register_hook(self._grad_hook(name))
                return leaf.clone()
            output.register_hook(self._grad_hook(name))
            if not self.leaves:  # in a graph before any leaf: a grad-requiring tensor outside the parameters
                self.roots.append(output)
            return None
        return hook

    def _grad_hook(self, name: str):
        def hook(g: Tensor) -> None:
            try:
                self._grad_stats(name, g)
            except LayerleakError as e:
                self.errors.append(str(e))
            return None
        return hook

    def _grad_stats(self, name: str, g: Tensor) -> None:
        module = self.modules[name]
        a, sa, version = self.saved.pop(name)
        if a is not None and a._version != version:
            raise LayerleakError(f"the input of layer {name!r} was modified in place after the layer used it; make that op out-of-place (e.g. ReLU(inplace=False))")
        with torch.no_grad():
            g = g.detach()
            s = self._sums(module, a, sa, g)
            if not torch.isfinite(s).all() and torch.isfinite(g).all():
                # Σx⁴ can overflow in float32 for huge gradients: redo this layer in float64.
                s = self._sums(module, None if a is None else a.double(), sa, g.double())
            tol = _const_tol(g.dtype)
            self.grad[name] = stats_from_sums(s, tol)

    def _sums(self, module: nn.Module, a: Tensor | None, sa: Tensor | None, g: Tensor) -> Tensor:
        if isinstance(module, nn.Linear):
            return _linear_grad_sums(module, a, sa, g, self.plan)
        return _conv_grad_sums(module, a.to(g.dtype), g, self.plan)


@contextmanager
def _full_fp32(device: torch.device) -> Iterator[None]:
    """No TensorFloat-32 in cuDNN convolutions or cuBLAS matmuls while features are computed on a GPU
    (cuDNN allows it by default: ~1e-3 relative error, and features must not depend on the device)."""
    if device.type != "cuda":
        yield
        return
    cudnn, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision") and hasattr(mm, "fp32_precision"):  # torch >= 2.9
        flags = [(cudnn.conv, "fp32_precision", "ieee"), (mm, "fp32_precision", "ieee")]
    else:
        flags = [(cudnn, "allow_tf32", False), (mm, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved):
            setattr(owner, name, value)


def _zero_stats(batch: int, device: torch.device) -> Tensor:
    return torch.zeros(batch, len(STATS), dtype=torch.float64, device=device)


def per_sample_features(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str] | None = None,
                        budget_mb: float = 256, *, compile: bool | None = None) -> dict:
    """Loss, gradient statistics and output-activation statistics of each sample, from one forward/backward.

    Returns ``{"loss": [B], "grad": {layer: [B, 7]}, "out": {layer: [B, 7]}}`` (float64, on the inputs'
    device). The loss is per-sample cross-entropy, summed over the batch for the backward pass, so each
    row is exact and independent of the batch it came in. The model runs in eval mode (BatchNorm uses
    running statistics); its modes, ``requires_grad`` flags and ``.grad`` fields are left as they were.
    ``budget_mb`` bounds the memory of the per-sample conv gradients (and their patches) materialised at
    once: chunks of samples, at least one, so the peak is the budget, or one sample's weight gradient and
    patches where that is larger, whatever the batch size. ``compile`` (default: on only if env LAYERLEAK_COMPILE=1) fuses the row
    reductions with torch.compile: 10-40 s once per process, then the reductions run 2-6x faster (10-20%
    of the whole pass on CIFAR AlexNet/ResNet-20, CPU); any compile failure falls back to eager.
    """
    from .models import audited_layers

    layers = list(audited_layers(model) if layers is None else layers)
    if not layers:
        raise LayerleakError("no layers to audit: the model has no Linear/Conv1d/Conv2d layer with weights")
    if inputs.shape[0] != targets.shape[0]:
        raise LayerleakError(f"inputs hold {inputs.shape[0]} samples but targets {targets.shape[0]}")
    if not budget_mb > 0:
        raise LayerleakError(f"budget_mb must be positive, got {budget_mb}")
    recorder = _Recorder(model, layers, _Plan(int(budget_mb * (1 << 20)), _compile_wanted(compile), inputs.device.type == "cpu"))
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        recorder.recording = True
        with torch.enable_grad(), _full_fp32(inputs.device):
            logits = model(inputs.detach())
            recorder.recording = False
            loss = F.cross_entropy(logits, targets, reduction="none")
            starts = recorder.leaves + recorder.roots
            if starts and loss.requires_grad:
                try:
                    torch.autograd.grad(loss.sum(), starts, allow_unused=True)
                except RuntimeError:
                    if not recorder.errors:
                        raise
        if recorder.errors:
            raise LayerleakError(recorder.errors[0])
    finally:
        recorder.recording = False
        recorder.remove()
        recorder.leaves.clear()  # the leaves' hooks hold the recorder: a cycle that kept activations until gc
        recorder.roots.clear()
        recorder.saved.clear()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    B = inputs.shape[0]
    missing = [n for n in layers if n not in recorder.out]
    if missing:
        raise LayerleakError(f"layer(s) {missing} did not run in the forward pass; audit only layers the model uses")
    # A layer whose output does not reach the loss has a zero gradient.
    grad = {n: recorder.grad.get(n, _zero_stats(B, inputs.device)) for n in layers}
    return {"loss": loss.detach().to(torch.float64), "grad": grad, "out": {n: recorder.out[n] for n in layers}}


def per_sample_grad_stats(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str] | None = None,
                          budget_mb: float = 256, *, compile: bool | None = None) -> dict[str, Tensor]:
    """``{layer: [B, 7]}``: the ``STATS`` of each sample's loss gradient w.r.t. each layer's weight and bias."""
    return per_sample_features(model, inputs, targets, layers, budget_mb, compile=compile)["grad"]


def reference_grad_stats(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str] | None = None,
                         stats: Callable[[Tensor], Tensor] = stats_of) -> dict[str, Tensor]:
    """The plain reference: one sample at a time, autograd gradients of each layer's weight and bias
    (concatenated), reduced by ``stats`` ([1, N] -> [1, 7]). Eval mode; the model is left as it was."""
    from .models import audited_layers

    layers = list(audited_layers(model) if layers is None else layers)
    modules = {n: model.get_submodule(n) for n in layers}
    params = {n: list(m.parameters(recurse=False)) for n, m in modules.items()}
    flat = [p for n in layers for p in params[n]]
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in flat}
    rows: dict[str, list[Tensor]] = {n: [] for n in layers}
    try:
        model.eval()
        for p in flat:
            p.requires_grad_(True)
        for i in range(inputs.shape[0]):
            with torch.enable_grad():
                loss = F.cross_entropy(model(inputs[i:i + 1]), targets[i:i + 1], reduction="sum")
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
            k = 0
            for n in layers:
                parts = []
                for p in params[n]:
                    gp = grads[k]
                    parts.append((torch.zeros_like(p) if gp is None else gp).reshape(-1))
                    k += 1
                rows[n].append(stats(torch.cat(parts)[None]))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    return {n: torch.cat(r) for n, r in rows.items()}


# ---------------------------------------------------------------------------------------------
# feature table columns


def feature_columns(layers: Iterable[str]) -> list[str]:
    """Canonical feature column names: ``grad.<layer>.<stat>`` for all layers, then ``out.<layer>.<stat>``."""
    layers = list(layers)
    return [f"{kind}.{layer}.{stat}" for kind in ("grad", "out") for layer in layers for stat in STATS]


def features_to_columns(result: dict, layers: Iterable[str]) -> dict[str, np.ndarray]:
    """float64 numpy columns ``loss``, ``grad.*``, ``out.*`` from a ``per_sample_features`` result."""
    layers = list(layers)
    cols = {"loss": result["loss"].detach().cpu().to(torch.float64).numpy()}
    for kind in ("grad", "out"):
        for layer in layers:
            block = result[kind][layer].detach().cpu().to(torch.float64).numpy()
            for j, stat in enumerate(STATS):
                cols[f"{kind}.{layer}.{stat}"] = np.ascontiguousarray(block[:, j])
    return cols
