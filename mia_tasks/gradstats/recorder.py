"""The single forward/backward pass: hooks on the audited layers turn it into per-sample statistics.

For every audited layer and every sample, the seven statistics (``schema.STATS``) of the gradient of
that sample's cross-entropy loss w.r.t. the layer's own weight and bias (flattened together), and of
the layer's output activation, from ONE batched forward and backward pass (loss summed, so each row is
exact and independent of the batch):

- forward hooks keep what each layer's route needs of its input (``registry.Saved``) and reduce its
  output to statistics at once (before an in-place ReLU can change it); tensor hooks on the outputs
  receive the output gradients ``g`` and hand them to the layer type's registered route, so nothing
  per-sample outlives its layer;
- parameters are frozen during the pass, so autograd skips the batched weight gradients it would
  otherwise compute and throw away (and ``.grad`` fields stay untouched);
- the loss is computed in float64 from the logits: in float32, a confident sample's logit gradient
  p_y - 1 keeps only a few digits (and the loss, log-sum-exp minus the logit, fewer), which made float32
  features depend on the batch size they were computed in (up to 5e-5 of a column's scale, 1e-6 now);
- the layer whose output is the logits, when its route says so (Linear), has a gradient mean of
  exactly 0 by construction (``schema.constant_columns``): it is written as 0, not as rounding noise.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LayerleakError
from ..schema import LAYER_KINDS, LOSS, STATS, column, constant_columns
from .chunks import Plan
from .moments import compile_wanted, const_tol, row_stats, stats_from_sums, stats_of
from .registry import LayerStats, Saved, layer_stats_for, registered_layers, supported_names


class _Recorder:
    """Hooks on the audited layers: activations in, output statistics out, gradient statistics back."""

    def __init__(self, model: nn.Module, layers: Sequence[str], plan: Plan):
        self.plan = plan
        self.modules: dict[str, nn.Module] = {}
        self.routes: dict[str, LayerStats] = {}
        for name in layers:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise LayerleakError(f"layer {name!r} is not a module of the model; see `layerleak models` for its audited layers") from None
            route = layer_stats_for(mod)
            if route is None:
                raise LayerleakError(f"layer {name!r} is a {type(mod).__name__}; per-sample gradient statistics support {supported_names()}")
            self.modules[name], self.routes[name] = mod, route
        self.calls: dict[str, int] = {}
        self.saved: dict[str, tuple[Saved, int]] = {}  # what the route keeps of the input, and the input's version
        self.outputs: dict[str, weakref.ref] = {}  # each layer's output as the model sees it (to find the logits)
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
                self.out[name] = row_stats(output.detach().reshape(output.shape[0], -1), self.plan.compiled)
                saved = self.routes[name].save(module, a)
                self.saved[name] = (saved, 0 if saved.input is None else saved.input._version)
            if not output.requires_grad:
                # Nothing upstream needs a gradient (parameters are frozen): start the graph here. The clone
                # keeps the leaf safe from a following in-place op (ReLU(inplace=True)).
                leaf = output.detach().requires_grad_()
                self.leaves.append(leaf)
                leaf.register_hook(self._grad_hook(name))
                seen = leaf.clone()
                self.outputs[name] = weakref.ref(seen)
                return seen
            output.register_hook(self._grad_hook(name))
            self.outputs[name] = weakref.ref(output)
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
        return hook

    def layer_of(self, tensor: Tensor) -> str | None:
        """The audited layer whose output ``tensor`` is (the very object, as the model returned it), or None."""
        return next((name for name, ref in self.outputs.items() if ref() is tensor), None)

    def _grad_stats(self, name: str, g: Tensor) -> None:
        module, route = self.modules[name], self.routes[name]
        saved, version = self.saved.pop(name)
        if saved.input is not None and saved.input._version != version:
            raise LayerleakError(f"the input of layer {name!r} was modified in place after the layer used it; make that op out-of-place (e.g. ReLU(inplace=False))")
        with torch.no_grad():
            g = g.detach()
            s = route.grad_sums(module, saved, g, self.plan)
            if not torch.isfinite(s).all() and torch.isfinite(g).all():
                # Σx⁴ can overflow in float32 for huge gradients: redo this layer in float64.
                s = route.grad_sums(module, saved.double(), g.double(), self.plan)
            tol = const_tol(g.dtype)
            self.grad[name] = stats_from_sums(s, tol)


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

    Returns ``{"loss": [B], "grad": {layer: [B, 7]}, "out": {layer: [B, 7]}, "constant_columns": [...]}``
    (float64, on the inputs' device). ``constant_columns`` names the features that are constant by
    construction (``schema.constant_columns``: the gradient mean of a Linear layer whose output is the
    logits), which are exact zeros here rather than rounding noise. The loss is per-sample cross-entropy
    (in float64), summed over the batch for the backward pass, so each row is exact and independent of the
    batch it came in. The model runs in eval mode (BatchNorm uses
    running statistics); its modes, ``requires_grad`` flags and ``.grad`` fields are left as they were.
    ``budget_mb`` bounds the memory of the per-sample conv gradients (and their patches) materialised at
    once: chunks of samples, at least one, so the peak is the budget, or one sample's weight gradient and
    patches where that is larger, whatever the batch size. ``compile`` (default: on only if env LAYERLEAK_COMPILE=1) fuses the row
    reductions with torch.compile: 10-40 s once per process, then the reductions run 2-6x faster (10-20%
    of the whole pass on CIFAR AlexNet/ResNet-20, CPU); any compile failure falls back to eager.
    """
    layers = list(registered_layers(model) if layers is None else layers)
    if not layers:
        raise LayerleakError(f"no layers to audit: the model has no {supported_names()} layer with weights")
    if inputs.shape[0] != targets.shape[0]:
        raise LayerleakError(f"inputs hold {inputs.shape[0]} samples but targets {targets.shape[0]}")
    if not budget_mb > 0:
        raise LayerleakError(f"budget_mb must be positive, got {budget_mb}")
    recorder = _Recorder(model, layers, Plan(int(budget_mb * (1 << 20)), compile_wanted(compile), inputs.device.type == "cpu"))
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
            logits_layer = recorder.layer_of(logits) if logits.dim() == 2 else None
            loss = F.cross_entropy(logits.double(), targets, reduction="none")
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
    constant = []
    if logits_layer is not None and recorder.routes[logits_layer].zero_sum_on_logits:
        grad[logits_layer][:, STATS.index("mean")] = 0.0  # rounding noise of an exact zero (schema.constant_columns)
        constant = constant_columns(logits_layer)
    return {"loss": loss.detach().to(torch.float64), "grad": grad, "out": {n: recorder.out[n] for n in layers},
            "constant_columns": constant}


