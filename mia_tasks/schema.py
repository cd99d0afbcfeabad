"""The feature schema of OUT/features: statistics, feature kinds and column names, built and parsed here alone.

A features row holds ``sample_id``, ``label``, ``member``, ``loss`` and, per audited layer, the seven
``STATS`` of the per-sample loss gradient w.r.t. the layer's weight and bias (``grad.<layer>.<stat>``)
and of its output activation (``out.<layer>.<stat>``). Layer names may contain dots
(``layer1.0.conv1``): the statistic is the last part.

Some columns are constant by construction: with softmax cross-entropy a sample's logit gradients
sum to zero, so the weight(-and-bias) gradient of the layer whose output is the logits has mean
exactly 0 (``constant_columns``). Extraction writes them as exact zeros and lists them in the part's
metadata under ``CONSTANT_COLUMNS_KEY``; attacks and the sweep leave them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Bump when the meaning or the content of a feature column changes: old feature parts are recomputed.
# 2: the logits layer's gradient mean is written as an exact zero and listed as constant; the loss (and the
#    logit gradient every gradient feature starts from) is computed in float64.
SCHEMA_VERSION = 2

STATS = ("max", "min", "mean", "l1", "l2", "kurtosis", "skewness")
GRAD, OUT, LOSS = "grad", "out", "loss"
LAYER_KINDS = (GRAD, OUT)  # feature kinds with one column per layer and statistic
FEATURE_KINDS = (*LAYER_KINDS, LOSS)
SAMPLE_ID, LABEL, MEMBER = "sample_id", "label", "member"
ID_COLUMNS = (SAMPLE_ID, LABEL, MEMBER)
CONSTANT_COLUMNS_KEY = "constant_columns"  # Parquet metadata key of a features part


def column(kind: str, layer: str, stat: str) -> str:
    """The name of one per-layer feature column: ``<kind>.<layer>.<stat>``."""
    return f"{kind}.{layer}.{stat}"


def parse_column(name: str) -> tuple[str, str | None, str | None]:
    """(kind, layer, stat) of a feature column: ``grad.<layer>.<stat>``, ``out.<layer>.<stat>`` or ``loss``.

    Other columns (``sample_id``, ``label``, ``member``, ...) give kind ``""``.
    """
    if name == LOSS:
        return LOSS, None, None
    kind, _, rest = name.partition(".")
    layer, _, stat = rest.rpartition(".")
    if kind in LAYER_KINDS and layer and stat:
        return kind, layer, stat
    return "", None, None


def layer_columns(layers: Iterable[str], kinds: Sequence[str] = LAYER_KINDS) -> list[str]:
    """The table's order: for each kind, every layer's seven statistics (``grad.*`` of all layers, then ``out.*``)."""
    layers = list(layers)
    return [column(kind, layer, stat) for kind in kinds for layer in layers for stat in STATS]


def player_columns(members: Sequence[str], kinds: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
    """The feature columns a player (a group of layers) brings, layer by layer, less ``exclude``."""
    skip = set(exclude)
    return [c for layer in members for kind in kinds for stat in STATS if (c := column(kind, layer, stat)) not in skip]


def layers_in(columns: Sequence[str]) -> list[str]:
    """The layers that have feature columns, in column (forward) order."""
    seen: dict[str, None] = {}
    for c in columns:
        layer = parse_column(c)[1]
        if layer is not None:
            seen.setdefault(layer)
    return list(seen)


def constant_columns(logits_layer: str | None) -> list[str]:
    """Columns constant by construction when ``logits_layer`` (a Linear layer whose output is the logits of a
    softmax cross-entropy loss) is audited.

    Per sample, the logit gradient g = softmax(z) - onehot(y) sums to 0 over the classes. The layer's weight
    gradient is g aᵀ, whose entries sum to (Σ g)(Σ a) = 0, and its bias gradient is g itself: the mean of
    the two together is exactly 0. Its other statistics, the output statistics and every other layer's
    gradient (reached through the network's nonlinearities) are not constant.
    """
    return [] if logits_layer is None else [column(GRAD, logits_layer, "mean")]
