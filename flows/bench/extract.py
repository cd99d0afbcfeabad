"""Benchmark of feature extraction: per-sample gradient statistics, samples/s and peak memory.

    python -m flows.bench.extract [--device cuda] [--quick] [--json] [--threads 1]
    layerleak bench extract ...                      (the same, through the CLI)

On CIFAR AlexNet and ResNet-20 (random weights, random 32x32 inputs, seeded) it times, interleaved in one
run (a, b, c, a, b, c, ...), after one warm-up each:
  (a) reference   ``reference_grad_stats``: one sample at a time, autograd, statistics per layer;
  (b) project     ``per_sample_features``: one batched forward/backward with hooks (grad + out + loss);
  (c) floor       a plain batched forward + backward, no per-sample work at all.
and reports median and spread of samples/s, the per-round ratios b/a and c/b, and peak memory of each
(CUDA: max_memory_allocated; CPU: peak-RSS growth of a fresh spawned child per measurement), plus the
project path's peak at batch 16/64/256 against the bound "plain forward+backward at that batch plus
budget_mb".

The measured table, with the machine and date, is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .common import finish

ARCHS = {"alexnet": ("alexnet", {}), "resnet20": ("resnet", {"depth": 20})}
NUM_CLASSES = 100
BUDGET_MB = 256
MEMORY_BATCHES = (16, 64, 256)
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
TARGETS = {"alexnet": 5.0, "resnet20": 3.0}  # project/reference speed-ups the issue asks for


def _setup(arch: str, batch: int, device: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from mia_tasks.models import build

    name, kw = ARCHS[arch]
    torch.manual_seed(seed)
    model = build(name, NUM_CLASSES, **kw).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    return model, x, y


def _methods(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n_ref: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (a call, samples it processes)."""
    from mia_tasks.gradstats import per_sample_features, reference_grad_stats

    def floor() -> None:
        model.eval()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    return {
        "reference": (lambda: reference_grad_stats(model, x[:n_ref], y[:n_ref]), n_ref),
        "project": (lambda: per_sample_features(model, x, y, budget_mb=BUDGET_MB), x.shape[0]),
        "floor": (floor, x.shape[0]),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _spread(values: list[float]) -> dict[str, float]:
    q1, q3 = np.percentile(values, [25, 75])
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": float(q1), "q3": float(q3),
            "values": [round(v, 3) for v in values]}


