"""Ray start-up and resources: the same command runs locally and under ``ray job submit``."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import ray

from mia_tasks.errors import LayerleakError, one_line

from .signals import Terminated, handle_sigterm


def init_ray(ray_cfg) -> None:
    """Join RAY_ADDRESS / ray.address if given, else start a local instance bound to loopback only."""
    if ray.is_initialized():
        return
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # worker log lines in a file: no terminal colour codes
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            _check_reachable(address)
            _send_token_if_available()
            host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
            # A head on loopback listens on 127.0.0.1 only: join it the same way (Ray would dial the routable IP).
            with _loopback_only() if host in ("127.0.0.1", "localhost", "::1") else nullcontext():
                ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        else:
            # address="local": always a new instance; with None, ray.init would join whatever cluster
            # `ray start` last recorded on this machine (/tmp/ray/ray_current_cluster), maybe another user's.
            _token_auth_for_local_instance()
            with _loopback_only():
                ray.init(address="local", num_cpus=ray_cfg.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                         logging_level="WARNING", configure_logging=True)
    except SystemExit as e:
        if e.code == signal.SIGTERM:  # SIGTERM while ray.init ran: Ray's own handler exits with the signal number
            raise Terminated from None
        raise
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        raise LayerleakError(f"cannot connect to {where}: {one_line(e)}; check RAY_ADDRESS/ray.address (unset it to run locally)") from None
    handle_sigterm()  # ray.init replaced our SIGTERM handler with one that dumps a C++ stack


def _token_auth_for_local_instance() -> None:
    """Token authentication on for our own instance, as Ray 2.60 has it by default (the token is made in
    ~/.ray/auth_token on first use), but said explicitly: left unset, Ray logs a warning on every start
    that invites the user to turn it off. RAY_AUTH_MODE set by the user is kept."""
    if not os.environ.get("RAY_AUTH_MODE"):
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


def _send_token_if_available() -> None:
    """Join with token authentication when a token is at hand and RAY_AUTH_MODE is unset.

    Ray 2.60 turns token authentication on for a cluster it starts (a new local instance makes
    ~/.ray/auth_token on first use), but a driver joining an existing cluster sends no token unless
    RAY_AUTH_MODE=token. A token sent to a cluster without authentication is ignored, so sending it
    whenever one exists lets the same command join either kind without the user setting a variable.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")  # this process's Ray config reads the mode once; refresh it as Ray itself does


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a new local instance use 127.0.0.1 as its node address, so its servers listen on loopback only.

    On Linux Ray replaces 127.0.0.1 by the machine's routable IP and its gRPC servers listen on every
    interface; the switch Ray keeps for single-machine platforms (macOS, Windows) keeps them on
    loopback. It is read by this process (already imported) and by the processes ray.init starts.
    """
    from ray._private import ray_constants

    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    old_env, old_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a host:port address (ray.init retries for long)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise LayerleakError(f"RAY_ADDRESS/ray.address {address!r} is not host:port (or ray://host:port)")
    host = host.strip("[]")
    hosts = [host]
    if host in ("127.0.0.1", "localhost", "::1"):
        hosts.append(ray.util.get_node_ip_address())  # ray.init connects there instead of loopback
    for h in hosts:
        try:
            with socket.create_connection((h, int(port)), timeout=timeout):
                return
        except OSError:
            continue
    raise LayerleakError(f"no Ray cluster answers at {address} (RAY_ADDRESS/ray.address): start one with "
                         f"'ray start --head', fix the address, or unset it to run locally")


@contextmanager
def remote_errors() -> Iterator[None]:
    """Let an error raised inside a Ray task or actor reach the CLI as one line, never as a remote traceback.

    A LayerleakError keeps its message; any other exception (a user's model code, a library) becomes
    "<task> failed: <type>: <message>"; a worker that died says so.
    """
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"  # sibling tasks fail the same way; Ray would print each at exit
        cause = e.cause
        if isinstance(cause, LayerleakError):
            raise LayerleakError(str(cause)) from None
        if isinstance(cause, ray.exceptions.RayError) and not isinstance(cause, ray.exceptions.RayTaskError):
            raise LayerleakError(f"{_task_name(e)} failed: {one_line(cause)}") from None
        raise LayerleakError(f"{_task_name(e)} failed: {type(cause).__name__}: {one_line(cause)}") from None
    except ray.exceptions.RayError as e:  # an actor or worker that died (out of memory, killed), a lost object
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        raise LayerleakError(f"a Ray worker failed: {type(e).__name__}: {one_line(e)}") from None


def _task_name(e: ray.exceptions.RayTaskError) -> str:
    """'Ray task _target_task' / 'Ray actor Extractor.__call__', read from the error's 'ray::NAME()' title (the
    error Ray raises is a copy that keeps no function name)."""
    title = re.search(r"ray::([\w.]+)\(", one_line(str(e).split("\n", 1)[0]))
    name = title.group(1) if title else "task"
    return f"Ray {'actor' if '.' in name else 'task'} {name}"


def gpus_available() -> int:
    """GPUs the Ray cluster offers (0 on CPU-only clusters)."""
    return int(ray.cluster_resources().get("GPU", 0))


def stage_gpus(setting: str, device: str) -> int:
    """GPUs a stage's actors take: none for ``device`` cpu, else the cluster's. An actor computes on CUDA only
    when it holds a GPU (Ray does not hide the devices from actors that asked for none), so 'cuda' on a
    cluster without GPUs is an error rather than a silent CPU run."""
    if device == "cpu":
        return 0
    gpus = gpus_available()
    if device == "cuda" and not gpus:
        raise LayerleakError(f"{setting}=cuda but the Ray cluster offers no GPU; use {setting}=auto or cpu")
    return gpus


def held_device(gpu: bool) -> str:
    """Where a task or actor computes: CUDA only when it holds a GPU resource, and the CPU where that
    node's CUDA does not work (results record their device)."""
    from mia_tasks.train import resolve_device

    return str(resolve_device("cuda" if gpu else "cpu", fallback=True))


def placeable(n: int, what: str, key: str) -> int:
    """At most as many one-CPU actors as the cluster has CPUs: ActorPool would wait forever on one never placed.

    A cluster with no CPUs yet (an autoscaler still adding workers) is left alone.
    """
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if 0 < cpus < n:
        print(f"[layerleak] {what}: {key}={n} but the cluster has {cpus} CPUs; starting {cpus} actors "
              f"(a local instance takes more with --set ray.num_cpus={n})")
        return cpus
    return n


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Print one line per stage with its wall time."""
    start = time.perf_counter()
    yield
    print(f"[layerleak] {name}: {time.perf_counter() - start:.1f}s", flush=True)
