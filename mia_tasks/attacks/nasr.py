"""Nasr et al. (S&P 2019) white-box membership-inference attack, reimplemented in torch.

The attack model reads, per sample, the target's RAW signals (not summary statistics):
- for each chosen layer, the per-sample gradient of the loss w.r.t. its weight, seen as an
  (out, fan_in) matrix (a conv kernel is flattened to out x in·kh·kw): a Conv2d(1, filters,
  kernel=(1, fan_in)) runs one filter bank along each output unit's row, then FC layers, as in the
  original (which used 1000 filters and wider FC layers; the defaults here are smaller so an
  attack on ~400 samples trains in seconds on a CPU);
- FC components for chosen output activations (default: the target's softmax), the loss and the
  one-hot true label;
- an encoder of FC layers over the concatenated embeddings, ending in one logit (sigmoid = P(member)).
It is trained with Adam and binary cross-entropy on attack-train only; ``score`` returns the logit.

Per-sample gradients come from ``torch.func`` (``vmap(grad(...))``, target in eval mode, loss of one
sample) and are streamed a batch at a time by ``raw_features``; attack-train's raw signals are
cached in memory only when they fit ``cache_mb``, else recomputed every epoch. Each numeric input
is divided by a scalar (its root-mean-square over attack-train) so tiny member gradients are not
lost to the optimiser's scale.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import LayerleakError
from ..models import audited_layers

FINAL_OUTPUTS = ("softmax", "logits")


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def _check_layers(model: nn.Module, layers: Sequence[str], outputs: Sequence[str] = ()) -> None:
    available = audited_layers(model)
    unknown = [l for l in layers if l not in available]
    if unknown:
        raise LayerleakError(f"nasr: unknown gradient layer(s) {unknown}: the model has {available}")
    modules = dict(model.named_modules())
    unknown = [o for o in outputs if o not in FINAL_OUTPUTS and o not in modules]
    if unknown:
        raise LayerleakError(f"nasr: unknown output(s) {unknown}: use {list(FINAL_OUTPUTS)} or a module name, e.g. {available}")


def per_sample_grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """{layer: (B, *weight.shape)} gradients of each sample's cross-entropy loss w.r.t. the layers' weights.

    The model must be in eval mode (BatchNorm on running statistics), so a sample's gradient does
    not depend on the rest of the batch.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    wanted = {l: params[f"{l}.weight"] for l in layers}
    fixed = {n: p for n, p in params.items() if n not in {f"{l}.weight" for l in layers}}
    buffers = dict(model.named_buffers())

    def loss_one(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = {**fixed, **{f"{l}.weight": w for l, w in weights.items()}, **buffers}
        out = functional_call(model, state, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0), reduction="sum")

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(wanted, images, labels)


