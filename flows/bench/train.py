"""Benchmark of target training: layerleak's ``train_epochs`` against a plain PyTorch training loop.

    python -m flows.bench.train [--arch cnn] [--images 4096] [--n 5] [--threads 2] [--json] [--quick]
    layerleak bench train ...                        (the same, through the CLI)

Seeded random 3x32x32 uint8 images with 100 classes (throughput does not depend on what the pixels
show), one epoch of SGD (momentum 0.9, weight decay 5e-4, batch 128) per measurement. Variants, run
interleaved in each of ``--n`` rounds so load on the machine hits them alike, after one untimed warm-up epoch each:

  layerleak      mia_tasks.train.train_epochs: uint8 images on the device once, normalised per batch,
                 batches indexed from a seeded permutation
  plain          the textbook loop: a float32 normalised TensorDataset, DataLoader(shuffle=True), the same optimiser
  channels-last  the plain loop with the model and each batch in channels-last memory

Reported: images/s per variant (median, [min-max] over rounds) and each variant's time ratio against
``plain`` (median and [min-max] of the per-round ratios).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .common import finish

CLASSES = 100
BATCH = 128


class _Cfg:
    """The training settings train_epochs reads (one epoch, constant schedule, no augmentation)."""

    epochs, batch_size, lr, momentum, weight_decay, schedule, augment = 1, BATCH, 0.01, 0.9, 5e-4, "constant", False


def _data(n: int, seed: int = 0):
    from mia_tasks.data import ImageData

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return ImageData("bench", x, y, x[:1], y[:1], CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _model(arch: str):
    from mia_tasks.models import build

    return build(arch, CLASSES, 3, input_size=32)


def _layerleak(arch: str, data) -> float:
    from mia_tasks.train import train_epochs

    model = _model(arch)
    t = time.perf_counter()
    for _ in train_epochs(model, data, np.arange(len(data.train_y)), _Cfg, seed=0, device=torch.device("cpu")):
        pass
    return time.perf_counter() - t


def _plain(arch: str, data, channels_last: bool = False) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = _model(arch).to(memory_format=fmt)
    x = data.normalise(data.train_x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, data.train_y), batch_size=BATCH, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=_Cfg.lr, momentum=_Cfg.momentum, weight_decay=_Cfg.weight_decay)
    t = time.perf_counter()
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb.contiguous(memory_format=fmt)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


VARIANTS = {"layerleak": _layerleak, "plain": _plain, "channels-last": lambda arch, data: _plain(arch, data, True)}


def measure(arch: str, images: int, rounds: int) -> dict:
    data = _data(images)
    warm = _data(BATCH * 2, seed=1)
    for fn in VARIANTS.values():  # one untimed epoch each: first-call allocations and kernel selection
        fn(arch, warm)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            times[name].append(VARIANTS[name](arch, data))
    out = {"arch": arch, "images": images, "rounds": rounds, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "variants": {}}
    for name, ts in times.items():
        rate = [images / t for t in ts]
        ratio = [t / p for t, p in zip(ts, times["plain"])]
        out["variants"][name] = {"images_per_s": {"median": statistics.median(rate), "min": min(rate), "max": max(rate)},
                                 "time_vs_plain": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)}}
    return out


def table(res: dict) -> str:
    lines = [f"one epoch of {res['images']} 3x32x32 images, {res['arch']}, batch {BATCH}, {res['threads']} threads, "
             f"n = {res['rounds']} interleaved rounds (median [min-max]):"]
    for name, v in res["variants"].items():
        r, q = v["images_per_s"], v["time_vs_plain"]
        lines.append(f"  {name:14s} {r['median']:8.0f} images/s [{r['min']:.0f}-{r['max']:.0f}]   "
                     f"time / plain {q['median']:.3f} [{q['min']:.3f}-{q['max']:.3f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerleak bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cnn", help="cnn, alexnet or resnet (default cnn)")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--n", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="256 images, 2 rounds (a smoke test)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.images < BATCH or a.n < 1:
        print(f"error: --images must be >= {BATCH} and --n >= 1", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    images, rounds = (256, 2) if a.quick else (a.images, a.n)
    return finish(lambda: measure(a.arch, images, rounds), a.json, table)


if __name__ == "__main__":
    sys.exit(main())
