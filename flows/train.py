"""Stages 1-2: membership splits and the target model (trained in a Ray task, on a GPU when one exists), and
the population's other models (several targets, references: mia_tasks.population) in parallel tasks.

    layerleak train --out runs/default
    layerleak train --out runs/refs --set references.count=16

Model k >= 1 is a unit OUT/models/<k>/ of the target's layout: its task writes target/model.pt, then
target/metrics.json, and the unit is reused only when both are there, current and loadable, so a
killed run retrains only the models it had not finished. One task per GPU where there are GPUs, else
one CPU each (training keeps one thread: its results depend on it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray
import torch
from tqdm import tqdm

from mia_tasks.config import Config
from mia_tasks.population import Population, model_config, model_hashes
from mia_tasks.data import ImageData, load_dataset
from mia_tasks.rundir import MEMBERS, SPLITS, TARGET_METRICS, RunDir, is_current, model_run, stamp
from mia_tasks.splits import Splits, make_splits
from mia_tasks.target import build_target, load_target, save_target, saved_state
from mia_tasks.uncertainty.lowfpr import clopper_pearson
from mia_tasks.train import correct_batches, for_inference, train_epochs

from .population import run_population
from .progress import interactive, progress
from .runtime import held_device, init_ray, remote_errors, stage, stage_gpus


def run_splits(cfg: Config, rd: RunDir, hashes: dict, data: ImageData) -> Splits:
    """Draw (or reuse) OUT/splits.parquet and the target's member list."""
    if is_current(rd.read_derived(SPLITS, rd.parquet_metadata), "splits", hashes):  # a damaged file is made again
        members, table = rd.read_derived(MEMBERS, rd.read_parquet), rd.read_derived(SPLITS, rd.read_parquet)
        if members is not None and table is not None:
            return Splits(members.column("sample_id").to_numpy(), table)
    splits = make_splits(data.train_y.numpy(), data.test_y.numpy(), cfg.split, cfg.seed, pretrained=bool(cfg.model.checkpoint))
    meta = {**stamp("splits", hashes), "n_train": data.n_train}
    rd.write_parquet(MEMBERS, pa.table({"sample_id": pa.array(splits.target_members, pa.int64())}), meta)
    rd.write_parquet(SPLITS, splits.table, meta)
    return splits


def train_events(cfg: Config, rd: RunDir, member_ids: np.ndarray, state: dict | None, gpu: bool) -> Iterator[dict]:
    """Train and save the target (``state`` None) or load a pretrained ``state``, then measure its accuracy on
    the members and the test split, batched in inference mode.

    A Ray generator: it yields progress events and last its metrics, so the driver prints every progress line
    itself, in order, before the stage's summary (a task's own prints reach the driver asynchronously, after it).
    """
    data = load_dataset(cfg.dataset)
    model = build_target(cfg, data)
    device = torch.device(held_device(gpu))
    start = time.perf_counter()
    if state is None:
        for done, loss in train_epochs(model, data, member_ids, cfg.train, cfg.seed, device):
            yield {"phase": "train target", "done": done, "total": cfg.train.epochs, "loss": loss}
        save_target(model, rd)
    else:
        model.load_state_dict(state)
        model.to(device)
    trained = time.perf_counter()
    train_ids, test_ids = accuracy_sample(member_ids, len(data.test_y), cfg.train.accuracy_samples, cfg.seed)
    x, y = data.images(train_ids)
    test_x, test_y = data.test_x[test_ids], data.test_y[test_ids]
    fast, fmt = for_inference(model, data.normalise(data.test_x[:8].to(device)))
    total, done, acc = len(y) + len(test_y), 0, {}
    for key, xs, ys in (("train_accuracy", x, y), ("test_accuracy", test_x, test_y)):
        hits = 0
        for n, correct in correct_batches(fast, data, xs, ys, device, memory_format=fmt):
            done, hits = done + n, hits + correct
            yield {"phase": "measure target", "done": done, "total": total}
        acc[key] = hits / max(1, len(ys))
        acc[f"{key}_ci95"] = list(clopper_pearson(hits, len(ys)))  # exact binomial, over the images measured
        acc[f"{key}_n"] = len(ys)
    yield {"metrics": {**acc, "members": len(member_ids), "test_size": len(data.test_y),
                       "epochs": 0 if state is not None else cfg.train.epochs,
                       "device": str(device), "wall_s": round(trained - start, 2),
                       "measure_s": round(time.perf_counter() - trained, 2)}}


