"""Linear layers: each sample's weight gradient g aᵀ reduced from its factors, nothing materialised.

Σ(g_i a_j)^k = (Σ g_i^k)(Σ a_j^k) gives the raw moments, L1 = ‖g‖₁‖a‖₁, and the max/min are among the
four products of extremes: O(m + n) per sample (``moments.outer_sums``); the bias gradient g is merged in
by adding sums. On sequence inputs [B, ..., m] the gradient Σ_t g_t a_tᵀ goes the chunked outer-product way.
"""

from __future__ import annotations

from torch import Tensor, nn

from .chunks import Plan, outer_chunk_sums
from .moments import merge_sums, outer_sums, sums_of
from .registry import Saved, register_layer_stats


def _save_linear(module: nn.Module, a: Tensor) -> Saved:
    """[B, m] inputs: only their power sums are needed; sequences keep the input."""
    return Saved(None, sums_of(a)) if a.dim() == 2 else Saved(a)


@register_layer_stats(nn.Linear, save=_save_linear, zero_sum_on_logits=True)
def linear_grad_sums(module: nn.Linear, saved: Saved, g: Tensor, plan: Plan) -> Tensor:
    """Power sums [B, 8] of each sample's weight-and-bias gradient of a Linear layer."""
    B = g.shape[0]
    if g.dim() == 2:
        s = outer_sums(sums_of(g), saved.input_sums)
        gb = g
    else:  # sequence input [B, ..., m]: G = Σ_t g_t a_tᵀ per sample
        gl = g.reshape(B, 1, -1, module.out_features).transpose(-1, -2)  # [B, 1, n, T]
        al = saved.input.reshape(B, 1, -1, module.in_features).transpose(-1, -2)  # [B, 1, m, T]
        s = outer_chunk_sums(gl, al, plan)
        gb = g.reshape(B, -1, module.out_features).sum(1)
    if module.bias is not None:
        s = merge_sums(s, sums_of(gb))
    return s