def _rss_status(field: str) -> int | None:
    """VmRSS / VmHWM of this process in bytes, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_child(arch: str, method: str, batch: int, device: str, threads: int, n_ref: int) -> int:
    """Peak memory growth (bytes) of one call of ``method``, over what the model and inputs already take."""
    torch.set_num_threads(threads)
    model, x, y = _setup(arch, batch, device)
    call, _ = _methods(model, x, y, n_ref)[method]
    if device.startswith("cuda"):
        call()
        gc.collect()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    # One warm-up call first: the first call pages in library code and fills caches (file-backed RSS that
    # varies run to run). ru_maxrss survives exec (it would hold the parent's peak), so read this process's
    # own high-water mark, reset just before the measured call, where /proc allows.
    call()
    gc.collect()
    base = _rss_status("VmRSS")
    if base is not None and _reset_peak_rss():
        call()
        return int(_rss_status("VmHWM") - base)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()
    return int((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)  # Linux: KiB


def _peak(arch: str, method: str, batch: int, device: str, threads: int, n_ref: int) -> int:
    if device.startswith("cuda"):  # the CUDA allocator counts exactly, in-process
        return _peak_child(arch, method, batch, device, threads, n_ref)
    # A fixed glibc mmap threshold: large blocks go back to the OS when freed, so RSS follows live memory
    # (by default glibc keeps freed blocks and a second call would show no growth at all).
    saved = {k: os.environ.get(k) for k in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            return pool.submit(_peak_child, arch, method, batch, device, threads, n_ref).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bench_model(arch: str, device: str, n: int, batch: int, n_ref: int, threads: int, memory_batches: tuple[int, ...]) -> dict:
    model, x, y = _setup(arch, batch, device)
    methods = _methods(model, x, y, n_ref)
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for call, _ in methods.values():  # warm-up
        call()
    for _ in range(n):
        for name, (call, count) in methods.items():
            _sync(device)
            t = time.perf_counter()
            call()
            _sync(device)
            rates[name].append(count / (time.perf_counter() - t))
    b_over_a = [b / a for a, b in zip(rates["reference"], rates["project"])]
    c_over_b = [c / b for b, c in zip(rates["project"], rates["floor"])]
    del model, x, y, methods
    memory = {name: _peak(arch, name, batch, device, threads, n_ref) for name in ("reference", "project", "floor")}
    by_batch: dict[str, dict[str, int]] = {"project": {}, "floor": {}}
    for b in memory_batches:
        for name in ("project", "floor"):
            by_batch[name][str(b)] = memory[name] if b == batch else _peak(arch, name, b, device, threads, n_ref)
    bound = {b: by_batch["floor"][b] + BUDGET_MB * 2**20 for b in by_batch["floor"]}
    return {
        "samples_per_s": {k: _spread(v) for k, v in rates.items()},
        "ratios": {"project/reference": _spread(b_over_a), "floor/project": _spread(c_over_b)},
        "target_project/reference": TARGETS[arch],
        "target_met": statistics.median(b_over_a) >= TARGETS[arch],
        "peak_bytes": memory,
        "peak_bytes_by_batch": by_batch,
        "bound_bytes_by_batch": bound,
        "within_bound": all(by_batch["project"][b] <= bound[b] for b in bound),
    }


def run(device: str = "cpu", n: int = 5, batch: int = 64, quick: bool = False, threads: int | None = None) -> dict:
    """Time and measure the three methods on AlexNet and ResNet-20; one JSON-able dict with every figure."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        from mia_tasks.errors import LayerleakError

        raise LayerleakError("--device cuda: no CUDA device here; run on a GPU machine or use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    n_ref = 8 if quick else 16
    n = min(n, 3) if quick else n
    memory_batches = (16, batch) if quick else tuple(sorted(set(MEMORY_BATCHES) | {batch}))
    result = {
        "torch": torch.__version__, "device": device, "threads": threads, "n": n, "batch": batch, "reference_samples": n_ref,
        "budget_mb": BUDGET_MB, "quick": quick,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "models": {},
    }
    for arch in ARCHS:
        result["models"][arch] = _bench_model(arch, device, n, batch, n_ref, threads, memory_batches)
    return result


def _mb(b: float) -> str:
    return f"{b / 2**20:.0f}"


def format_table(result: dict) -> str:
    """A plain-text summary of ``run``'s result."""
    lines = [f"extract benchmark: torch {result['torch']}, {result['device_name']}, {result['threads']} thread(s), "
             f"batch {result['batch']}, n={result['n']} interleaved rounds, reference on {result['reference_samples']} samples"]
    for arch, r in result["models"].items():
        lines.append(f"\n{arch}")
        lines.append(f"  {'method':10s} {'samples/s median':>17s} {'[min - max]':>17s} {'peak MB':>8s}")
        for name in ("reference", "project", "floor"):
            s = r["samples_per_s"][name]
            lines.append(f"  {name:10s} {s['median']:17.1f} {'[' + format(s['min'], '.1f') + ' - ' + format(s['max'], '.1f') + ']':>17s} {_mb(r['peak_bytes'][name]):>8s}")
        ba, cb = r["ratios"]["project/reference"], r["ratios"]["floor/project"]
        lines.append(f"  project/reference {ba['median']:.2f}x [{ba['min']:.2f} - {ba['max']:.2f}]  target {r['target_project/reference']:.0f}x: "
                     f"{'met' if r['target_met'] else 'NOT met'}")
        lines.append(f"  floor/project     {cb['median']:.2f}x [{cb['min']:.2f} - {cb['max']:.2f}]")
        pb, fb, bd = r["peak_bytes_by_batch"]["project"], r["peak_bytes_by_batch"]["floor"], r["bound_bytes_by_batch"]
        lines.append("  peak MB by batch: " + ", ".join(f"{b}: project {_mb(pb[b])} / floor {_mb(fb[b])} (bound {_mb(bd[b])})" for b in pb)
                     + f"  -> {'within' if r['within_bound'] else 'OVER'} bound (floor + {result['budget_mb']} MB budget)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerleak bench extract", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k] (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--n", type=int, default=5, help="timed rounds per method (default 5)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the batched paths (default 64)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and samples, batches 16 and --batch only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    return finish(lambda: run(args.device, args.n, args.batch, args.quick, args.threads), args.json, format_table)


if __name__ == "__main__":
    sys.exit(main())
