"""Ray start-up and resources: the same command runs locally and under ``ray job submit``."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

import ray

from mia_tasks.errors import LayerleakError


def init_ray(ray_cfg) -> None:
    """Join RAY_ADDRESS / ray.address if given, else start a local instance bound to loopback only."""
    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        else:
            ray.init(num_cpus=ray_cfg.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                     logging_level="WARNING", configure_logging=True)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        raise LayerleakError(f"cannot connect to {where}: {first}; check RAY_ADDRESS/ray.address (unset it to run locally)") from None


def gpus_available() -> int:
    """GPUs the Ray cluster offers (0 on CPU-only clusters)."""
    return int(ray.cluster_resources().get("GPU", 0))


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Print one line per stage with its wall time."""
    start = time.perf_counter()
    yield
    print(f"[layerleak] {name}: {time.perf_counter() - start:.1f}s", flush=True)