def raw_features(
    model: nn.Module,
    images: Any,
    labels: Any,
    layers: Sequence[str],
    outputs: Sequence[str] = ("softmax",),
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Stream the raw white-box signals of ``images``, one batch at a time, in the given order.

    Yields dicts: ``grad.<layer>`` (B, out, fan_in) per-sample weight gradients; ``out.<name>``
    (B, d) flattened activations of a module, or of the final ``logits``/``softmax``; ``loss`` (B,)
    per-sample cross-entropy; ``label`` (B,). Runs the model in eval mode (restored afterwards) on
    ``device`` (default: where the model's parameters are).
    """
    layers, outputs = list(layers), list(outputs)
    _check_layers(model, layers, outputs)
    if device is None:
        device = next(model.parameters()).device
    images, labels = _as_tensor(images, torch.float32), _as_tensor(labels, torch.long)
    if len(images) != len(labels):
        raise LayerleakError(f"nasr: {len(images)} images but {len(labels)} labels")
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            y = labels[start:start + batch_size].to(device)
            captured: dict[str, torch.Tensor] = {}
            # Hooks only around the plain forward: they would also fire inside vmap below.
            hooks = [modules[o].register_forward_hook(lambda m, i, out, o=o: captured.__setitem__(o, out.flatten(1)))
                     for o in outputs if o not in FINAL_OUTPUTS]
            try:
                with torch.no_grad():
                    logits = model(x)
            finally:
                for h in hooks:
                    h.remove()
            feats = {f"grad.{l}": g.flatten(2) for l, g in per_sample_grads(model, x, y, layers).items()}
            for o in outputs:
                if o == "logits":
                    feats[f"out.{o}"] = logits.detach()
                elif o == "softmax":
                    feats[f"out.{o}"] = torch.softmax(logits, dim=1)
                else:
                    feats[f"out.{o}"] = captured[o]
            feats["loss"] = F.cross_entropy(logits, y, reduction="none")
            feats["label"] = y
            yield feats
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restored afterwards; None leaves the setting alone."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fc(d_in: int, hidden: int, embed: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, embed), nn.ReLU())


class NasrNet(nn.Module):
    """The attack model: one component per signal, embeddings concatenated, FC encoder to one logit."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, filters: int = 16, hidden: int = 128, embed: int = 64):
        super().__init__()
        self.keys = list(shapes)
        comps = {}
        for key, shape in shapes.items():
            if key.startswith("grad."):
                rows, fan_in = shape
                comps[key] = nn.Sequential(
                    nn.Dropout(0.2),
                    nn.Conv2d(1, filters, kernel_size=(1, fan_in)),
                    nn.ReLU(),
                    nn.Flatten(),
                    _fc(filters * rows, hidden, embed, dropout=0.2),
                )
            elif key == "label":
                comps[key] = _fc(num_classes, hidden, embed)
            else:
                comps[key] = _fc(int(np.prod(shape)), hidden, embed)
        self.components = nn.ModuleDict({k.replace(".", "/"): m for k, m in comps.items()})
        self.num_classes = num_classes
        self.encoder = nn.Sequential(
            nn.Linear(embed * len(comps), 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for key in self.keys:
            x = feats[key]
            if key.startswith("grad."):
                x = x.unsqueeze(1)
            elif key == "label":
                x = F.one_hot(x, self.num_classes).float()
            elif key == "loss":
                x = x.unsqueeze(1)
            parts.append(self.components[key.replace(".", "/")](x))
        return self.encoder(torch.cat(parts, dim=1)).squeeze(1)


class NasrAttack:
    """Train Nasr et al.'s white-box attack model against ``model``.

    ``layers``: layers whose per-sample weight gradients it reads (default: the last audited layer);
    ``outputs``: activations it reads (``softmax``, ``logits`` or module names; default softmax).
    ``fit(images, labels, member)`` / ``score(images, labels)``, or ``fit(train)`` / ``score(data)``
    with ``AttackData`` whose ``inputs`` hold the images. ``threshold_`` = 0 (P(member) = 1/2).
    The target model is copied, never modified. ``num_threads`` sets torch's CPU threads during
    fit/score (restored after): its small ops gain nothing from threads, and on a busy machine
    (more runnable threads than cores) 2 threads ran ~20x slower than 1 here.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device | None = None,
        outputs: Sequence[str] = ("softmax",),
        use_loss: bool = True,
        use_label: bool = True,
        filters: int = 16,
        hidden: int = 128,
        cache_mb: float = 256.0,
        num_threads: int | None = None,
    ):
        if epochs < 1 or batch_size < 1 or not lr > 0:
            raise LayerleakError(f"nasr: epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.target = copy.deepcopy(model).to(self.device).eval()
        self.layers = list(layers) if layers is not None else audited_layers(self.target)[-1:]
        self.outputs = list(outputs)
        _check_layers(self.target, self.layers, self.outputs)
        self.epochs, self.lr, self.batch_size, self.seed = int(epochs), float(lr), int(batch_size), int(seed)
        self.use_loss, self.use_label = use_loss, use_label
        self.filters, self.hidden, self.cache_mb = int(filters), int(hidden), float(cache_mb)
        self.num_threads = num_threads
        self.threshold_ = 0.0

    def _unpack(self, images: Any, labels: Any, member: Any = None, need_member: bool = False) -> tuple:
        if labels is None:
            data = images
            if getattr(data, "inputs", None) is None:
                raise LayerleakError("nasr needs the raw inputs: pass images and labels, or AttackData with inputs set")
            images, labels, member = data.inputs, data.labels, data.y
        images, labels = _as_tensor(images, torch.float32), _as_tensor(labels, torch.long)
        if need_member:
            if member is None:
                raise LayerleakError("nasr: fit needs member labels (1 = member, 0 = non-member)")
            member = _as_tensor(member, torch.float32).to(self.device)
            if len(member) != len(images):
                raise LayerleakError(f"nasr: {len(images)} images but {len(member)} member labels")
        return images, labels, member

    def _stream(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        for feats in raw_features(self.target, images, labels, self.layers, self.outputs, self.batch_size, self.device):
            yield self._prepare(feats)

    def _prepare(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = {k: v for k, v in feats.items() if k.startswith(("grad.", "out."))}
        if self.use_loss:
            keep["loss"] = feats["loss"]
        if self.use_label:
            keep["label"] = feats["label"]
        scales = getattr(self, "scales_", {})
        return {k: (v / scales[k] if k in scales else v) for k, v in keep.items()}

    def fit(self, images: Any, labels: Any = None, member: Any = None) -> "NasrAttack":
        """Train the attack model on attack-train: raw inputs, their labels, member 1/0 (or AttackData)."""
        with _threads(self.num_threads):
            return self._fit(images, labels, member)

    def _fit(self, images: Any, labels: Any, member: Any) -> "NasrAttack":
        images, labels, member = self._unpack(images, labels, member, need_member=True)
        if len(torch.unique(member)) < 2:
            raise LayerleakError("nasr: attack-train needs both members and non-members")
        n = len(images)
        probe = list(raw_features(self.target, images[:1], labels[:1], self.layers, self.outputs, 1, self.device))[0]
        with torch.no_grad():
            self.num_classes_ = int(self.target(images[:1].to(self.device)).shape[1])
        self.__dict__.pop("scales_", None)
        shapes = {k: tuple(v.shape[1:]) for k, v in self._prepare(probe).items()}
        bytes_needed = n * sum(4 * int(np.prod(s)) for s in shapes.values())

        # One pass over attack-train: the per-signal scales (and the cache, if it fits).
        cache: dict[str, list[torch.Tensor]] | None = {k: [] for k in shapes} if bytes_needed <= self.cache_mb * 2**20 else None
        sq = {k: 0.0 for k in shapes if k != "label"}
        for feats in self._stream(images, labels):
            for k in sq:
                sq[k] += float(feats[k].double().pow(2).sum())
            if cache is not None:
                for k, v in feats.items():
                    cache[k].append(v)
        self.scales_ = {k: (float(np.sqrt(s / (n * max(1, int(np.prod(shapes[k])))))) or 1.0) for k, s in sq.items()}
        cached = None if cache is None else {k: (torch.cat(v) / self.scales_[k] if k in self.scales_ else torch.cat(v)) for k, v in cache.items()}
        self.cached_ = cached is not None

        gen = torch.Generator().manual_seed(self.seed)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            self.net_ = NasrNet(shapes, self.num_classes_, self.filters, self.hidden).to(self.device)
            opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
            self.net_.train()
            self.history_ = []
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=gen)
                total = 0.0
                if cached is not None:
                    batches = (({k: v[idx] for k, v in cached.items()}, idx) for idx in perm.to(self.device).split(self.batch_size))
                else:
                    batches = zip(self._stream(images[perm], labels[perm]), perm.to(self.device).split(self.batch_size))
                for feats, idx in batches:
                    loss = F.binary_cross_entropy_with_logits(self.net_(feats), member[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                self.history_.append(total / n)
        self.net_.eval()
        return self

    def score(self, images: Any, labels: Any = None) -> np.ndarray:
        """Membership logits (higher = more likely a member)."""
        if not hasattr(self, "net_"):
            raise LayerleakError("nasr: call fit before score")
        images, labels, _ = self._unpack(images, labels)
        out = []
        with _threads(self.num_threads), torch.no_grad():
            for feats in self._stream(images, labels):
                out.append(self.net_(feats).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)