def accuracy_sample(member_ids: np.ndarray, n_test: int, cap: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The members and test images whose predictions measure the target's accuracy: all of them, or a seeded
    sample of ``cap`` of each (``train.accuracy_samples``). A pretrained CIFAR model has 60,000 images; 2,000 +
    2,000 give each accuracy to about ±0.022 (95%, exact binomial, stated next to it) at a fifteenth of the cost."""
    rng = np.random.default_rng([seed, 0xACC])
    train = member_ids if cap is None or len(member_ids) <= cap else np.sort(rng.choice(member_ids, cap, replace=False))
    test = np.arange(n_test) if cap is None or n_test <= cap else np.sort(rng.choice(n_test, cap, replace=False))
    return np.asarray(train), test


_target_task = ray.remote(train_events)


def _items(events: ray.ObjectRefGenerator) -> Iterator[dict]:
    """A Ray generator's items as they come, waited for in short steps: a blocking wait for the next item runs
    in Ray's C++ code, where Ctrl-C is not seen until the item arrives (minutes for a slow batch)."""
    while True:
        ready, _ = ray.wait([events], timeout=0.5)
        if ready:
            try:
                ref = next(events)
            except StopIteration:
                return
            yield ray.get(ref)


def _follow(events: ray.ObjectRefGenerator) -> dict:
    """Show a ``_target_task``'s progress as it comes (a bar per phase on a terminal, a line per tenth of each
    phase in a log) and return its metrics."""
    bar, phase, last = None, None, 0
    try:
        for event in _items(events):
            if "metrics" in event:
                return event["metrics"]
            done, total = event["done"], event["total"]
            if event["phase"] != phase:
                if bar is not None:
                    bar.close()
                phase, last, start, every = event["phase"], 0, time.perf_counter(), max(1, total // 10)
                unit = "epoch" if "loss" in event else "image"
                bar = tqdm(total=total, desc=phase, unit=unit) if interactive() else None
            if bar is not None:
                bar.update(done - bar.n)
                if "loss" in event:
                    bar.set_postfix(loss=f"{event['loss']:.3f}")
            elif done // every > last // every or done == total:
                what = (f"epoch {done}/{total}, loss {event['loss']:.3f}" if "loss" in event else
                        f"{done}/{total} images, {time.perf_counter() - start:.0f}s")
                print(f"[layerleak] {phase}: {what}", flush=True)
            last = done
    finally:
        if bar is not None:
            bar.close()
    raise RuntimeError("the target task ended without its metrics")


def _measure_cpus(gpu: int) -> int:
    """CPUs for measuring a pretrained target: one beside a GPU, else a whole node's (Ray gives a task as many
    threads as CPUs, and nothing else runs during this stage)."""
    if gpu:
        return 1
    return max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]] + [1])


def run_target(cfg: Config, rd: RunDir, hashes: dict, data: ImageData, splits: Splits) -> dict:
    """Train the target (or measure a pretrained one) in a Ray task, on a GPU where the cluster has one;
    OUT/target/metrics.json; skipped when already made."""
    metrics = rd.read_derived(TARGET_METRICS, rd.read_json)  # None when missing or damaged: the target is made again
    if is_current(metrics, "target", hashes) and (cfg.model.checkpoint or saved_state(rd) is not None):
        print(f"[layerleak] target: reusing {rd.uri}/target (train acc {metrics['train_accuracy']:.3f}, test acc {metrics['test_accuracy']:.3f})")
        return metrics
    # a pretrained checkpoint is read here, so a file that does not fit fails before any Ray work
    state = load_target(cfg, rd, data).state_dict() if cfg.model.checkpoint else None
    init_ray(cfg.ray)
    gpu = 1 if stage_gpus("train.device", cfg.train.device) else 0
    # training keeps one CPU (its results depend on the thread count); measuring takes what is free
    cpus = _measure_cpus(gpu) if state is not None else 1
    task = _target_task.options(num_gpus=gpu, num_cpus=cpus, max_retries=cfg.ray.max_retries)
    with remote_errors():
        metrics = _follow(task.remote(cfg, rd, splits.target_members, state, bool(gpu)))
    if state is not None:
        metrics["checkpoint"] = cfg.model.checkpoint
    metrics.update(**stamp("target", hashes), dataset=cfg.dataset.name, arch=cfg.model.arch,
                   overfit_gap=round(metrics["train_accuracy"] - metrics["test_accuracy"], 4))
    rd.write_json(TARGET_METRICS, metrics)
    how = f"pretrained, {cfg.model.checkpoint}" if state is not None else f"{metrics['epochs']} epochs in {metrics['wall_s']}s"
    print(f"[layerleak] target: train acc {metrics['train_accuracy']:.3f}, test acc {metrics['test_accuracy']:.3f} "
          f"({metrics['members']} members, {how}; accuracy of {metrics['train_accuracy_n']} + {metrics['test_accuracy_n']} "
          f"images in {metrics['measure_s']}s on {metrics['device']})", flush=True)
    return metrics


