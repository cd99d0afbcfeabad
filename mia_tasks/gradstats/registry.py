"""Per-sample gradient routes, registered by layer type (as Opacus registers its grad samplers).

One module per layer family registers a function giving the power sums of each sample's gradient
w.r.t. the layer's weight and bias:

    @register_layer_stats(nn.Conv1d, nn.Conv2d)
    def conv_grad_sums(module, saved, g, plan) -> Tensor: ...     # [B, 8], moments.SUM_COLUMNS

``saved`` is what the forward hook kept of the layer's input (``Saved``): the input itself, unless
the family's ``save`` keeps less (a Linear layer on [B, m] inputs keeps only the inputs' power sums).
A module is handled by the entry of its own type or its nearest registered base class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from .chunks import Plan


@dataclass(frozen=True)
class Saved:
    """What a layer's forward hook keeps for its gradient hook."""

    input: Tensor | None  # the layer's input, or None when the route needs only ...
    input_sums: Tensor | None = None  # ... the power sums of each sample's input (float64 [B, 8])

    def double(self) -> Saved:
        """The same in float64 (the retry when float32 power sums overflow)."""
        return Saved(None if self.input is None else self.input.double(), self.input_sums)


GradSums = Callable[[nn.Module, Saved, Tensor, Plan], Tensor]


@dataclass(frozen=True)
class LayerStats:
    """A layer family's route: ``grad_sums`` from what ``save`` kept of the input and the output gradient g."""

    grad_sums: GradSums
    save: Callable[[nn.Module, Tensor], Saved]
    # Σ of each sample's weight(+bias) gradient is 0 whenever Σ of its output gradient is (a Linear layer:
    # Σ g aᵀ = (Σ g)(Σ a)); on the logits of a softmax cross-entropy the gradient's mean is then exactly 0.
    zero_sum_on_logits: bool = False


LAYER_STATS: dict[type[nn.Module], LayerStats] = {}


def keep_input(module: nn.Module, a: Tensor) -> Saved:
    """The default ``save``: keep the input itself."""
    return Saved(a)


def register_layer_stats(*layer_types: type[nn.Module], save: Callable[[nn.Module, Tensor], Saved] = keep_input,
                         zero_sum_on_logits: bool = False) -> Callable[[GradSums], GradSums]:
    """Decorator: register ``grad_sums`` as the per-sample gradient route of ``layer_types``."""
    def register(grad_sums: GradSums) -> GradSums:
        for t in layer_types:
            LAYER_STATS[t] = LayerStats(grad_sums, save, zero_sum_on_logits)
        return grad_sums
    return register


def layer_stats_for(module: nn.Module) -> LayerStats | None:
    """The route of ``module``'s type or its nearest registered base class; None when unsupported."""
    for cls in type(module).__mro__:
        if cls in LAYER_STATS:
            return LAYER_STATS[cls]
    return None


def registered_layers(model: nn.Module) -> list[str]:
    """Qualified names of ``model``'s modules that have a route and their own weight, in registration order
    (the audited layers of ``mia_tasks.models.audited_layers``)."""
    return [n for n, m in model.named_modules() if layer_stats_for(m) is not None and getattr(m, "weight", None) is not None]


def supported_names() -> str:
    """The registered layer types, for error messages ('Linear, Conv1d and Conv2d')."""
    names = [t.__name__ for t in LAYER_STATS]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"

