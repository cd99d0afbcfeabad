"""Per-sample, per-layer gradient and activation statistics: the hot path of feature extraction.

    per_sample_features(model, inputs, targets) -> {"loss", "grad": {layer: [B, 7]}, "out": {...}, "constant_columns"}

One batched forward and backward pass with hooks (``recorder``); each audited layer's per-sample
gradient statistics come from the route registered for its type (``registry``; ``linear``: from the
factors, ``conv``: materialised a chunk at a time via ``chunks``), combined from power sums
(``moments``). Add a layer family with ``@register_layer_stats(MyLayer)`` in a module of its own.
"""

from ..schema import STATS
from ..schema import layer_columns as feature_columns
from . import conv, linear  # noqa: F401  (registers the Conv1d/Conv2d and Linear routes)
from .moments import (
    SUM_COLUMNS,
    merge_sums,
    outer_sums,
    stats_from_sums,
    stats_of,
    sums_of,
)
from .recorder import (
    features_in_batches,
    features_to_columns,
    per_sample_features,
    per_sample_grad_stats,
    reference_grad_stats,
)
from .registry import (
    LAYER_STATS,
    LayerStats,
    Saved,
    layer_stats_for,
    register_layer_stats,
    registered_layers,
)

SUPPORTED = tuple(LAYER_STATS)

__all__ = [
    "LAYER_STATS", "STATS", "SUM_COLUMNS", "SUPPORTED", "LayerStats", "Saved", "feature_columns", "features_in_batches",
    "features_to_columns",
    "layer_stats_for", "merge_sums", "outer_sums", "per_sample_features", "per_sample_grad_stats", "reference_grad_stats",
    "register_layer_stats", "registered_layers", "stats_from_sums", "stats_of", "sums_of",
]
