"""Stages 1-2: membership splits and the target model (trained in a Ray task, on a GPU when one exists).

    layerleak train --out runs/default
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import ray

from mia_tasks.config import Config
from mia_tasks.data import ImageData, load_dataset
from mia_tasks.rundir import MEMBERS, SPLITS, TARGET_METRICS, RunDir, is_current, stamp
from mia_tasks.splits import Splits, make_splits
from mia_tasks.target import build_target, load_target, save_target, saved_state
from mia_tasks.train import accuracy, resolve_device, train_target

from .progress import interactive
from .runtime import init_ray, remote_errors, stage, stage_gpus


def run_splits(cfg: Config, rd: RunDir, hashes: dict, data: ImageData) -> Splits:
    """Draw (or reuse) OUT/splits.parquet and the target's member list."""
    if is_current(rd.read_derived(SPLITS, rd.parquet_metadata), "splits", hashes):  # a damaged file is made again
        members, table = rd.read_derived(MEMBERS, rd.read_parquet), rd.read_derived(SPLITS, rd.read_parquet)
        if members is not None and table is not None:
            return Splits(members.column("sample_id").to_numpy(), table)
    splits = make_splits(data.train_y.numpy(), data.test_y.numpy(), cfg.split, cfg.seed, pretrained=bool(cfg.model.checkpoint))
    meta = {**stamp("splits", hashes), "n_train": data.n_train, "repeats": cfg.split.repeats}
    rd.write_parquet(MEMBERS, pa.table({"sample_id": pa.array(splits.target_members, pa.int64())}), meta)
    rd.write_parquet(SPLITS, splits.table, meta)
    return splits


@ray.remote
def _train_task(cfg: Config, out: str, member_ids: np.ndarray, bar: bool) -> dict:
    """Train and save the target; progress as a bar on the driver's terminal (``bar``), else a line per
    tenth of the epochs (a bar would make one endless line in a log)."""
    rd = RunDir(out)
    data = load_dataset(cfg.dataset)
    model = build_target(cfg, data)
    epochs = cfg.train.epochs
    if bar:
        from ray.experimental.tqdm_ray import tqdm

        tq = tqdm(total=epochs, desc="train target")

        def progress(done: int, loss: float) -> None:
            tq.update(1)
            tq.set_description(f"train target (loss {loss:.3f})")
    else:
        every = max(1, epochs // 10)

        def progress(done: int, loss: float) -> None:
            if done % every == 0 or done == epochs:
                print(f"[layerleak] train target: epoch {done}/{epochs}, loss {loss:.3f}", flush=True)

    metrics = train_target(model, data, member_ids, cfg.train, cfg.seed, progress)
    if bar:
        tq.close()
    save_target(model, rd)
    return metrics


def run_target(cfg: Config, rd: RunDir, hashes: dict, data: ImageData, splits: Splits) -> dict:
    """Train the target (or measure a pretrained one); OUT/target/metrics.json; skipped when already made."""
    metrics = rd.read_derived(TARGET_METRICS, rd.read_json)  # None when missing or damaged: the target is made again
    if is_current(metrics, "target", hashes) and (cfg.model.checkpoint or saved_state(rd) is not None):
        print(f"[layerleak] target: reusing {rd.uri}/target (train acc {metrics['train_accuracy']:.3f}, test acc {metrics['test_accuracy']:.3f})")
        return metrics
    if cfg.model.checkpoint:
        model = load_target(cfg, rd, data)
        device = resolve_device(cfg.train.device)
        model.to(device)
        x, y = data.images(splits.target_members)
        metrics = {"train_accuracy": accuracy(model, data, x, y, device),
                   "test_accuracy": accuracy(model, data, data.test_x, data.test_y, device),
                   "members": int(len(y)), "test_size": int(len(data.test_y)), "epochs": 0,
                   "checkpoint": cfg.model.checkpoint, "device": str(device), "wall_s": 0.0}
    else:
        init_ray(cfg.ray)
        gpu = 1 if stage_gpus("train.device", cfg.train.device) else 0
        # the task trains on CUDA only when it holds the GPU (train.device is not part of the target's hash)
        task_cfg = replace(cfg, train=replace(cfg.train, device="cuda" if gpu else "cpu"))
        with remote_errors():
            task = _train_task.options(num_gpus=gpu, max_retries=cfg.ray.max_retries)
            metrics = ray.get(task.remote(task_cfg, rd, splits.target_members, interactive()))
    metrics.update(**stamp("target", hashes), dataset=cfg.dataset.name, arch=cfg.model.arch,
                   overfit_gap=round(metrics["train_accuracy"] - metrics["test_accuracy"], 4))
    rd.write_json(TARGET_METRICS, metrics)
    print(f"[layerleak] target: train acc {metrics['train_accuracy']:.3f}, test acc {metrics['test_accuracy']:.3f} "
          f"({metrics['members']} members, {metrics['epochs']} epochs, {metrics['wall_s']}s)")
    return metrics


def train_flow(cfg: Config, rd: RunDir, hashes: dict) -> tuple[ImageData, Splits, dict]:
    with stage("splits"):
        data = load_dataset(cfg.dataset)
        splits = run_splits(cfg, rd, hashes, data)
    with stage("target"):
        metrics = run_target(cfg, rd, hashes, data, splits)
    return data, splits, metrics
