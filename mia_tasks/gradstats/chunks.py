"""Per-sample weight gradients materialised a chunk of samples at a time and reduced to power sums at once.

Routes that cannot get every statistic from factors (a conv's max, min and L1) build the per-sample
gradients of a few samples, reduce them to power sums (``moments.SUM_COLUMNS``) and drop them. The
chunk follows a memory plan: cache-sized on a CPU, the ``budget_mb`` cap everywhere. Outer products
g Aᵀ (a conv's patches, a Linear layer on sequences) get Σx and, for few positions, Σx², Σx³, Σx⁴
from small contractions of the factors instead of passes over G.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .moments import compiled_reduce, raw_sums_fused

# Target bytes of one materialised chunk of per-sample weight gradients: large enough to amortise the
# Python loop, small enough to stay in the last-level cache. ``budget_mb`` caps it further.
TILE_BYTES = 4 << 20


@dataclass(frozen=True)
class Plan:
    """How much of the per-sample gradients one layer may materialise at once, and how to reduce them."""

    budget_bytes: int  # cap on the bytes of per-sample gradients materialised at once
    compiled: bool  # torch.compile the row reductions
    cached: bool = True  # CPU: keep chunks cache-sized (TILE_BYTES, BLOCK_BYTES); GPU: the budget alone decides

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


def chunked_sums(B: int, numel: int, build: Callable[[int, int], Tensor], per_sample_bytes: int, plan: Plan,
                  s1: Tensor | None = None, moments: Tensor | None = None) -> Tensor:
    """Power sums [B, 8] of per-sample vectors of ``numel`` values that ``build(b0, b1)`` materialises [b, numel]
    a chunk of samples at a time, reduced at once and dropped. ``s1`` [B] / ``moments`` [B, 3] (Σx / Σx², Σx³,
    Σx⁴), when given, come from factors and spare passes over the chunks (eager only: compiled, one fused read
    gives everything)."""
    chunk = max(1, min(B, plan.tile(TILE_BYTES) // max(1, per_sample_bytes)))
    parts = []
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        G = build(b0, b1)
        r = compiled_reduce("raw", raw_sums_fused, G, plan.compiled)
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
BLOCK_BYTES = 32 << 20


def outer_chunk_sums(g: Tensor, A: Tensor | Callable[[int, int], Tensor], plan: Plan, m: int | None = None) -> Tensor:
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
    block = max(1, min(B, min(half, plan.tile(BLOCK_BYTES)) // per_sample_block))
    parts = []
    for b0 in range(0, B, block):
        b1 = min(B, b0 + block)
        gb, pb = g[b0:b1], patches(b0, b1)
        s1 = (gb.sum(2) * pb.sum(2)).sum((1, 2)) if factor_s1 else None  # Σx = Σ_p (Σ_i g_ip)(Σ_j A_jp)
        moments = _contracted_moments(gb, pb) if contract else None

        def build(c0: int, c1: int, gb: Tensor = gb, pb: Tensor = pb) -> Tensor:
            return torch.matmul(gb[c0:c1], pb[c0:c1].transpose(-1, -2)).reshape(c1 - c0, -1)

        parts.append(chunked_sums(b1 - b0, gr * n * m, build, per_sample_chunk, replace(plan, budget_bytes=half), s1, moments))
    return torch.cat(parts)