def per_sample_grad_stats(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str] | None = None,
                          budget_mb: float = 256, *, compile: bool | None = None) -> dict[str, Tensor]:
    """``{layer: [B, 7]}``: the seven statistics (``schema.STATS``) of each sample's loss gradient w.r.t. each layer's weight and bias."""
    return per_sample_features(model, inputs, targets, layers, budget_mb, compile=compile)["grad"]


def reference_grad_stats(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str] | None = None,
                         stats: Callable[[Tensor], Tensor] = stats_of) -> dict[str, Tensor]:
    """The plain reference: one sample at a time, autograd gradients of each layer's weight and bias
    (concatenated), reduced by ``stats`` ([1, N] -> [1, 7]); the loss in float64, as in ``per_sample_features``.
    Eval mode; the model is left as it was."""
    layers = list(registered_layers(model) if layers is None else layers)
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
                loss = F.cross_entropy(model(inputs[i:i + 1]).double(), targets[i:i + 1], reduction="sum")
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

def features_to_columns(result: dict, layers: Iterable[str]) -> dict[str, np.ndarray]:
    """float64 numpy columns ``loss``, ``grad.*``, ``out.*`` (``schema.layer_columns`` order) from a
    ``per_sample_features`` result."""
    layers = list(layers)
    cols = {LOSS: result["loss"].detach().cpu().to(torch.float64).numpy()}
    for kind in LAYER_KINDS:
        for layer in layers:
            block = result[kind][layer].detach().cpu().to(torch.float64).numpy()
            for j, stat in enumerate(STATS):
                cols[column(kind, layer, stat)] = np.ascontiguousarray(block[:, j])
    return cols


def features_in_batches(model: nn.Module, inputs: Tensor, targets: Tensor, layers: Sequence[str], batch_size: int,
                        budget_mb: float = 256, prepare: Callable[[Tensor], Tensor] | None = None
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
    """``features_to_columns`` of ``per_sample_features`` over ``inputs`` in batches of ``batch_size``, and the
    columns constant by construction. ``prepare`` maps each input batch to what the model takes (device,
    normalisation); targets follow the prepared batch's device. Rows do not depend on ``batch_size``."""
    columns: dict[str, list[np.ndarray]] = {}
    constant: list[str] = []
    for i in range(0, inputs.shape[0], batch_size):
        xb = inputs[i:i + batch_size]
        xb = prepare(xb) if prepare is not None else xb
        result = per_sample_features(model, xb, targets[i:i + batch_size].to(xb.device), layers, budget_mb=budget_mb)
        constant = result["constant_columns"]
        for k, v in features_to_columns(result, layers).items():
            columns.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in columns.items()}, constant
