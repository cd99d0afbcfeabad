"""The one way a stage runs work on Ray actors: create a pool, map jobs with a progress bar, always kill.

    with actor_pool(Extractor, (cfg, rd.uri, ...), n, gpu=False, max_retries=cfg.ray.max_retries) as pool:
        records = pool.map(lambda a, job: a.__call__.remote(*job), jobs, "extract", "sample", size=lambda r: r["rows"])

Every actor takes one CPU (and one GPU when ``gpu``), is restarted and its calls retried
``ray.max_retries`` times, and is killed when the block ends, also on an error or Ctrl-C, so no actor
outlives its stage. A LayerleakError raised inside an actor reaches the CLI as one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ray
from ray.util import ActorPool

from mia_tasks.config import Config
from mia_tasks.rundir import RunDir

from .progress import progress
from .runtime import placeable, remote_errors

if TYPE_CHECKING:  # torch loads only in the workers that score samples
    from torch import nn

    from mia_tasks.data import ImageData


def pool_size(n_jobs: int, gpus: int, cpu_actors: int, what: str, key: str) -> int:
    """Actors for ``n_jobs`` jobs: one per GPU where the stage takes GPUs, else ``cpu_actors`` (config ``key``)
    but no more than the cluster's CPUs; never more than there are jobs."""
    return max(1, min(n_jobs, gpus if gpus else placeable(cpu_actors, what, key)))


class Pool:
    """Live actors of one class; ``map`` feeds them jobs, a new one to each actor as it finishes its last."""

    def __init__(self, actors: list, gpu: bool):
        self.actors, self.gpu = actors, gpu

    def map(self, submit: Callable[[Any, Any], Any], jobs: Sequence, what: str, unit: str,
            size: Callable[[Any], int] = lambda result: 1, total: int | None = None, ordered: bool = False) -> list:
        """Results of ``submit(actor, job)`` for every job (in job order when ``ordered``, else as they finish);
        the bar counts ``size(result)`` per result up to ``total`` (default: the number of jobs)."""
        desc = f"{what} ({len(self.actors)} {'GPU' if self.gpu else 'CPU'} actors)"
        pool = ActorPool(self.actors)
        results = []
        with progress(len(jobs) if total is None else total, desc, unit) as bar, remote_errors():
            for result in (pool.map if ordered else pool.map_unordered)(submit, list(jobs)):
                results.append(result)
                bar.update(size(result))
        return results


@contextmanager
def actor_pool(cls: type, args: tuple, n: int, *, gpu: bool, max_retries: int) -> Iterator[Pool]:
    """``n`` actors ``cls(*args)`` (one CPU each, plus one GPU each when ``gpu``), killed when the block ends."""
    remote_cls = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=max_retries,
                            max_task_retries=max_retries)(cls)
    actors = []
    try:
        actors.extend(remote_cls.remote(*args) for _ in range(n))
        yield Pool(actors, gpu)
    finally:
        for a in actors:
            ray.kill(a)


def load_data_and_target(cfg: Config, out: str | RunDir, device: str | None = None) -> tuple[ImageData, nn.Module]:
    """(dataset, target model in eval mode) for a worker that scores samples: loaded once, in its constructor
    or task, and moved to ``device`` when given (the Nasr attack copies the model to its device itself)."""
    from mia_tasks.data import load_dataset
    from mia_tasks.target import load_target

    data = load_dataset(cfg.dataset)
    model = load_target(cfg, RunDir(out), data)
    return data, model if device is None else model.to(device)
