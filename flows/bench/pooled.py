"""Calibration of the pooled metrics over several targets: does the two-way bootstrap's 95% interval cover the truth?

    layerleak bench pooled [--json] [--audits 200] [--quick]
    python -m flows.bench.pooled ...                           (the same)

Simulated populations (seeded), shaped like a targets-for-free audit: T targets score the same n samples,
each target with its own random half as members. A sample has a difficulty shared by every target
(d_i ~ N(0, 1)); target t's attack separates members by its own strength s_t ~ N(mu, 0.3 mu); a score is
d_i + s_t · member + N(0, 1) noise. Two attacks per audit, ``strong`` (mu = 1.5) and ``weak`` (mu = 0.5),
on the same samples and targets, so their difference is paired as in an audit.

The truth: what the pooled metrics estimate, the AUC and TPR at 1% FPR of one ROC over new targets and new
samples from the same distribution, computed once from ``TRUTH_TARGETS`` x ``TRUTH_SAMPLES`` fresh draws.
Each audit computes mia_tasks.uncertainty.pooled_metrics (B replicates) and checks whether each 95%
interval holds the truth. Reported: coverage of AUC, TPR at 1% FPR and the paired AUC and TPR differences,
each with its n (audits) and an exact binomial 95% interval; the two-way bootstrap is expected to be a
little conservative (coverage at or above 0.95), never well below.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import finish

TARGETS = 17
SAMPLES = 600
STRENGTHS = {"strong": 1.5, "weak": 0.5}
TARGET_SPREAD = 0.3  # sd of a target's strength, relative to its mean
REPLICATES = 500
TRUTH_TARGETS = 400
TRUTH_SAMPLES = 20_000
TARGET_COVERAGE = (0.92, 0.99)
METRICS = ("auc", "tpr@1%")


def simulate(rng: np.random.Generator, targets: int, samples: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores {attack: [T, n]} and membership [T, n] of one population (see the module's docstring)."""
    member = np.zeros((targets, samples), bool)
    for t in range(targets):
        member[t, rng.choice(samples, samples // 2, replace=False)] = True
    difficulty = rng.normal(size=samples)
    scores = {}
    for name, mu in STRENGTHS.items():
        strength = rng.normal(mu, TARGET_SPREAD * mu, size=(targets, 1))
        scores[name] = difficulty[None, :] + strength * member + rng.normal(size=(targets, samples))
    return scores, member


def truth(seed: int, targets: int = TRUTH_TARGETS, samples: int = TRUTH_SAMPLES) -> dict[str, dict[str, float]]:
    """The population values of each attack's pooled AUC and TPR at 1% FPR, and the differences strong - weak."""
    from mia_tasks.metrics import auc, tpr_at_fpr

    rng = np.random.default_rng([seed, 1])
    values: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in STRENGTHS}
    for _ in range(4):  # in blocks, so memory stays small; the block means average to the population value
        scores, member = simulate(rng, targets // 4, samples)
        for name, s in scores.items():
            values[name]["auc"].append(auc(member.ravel(), s.ravel()))
            values[name]["tpr@1%"].append(tpr_at_fpr(member.ravel(), s.ravel(), 0.01))
    out = {name: {m: float(np.mean(v)) for m, v in vals.items()} for name, vals in values.items()}
    out["strong - weak"] = {m: out["strong"][m] - out["weak"][m] for m in METRICS}
    return out


def run_pooled(audits: int = 200, seed: int = 0, replicates: int = REPLICATES, targets: int = TARGETS,
               samples: int = SAMPLES, truth_size: tuple[int, int] = (TRUTH_TARGETS, TRUTH_SAMPLES)) -> dict:
    """Coverage of every pooled interval over ``audits`` simulated audits (the truth from ``truth_size`` =
    (targets, samples) fresh draws)."""
    from mia_tasks.uncertainty.pooled import pooled_metrics

    from .calibration import _rate

    true = truth(seed, *truth_size)
    rng = np.random.default_rng([seed, 2])
    hits = {f"{a} {m}": 0 for a in true for m in METRICS}
    widths: dict[str, list[float]] = {k: [] for k in hits}
    for i in range(audits):
        scores, member = simulate(rng, targets, samples)
        res = pooled_metrics(scores, member, replicates=replicates, seed=seed + i, baseline="weak")
        entries = {**res["attacks"], "strong - weak": res["differences"]["strong - weak"]}
        for a, ms in entries.items():
            for m in METRICS:
                lo, hi = ms[m]["ci95"]
                hits[f"{a} {m}"] += lo <= true[a][m] <= hi
                widths[f"{a} {m}"].append(hi - lo)
    return {"audits": audits, "targets": targets, "samples": samples, "replicates": replicates, "seed": seed,
            "truth": true, "coverage": {k: _rate(h, audits) for k, h in hits.items()},
            "mean_width": {k: float(np.mean(w)) for k, w in widths.items()}, "target_coverage": list(TARGET_COVERAGE)}


def format_table(result: dict) -> str:
    lines = [f"pooled metrics, {result['audits']} simulated audits of {result['targets']} targets x {result['samples']} "
             f"samples, two-way bootstrap B={result['replicates']}, seed {result['seed']}; target coverage "
             f"{result['target_coverage'][0]}-{result['target_coverage'][1]}",
             f"{'interval':24s} {'truth':>8s} {'coverage':>9s} {'exact 95% CI':>16s} {'mean width':>11s}"]
    for key, c in result["coverage"].items():
        attack, metric = key.rsplit(" ", 1)
        lines.append(f"{key:24s} {result['truth'][attack][metric]:8.4f} {c['value']:9.3f} "
                     f"{c['ci95'][0]:7.3f}-{c['ci95'][1]:.3f} {result['mean_width'][key]:11.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerleak bench pooled", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--audits", type=int, default=200, help="simulated audits (default 200)")
    p.add_argument("--quick", action="store_true", help="a smoke run, not a calibration: at most 5 audits, B=100, "
                   "the truth from 40 targets x 5,000 samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def compute() -> dict:
        from mia_tasks.errors import LayerleakError

        if args.audits < 1:
            raise LayerleakError("--audits must be >= 1")
        if args.quick:
            return run_pooled(min(args.audits, 5), args.seed, replicates=100, truth_size=(40, 5_000))
        return run_pooled(args.audits, args.seed)

    return finish(compute, args.json, format_table)


if __name__ == "__main__":
    sys.exit(main())