def _model_task(cfg: Config, rd: RunDir, member_ids: np.ndarray, gpu: bool, hashes: dict, k: int) -> dict:
    """Train model k, save its checkpoint, measure it and write its metrics.json (last: the unit is whole)."""
    metrics = None
    for event in train_events(cfg, rd, member_ids, None, gpu):
        metrics = event.get("metrics", metrics)
    metrics.update(**stamp("target", hashes), model=k, seed=cfg.seed,
                   overfit_gap=round(metrics["train_accuracy"] - metrics["test_accuracy"], 4))
    rd.write_json(TARGET_METRICS, metrics)
    return metrics


def _finished(cfg: Config, rd: RunDir, hashes: dict, k: int) -> dict | None:
    """Model k's metrics when its unit is whole and current (metrics and a loadable checkpoint), else None."""
    unit = model_run(rd, k)
    metrics = unit.read_derived(TARGET_METRICS, unit.read_json)
    if is_current(metrics, "target", model_hashes(hashes, k)) and saved_state(unit) is not None:
        return metrics
    return None


def start_models(cfg: Config, rd: RunDir, hashes: dict, population: Population | None) -> dict[int, ray.ObjectRef]:
    """Submit a training task for every model k >= 1 not finished yet (they run while the target trains)."""
    if population is None:
        return {}
    todo = [k for k in range(1, population.size) if _finished(cfg, rd, hashes, k) is None]
    reused = population.size - 1 - len(todo)
    if reused:
        print(f"[layerleak] models: reusing {reused} finished model(s) in {rd.uri}/models", flush=True)
    if not todo:
        return {}
    init_ray(cfg.ray)
    gpu = 1 if stage_gpus("train.device", cfg.train.device) else 0
    task = ray.remote(_model_task).options(num_gpus=gpu, num_cpus=1, max_retries=cfg.ray.max_retries, name="model_task")
    return {k: task.remote(model_config(cfg, k), model_run(rd, k), population.members(k), bool(gpu), model_hashes(hashes, k), k)
            for k in todo}


def finish_models(refs: dict[int, ray.ObjectRef], since: float) -> list[dict]:
    """Wait for the training tasks submitted at ``since`` (in short steps, so Ctrl-C is seen), a bar over models;
    their metrics."""
    if not refs:
        return []
    pending, done = list(refs.values()), []
    with progress(len(pending), "train models", "model") as bar, remote_errors():
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                done.append(ray.get(ref))
                bar.update(1)
    accs = [m["test_accuracy"] for m in done]
    print(f"[layerleak] models: {len(done)} trained in {time.perf_counter() - since:.1f}s since submitted "
          f"(test acc {min(accs):.3f}-{max(accs):.3f})", flush=True)
    return done


def train_flow(cfg: Config, rd: RunDir, hashes: dict) -> tuple[ImageData, Splits, dict]:
    """Splits, the population's halves (several targets, references), the target and the population's other
    models: their tasks are submitted first, so they train in parallel with the target."""
    with stage("splits"):
        data = load_dataset(cfg.dataset)
        splits = run_splits(cfg, rd, hashes, data)
        population = run_population(cfg, rd, hashes, splits)
    submitted = time.perf_counter()
    models = start_models(cfg, rd, hashes, population)
    with stage("target"):
        metrics = run_target(cfg, rd, hashes, data, splits)
    if population is not None:
        with stage("models"):
            finish_models(models, submitted)
    return data, splits, metrics
