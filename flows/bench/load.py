"""Load figure: the default config's sweep with N fitter actors on a local Ray instance; wall time and peak memory.

    python -m flows.bench.load                                   # 8 fitters, chunks of 4 coalitions, OUT=runs/bench-load
    python -m flows.bench.load --fitters 2 --json load-2.json    # the same with 2 fitters, result as JSON too

How it measures: OUT is first brought up to date with ``layerleak extract`` (default config: digits, CNN,
4 layers; reused when present), then OUT/sweep and OUT/shapley.json are removed and
``layerleak sweep --set ray.fit_actors=N --set sweep.chunk_size=C --set ray.num_cpus=N`` runs as a
subprocess with RAY_ADDRESS unset, so it starts its own local Ray instance whose processes are all its
descendants. Every 100 ms the script reads /proc/<pid>/status (every second also /proc/<pid>/smaps_rollup) of the
driver, of every ``ray::Fitter`` process and of Ray's own processes (GCS, raylet, agents). Per process
it reports the kernel's high-water mark VmHWM (exact, not sampled); for the whole it reports the
largest sum of RSS and of PSS seen at one sample (PSS splits shared pages, e.g. torch's libraries and
the attack data mapped from Ray's object store, between the processes that map them; RSS counts them
in each). ``ray.num_cpus=N`` gives the local instance N logical CPUs so all N fitters are placed even
on a 2-core machine (actors hold their CPU for the whole sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from mia_tasks.rundir import SHAPLEY, SWEEP

ROOT = Path(__file__).resolve().parents[2]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _kib(text: str, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Sampler(threading.Thread):
    """Samples the driver and its Ray processes every ``interval`` seconds until stopped."""

    def __init__(self, driver: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.driver, self.interval, self.stop = driver, interval, threading.Event()
        self.hwm: dict[int, tuple[str, int]] = {}  # pid -> (role, VmHWM kB)
        self.peak_rss = self.peak_pss = self.peak_fitters_rss = self.samples = 0
        self.max_fitters = 0

    def role(self, pid: int) -> str:
        """driver, fitter or ray; a worker stays a fitter once seen as one (its title changes as it exits)."""
        if pid == self.driver:
            return "driver"
        if self.hwm.get(pid, ("",))[0] == "fitter":
            return "fitter"
        title = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
        return "fitter" if title.startswith("ray::Fitter") else "ray"

    def run(self) -> None:
        while not self.stop.is_set():
            with_pss = self.samples % 10 == 0  # smaps_rollup walks every mapping: read it on every 10th sample only
            rss = pss = fit_rss = fitters = 0
            for pid in [self.driver, *descendants(self.driver)]:
                status = _read(f"/proc/{pid}/status")
                if not status:
                    continue
                role = self.role(pid)
                r = _kib(status, "VmRSS")
                rss += r
                if with_pss:
                    pss += _kib(_read(f"/proc/{pid}/smaps_rollup"), "Pss")
                if role == "fitter":
                    fit_rss += r
                    fitters += 1
                self.hwm[pid] = (role, max(self.hwm.get(pid, (role, 0))[1], _kib(status, "VmHWM")))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_fitters_rss, self.max_fitters = max(self.peak_fitters_rss, fit_rss), max(self.max_fitters, fitters)
            self.samples += 1
            time.sleep(self.interval)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_AUTH_MODE": "disabled"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--fitters", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=4, help="coalitions per fitter task (default config: 15 coalitions x 10 repeats)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-load"))
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    prep = subprocess.run(_cli("extract", "--out", args.out), cwd=ROOT, env=_env(), capture_output=True, text=True)
    if prep.returncode != 0:
        print(prep.stderr[-3000:], file=sys.stderr)
        return prep.returncode
    shutil.rmtree(Path(args.out) / SWEEP, ignore_errors=True)
    Path(args.out, SHAPLEY).unlink(missing_ok=True)

    cmd = _cli("sweep", "--out", args.out, "--set", f"ray.fit_actors={args.fitters}", "--set", f"sweep.chunk_size={args.chunk_size}",
               "--set", f"ray.num_cpus={args.fitters}")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    log = proc.communicate()[0]
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        print(log[-3000:], file=sys.stderr)
        return proc.returncode
    m = re.search(r"sweep: (\d+) coalition fits in ([\d.]+)s", log)
    fits, sweep_s = (int(m.group(1)), float(m.group(2))) if m else (0, float("nan"))
    fitter_hwm = [kb for role, kb in sampler.hwm.values() if role == "fitter"]
    driver_hwm = max((kb for role, kb in sampler.hwm.values() if role == "driver"), default=0)
    result = {
        "fitters": args.fitters, "chunk_size": args.chunk_size, "fits": fits, "cpus": os.cpu_count(),
        "wall_s": round(wall, 1), "sweep_s": sweep_s, "fits_per_s": round(fits / sweep_s, 1) if sweep_s else None,
        "driver_peak_rss_mib": round(driver_hwm / 1024, 1),
        "fitter_processes": len(fitter_hwm),
        "fitter_peak_rss_mib_max": round(max(fitter_hwm, default=0) / 1024, 1),
        "fitter_peak_rss_mib_mean": round(sum(fitter_hwm) / max(len(fitter_hwm), 1) / 1024, 1),
        "fitters_rss_sum_peak_mib": round(sampler.peak_fitters_rss / 1024, 1),
        "all_rss_sum_peak_mib": round(sampler.peak_rss / 1024, 1),
        "all_pss_sum_peak_mib": round(sampler.peak_pss / 1024, 1),
        "samples": sampler.samples,
        "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    print(f"sweep of the default config: {fits} coalition fits, {args.fitters} fitter actors, chunks of {args.chunk_size}, "
          f"{os.cpu_count()} CPU cores, 1-min load average {result['load_avg_1min'][0]} before, {result['load_avg_1min'][1]} after")
    print(f"  wall time: {result['wall_s']} s for the command (Ray start-up included), {sweep_s} s for the fits "
          f"({result['fits_per_s']} fits/s)")
    print(f"  peak RSS: driver {result['driver_peak_rss_mib']} MiB; each fitter max {result['fitter_peak_rss_mib_max']} MiB, "
          f"mean {result['fitter_peak_rss_mib_mean']} MiB ({len(fitter_hwm)} fitter processes)")
    print(f"  at one instant: fitters {result['fitters_rss_sum_peak_mib']} MiB RSS; driver + fitters + Ray "
          f"{result['all_rss_sum_peak_mib']} MiB RSS, {result['all_pss_sum_peak_mib']} MiB PSS ({sampler.samples} samples)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
