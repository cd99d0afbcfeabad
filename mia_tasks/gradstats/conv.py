"""Conv1d/Conv2d layers: each sample's weight gradient Σ_p g_p a_pᵀ over output positions p, by two routes.

Max, min and L1 do not factor, so the per-sample weight gradients are materialised for a chunk of
samples at a time (the chunk follows ``budget_mb``) and reduced at once:

- many output positions: oneDNN/cuDNN's weight-gradient kernel, run as a grouped convolution with one
  group per sample;
- few positions: unfold + batched matmul (``chunks.outer_chunk_sums``), where Σx and (few positions)
  Σx², Σx³, Σx⁴ come from small contractions of the factors and only max/min/L1 read G; on small
  zero-padded maps, kernel offsets that see a single output position are outer products like a
  Linear layer's and are never materialised.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunks import Plan, chunked_sums, outer_chunk_sums
from .moments import merge_sums, outer_sums, sums_of
from .registry import Saved, register_layer_stats


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
GROUPED_MIN_POSITIONS = 32


def _patch_route_sums(module: nn.Module, a: Tensor, g: Tensor, padding: tuple[int, ...], plan: Plan) -> Tensor:
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
        return outer_chunk_sums(g, lambda b0, b1: _conv_patches(module, a[b0:b1], padding), plan, C * offsets.count)
    parts = []
    if Kd:
        flat = a.flatten(2)  # [B, C_in, pixels]; gathered with a zero in front for the padding reads

        def dense_patches(b0: int, b1: int) -> Tensor:
            return F.pad(flat[b0:b1], (1, 0))[..., offsets.dense_src].reshape(b1 - b0, gr, C * Kd, L)

        parts.append(outer_chunk_sums(g, dense_patches, plan, C * Kd))
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


@register_layer_stats(nn.Conv1d, nn.Conv2d)
def conv_grad_sums(module: nn.Module, saved: Saved, g: Tensor, plan: Plan) -> Tensor:
    """Power sums [B, 8] of each sample's weight-and-bias gradient of a Conv1d/Conv2d layer."""
    B, O, gr = g.shape[0], module.out_channels, module.groups
    L = math.prod(g.shape[2:])
    a, padding = _padded_input(module, saved.input.to(g.dtype))
    numel = module.weight.numel()
    esize = g.element_size()
    if L >= GROUPED_MIN_POSITIONS:
        kshape = tuple(module.weight.shape[1:])
        spatial = tuple(a.shape[2:])

        def build(b0: int, b1: int) -> Tensor:
            bc = b1 - b0
            weight = g.new_empty((bc * O, *kshape))  # only its shape matters: the input gradient is not asked for
            wg = torch.ops.aten.convolution_backward(
                g[b0:b1].reshape(1, bc * O, *g.shape[2:]), a[b0:b1].reshape(1, -1, *spatial), weight, None,
                module.stride, padding, module.dilation, False, (0,) * len(spatial), bc * gr, (False, True, False))[1]
            return wg.reshape(bc, -1)

        s = chunked_sums(B, numel, build, 2 * numel * esize, plan)
    else:
        s = _patch_route_sums(module, a, g.reshape(B, gr, O // gr, L), padding, plan)
    if module.bias is not None:
        s = merge_sums(s, sums_of(g.reshape(B, O, -1).sum(2)))
    return s
