"""Calibration of the uncertainty chain: do the 95% intervals cover the truth, do null tables stay quiet?

    layerleak bench calibration [--json] [--audits 200] [--quick] [--timing]
    python -m flows.bench.calibration ...                      (the same)

Simulated audits on synthetic feature tables (seeded): L=4 players x 3 features, n=2,000 audited
samples (half members), a loss column; player i shifts its features for members by
``STRENGTHS[i]`` (player 0: none), the loss is lower for members. Each audit runs the chain of
:mod:`mia_tasks.uncertainty` as an audit would: 5-fold cross-fitted attacks for all 15
coalitions, a stratified bootstrap (B=1,000), Shapley intervals on accuracy, the all-layer AUC
interval, the verdicts (attacks trained on t = 2 of the 5 folds: crossfit's non-reciprocal
default). Null tables: the same features with no membership signal at all.

The truth. The bootstrap resamples audited samples with the fitted attacks held fixed, so what
its interval is about is *the attacks this audit fitted*: the truth of an audit is the value of
its own k fold attacks on the population — for each coalition S, v(S) = the mean over the k
attacks of their accuracy on an independent population sample of ``POPULATION`` = 200,000
(the AUC: of the k attacks' population scores pooled, as the audit pools its out-of-fold
scores), and the Shapley values of that table ("conditional truth"). Also reported: coverage
of the *expected* value of an attack trained on the same number of samples (t·n/k, t training
folds) — the mean over ``TRUTH_DRAWS`` independent training sets — which differs from the
conditional truth by the attack's training variance, a part the bootstrap does not resample.
(The population-optimal attack is neither: a finite-sample attack is worse by O(d/n).) On null
tables every attack, fitted or expected, has accuracy and AUC exactly 0.5: truth 0.5 and 0.

Reported: ``shapley_coverage`` (share of audit x player intervals holding the true value),
``auc_coverage``, ``null_detected_rate`` ("leakage detected" on null tables) and
``null_player_flag_rate`` (any player flagged on a null table: family-wise), each with its n and
an exact binomial 95% interval. Targets (issue 13): coverage 0.92-0.98, null rates <= 0.05.

Measured (2026-12-01, this 2-core machine shared with other jobs, load average ~20; seed 0;
``layerleak bench calibration --json``, 36 min wall): 200 signal + 200 null audits.
  Shapley coverage 0.951 (n=800 audit x player intervals; exact 95% CI 0.934-0.965), per player
  0.955/0.950/0.955/0.945; AUC coverage 0.945 (n=200; 0.904-0.972); null tables: leakage detected
  0.050 (10/200; 0.024-0.090), any player flagged 0.005 (1/200; 0.000-0.028), loss baseline above
  chance 0.015. Against the *expected* truth: Shapley 0.925 (0.905-0.942), AUC 0.900 (0.850-0.938)
  — the training variance of the attack that the sample bootstrap leaves out. An earlier run with
  every other fold training (t=4; coverage then measured against the expected truth only) gave
  Shapley 0.896, AUC 0.915 and null detection 0.110 (22/200): why t defaults to (k-1)//2.
  Timing (``--timing --n 3``, same load): 20.7 s median [20.4-22.7]; a rerun 21.3 s [21.1-23.0]
  wall with 2.1 s process CPU (median; the rest is waiting for the shared cores).

``--timing``: the bootstrap for L=12 players (4,095 coalitions), 10,000 audited samples and
1,000 replicates — weights, all v(S), all Shapley values, the 66 pairwise differences and
their Holm-corrected p-values, the all-layer AUC — timed ``--n`` times (target < 60 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from .common import finish

PLAYERS = 4
PER_PLAYER = 3
STRENGTHS = (0.0, 0.1, 0.2, 0.3)
LOSS_SHIFT = 0.15
N_SAMPLES = 2_000
FOLDS = 5
TRAINING_FOLDS = (FOLDS - 1) // 2  # crossfit's default: non-reciprocal folds
REPLICATES = 1_000
POPULATION = 200_000
TRUTH_DRAWS = 40
TARGET_COVERAGE = (0.92, 0.98)
TARGET_NULL_RATE = 0.05
TARGET_TIMING_S = 60.0


def synthetic_table(n: int, rng: np.random.Generator, signal: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X [n, L·3], loss [n], y [n]) with exactly n/2 members; features correlated within a player
    (a shared factor) and across players (a weaker one), on scales 1e-2 .. 1e2."""
    y = rng.permutation(np.arange(n) % 2)
    d = PLAYERS * PER_PLAYER
    X = (rng.normal(size=(n, d)) + 0.7 * rng.normal(size=(n, PLAYERS)).repeat(PER_PLAYER, axis=1)
         + 0.4 * rng.normal(size=(n, 1)))
    direction = np.array([1.0, 0.6, -0.4])
    loss = np.exp(0.8 * rng.normal(size=n))
    if signal:
        for p, s in enumerate(STRENGTHS):
            X[:, p * PER_PLAYER:(p + 1) * PER_PLAYER] += s * y[:, None] * direction
        loss = loss * np.exp(-LOSS_SHIFT * y)
    scales = 10.0 ** np.linspace(-2, 2, d)  # fixed per column, as a layer's statistics have their own scales
    return X * scales, loss, y


def coalition_columns(n_players: int = PLAYERS, per_player: int = PER_PLAYER) -> tuple[np.ndarray, np.ndarray]:
    """(masks 1..2^L-1, boolean column mask [2^L-1, L·per_player]) in bitmask order."""
    masks = np.arange(1, 1 << n_players, dtype=np.int64)
    return masks, ((masks[:, None] >> np.arange(n_players)) & 1).astype(bool).repeat(per_player, axis=1)


def truth(n_train: int, seed: int, population: int = POPULATION, draws: int = TRUTH_DRAWS) -> dict:
    """v*(S) (accuracy) of every coalition, the all-layer AUC and the Shapley values, for attacks
    trained on ``n_train`` balanced samples, averaged over ``draws`` training sets, on ``population`` samples."""
    from mia_tasks.coalitions import fit_coalitions
    from mia_tasks.shapley import exact_shapley, with_empty

    rng = np.random.default_rng([seed, 1])
    Xp, _, yp = synthetic_table(population, rng)
    masks, cols = coalition_columns()
    acc, auc = [], []
    for _ in range(draws):
        Xt, _, yt = synthetic_table(n_train, rng)
        out = fit_coalitions(Xt, yt, Xp, yp, cols)
        acc.append(out["accuracy"])
        auc.append(out["auc"][-1])
    acc = np.array(acc)
    phis = np.array([exact_shapley(with_empty(a)) for a in acc])
    return {"values": acc.mean(axis=0), "auc": float(np.mean(auc)), "shapley": phis.mean(axis=0),
            "shapley_mc_se": phis.std(axis=0, ddof=1) / np.sqrt(draws),
            "auc_mc_se": float(np.std(auc, ddof=1) / np.sqrt(draws))}


def conditional_truth(X: np.ndarray, models: list, Xp: np.ndarray, yp: np.ndarray) -> dict:
    """Population values of an audit's own fold attacks: v(S) (mean accuracy over the k attacks),
    their Shapley values, and the all-layer AUC of the k attacks' population scores pooled."""
    from mia_tasks.coalitions import standardise
    from mia_tasks.shapley import exact_shapley, with_empty
    from mia_tasks.uncertainty import weighted_auc

    acc, full = [], []
    for m in models:
        _, Zp = standardise(X[m["train"]], Xp)
        S = Zp @ m["coef"].T + m["intercept"]  # [N, K]
        acc.append(((S >= 0) == yp[:, None].astype(bool)).mean(axis=0))
        full.append(S[:, -1])
    v = np.mean(acc, axis=0)
    pooled = np.concatenate(full)
    auc = weighted_auc(np.tile(yp, len(models)), pooled, np.ones((1, pooled.size)))[0]
    return {"shapley": exact_shapley(with_empty(v)), "auc": float(auc)}


def audit(X: np.ndarray, loss: np.ndarray, y: np.ndarray, seed: int, replicates: int,
          population: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One simulated audit through the chain; the Shapley and AUC intervals, the verdicts and, given a
    ``population`` (X, y), the conditional truth."""
    from mia_tasks.attacks import AttackData, LossThresholdAttack
    from mia_tasks.uncertainty import (bootstrap_metrics, bootstrap_sweep, crossfit_attack, crossfit_coalitions,
                                       stratified_weights, verdicts)

    masks, cols = coalition_columns()
    cc = crossfit_coalitions(X, y, cols, k=FOLDS, seed=seed, keep_models=population is not None)
    W = stratified_weights(y, replicates, seed)
    sb = bootstrap_sweep(cc.packed, masks, y, PLAYERS, weights=W)
    auc = bootstrap_metrics(y, cc.scores[-1], weights=W, fprs={})["auc"]
    data = AttackData(loss[:, None], ["loss"], y, np.arange(y.size), np.zeros(y.size))
    base = crossfit_attack(LossThresholdAttack, data, k=FOLDS, seed=seed)
    base_auc = bootstrap_metrics(y, base.scores, weights=W, fprs={})["auc"]
    v = verdicts(sb, [f"p{i}" for i in range(PLAYERS)], auc, base_auc)
    return {"shapley_ci": np.array([p["shapley"]["ci95"] for p in v["players"]]), "auc_ci": auc["ci95"],
            "detected": v["leakage_detected"], "baseline_detected": v["baseline_above_chance"],
            "flagged": [p["flagged"] for p in v["players"]],
            "truth": None if population is None else conditional_truth(X, cc.models, *population)}


def _rate(hits: int, n: int) -> dict:
    from mia_tasks.uncertainty import clopper_pearson

    return {"value": hits / n, "ci95": list(clopper_pearson(hits, n)), "n": n,
            "resampling": {"unit": "simulated audit", "scheme": "exact binomial (Clopper-Pearson)", "replicates": None}}


def run_calibration(audits: int = 200, seed: int = 0, replicates: int = REPLICATES, n_samples: int = N_SAMPLES,
                    population: int = POPULATION, truth_draws: int = TRUTH_DRAWS) -> dict:
    """``audits`` simulated audits on signal tables and as many on null tables; coverage and null rates."""
    t0 = time.perf_counter()
    n_train = n_samples * TRAINING_FOLDS // FOLDS
    tr = truth(n_train, seed, population, truth_draws)
    pop = synthetic_table(population, np.random.default_rng([seed, 3]))
    pop = (pop[0], pop[2])
    t_truth = time.perf_counter() - t0
    cover_phi = np.zeros((audits, PLAYERS), dtype=bool)
    cover_auc = np.zeros(audits, dtype=bool)
    exp_phi = np.zeros((audits, PLAYERS), dtype=bool)
    exp_auc = np.zeros(audits, dtype=bool)
    detected = np.zeros(audits, dtype=bool)
    flagged = np.zeros((audits, PLAYERS), dtype=bool)
    null_detected = np.zeros(audits, dtype=bool)
    null_base = np.zeros(audits, dtype=bool)
    null_flag = np.zeros(audits, dtype=bool)
    null_cover_phi = np.zeros((audits, PLAYERS), dtype=bool)
    for a in range(audits):
        rng = np.random.default_rng([seed, 2, a])
        r = audit(*synthetic_table(n_samples, rng), seed=seed + a, replicates=replicates, population=pop)
        ci, ct = r["shapley_ci"], r["truth"]
        cover_phi[a] = (ci[:, 0] <= ct["shapley"]) & (ct["shapley"] <= ci[:, 1])
        cover_auc[a] = r["auc_ci"][0] <= ct["auc"] <= r["auc_ci"][1]
        exp_phi[a] = (ci[:, 0] <= tr["shapley"]) & (tr["shapley"] <= ci[:, 1])
        exp_auc[a] = r["auc_ci"][0] <= tr["auc"] <= r["auc_ci"][1]
        detected[a], flagged[a] = r["detected"], r["flagged"]
        r0 = audit(*synthetic_table(n_samples, rng, signal=False), seed=seed + a, replicates=replicates)
        null_detected[a], null_base[a], null_flag[a] = r0["detected"], r0["baseline_detected"], any(r0["flagged"])
        ci0 = r0["shapley_ci"]
        null_cover_phi[a] = (ci0[:, 0] <= 0) & (0 <= ci0[:, 1])
        if (a + 1) % 25 == 0:
            print(f"[calibration] {a + 1}/{audits} audits of each kind, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = {
        "audits": audits,
        "shapley_coverage": float(cover_phi.mean()),
        "auc_coverage": float(cover_auc.mean()),
        "null_detected_rate": float(null_detected.mean()),
        "null_player_flag_rate": float(null_flag.mean()),
        "detail": {
            "shapley_coverage": _rate(int(cover_phi.sum()), cover_phi.size),
            "shapley_coverage_per_player": [float(c) for c in cover_phi.mean(axis=0)],
            "auc_coverage": _rate(int(cover_auc.sum()), audits),
            "expected_truth_shapley_coverage": _rate(int(exp_phi.sum()), exp_phi.size),
            "expected_truth_auc_coverage": _rate(int(exp_auc.sum()), audits),
            "null_detected_rate": _rate(int(null_detected.sum()), audits),
            "null_player_flag_rate": _rate(int(null_flag.sum()), audits),
            "null_baseline_detected_rate": _rate(int(null_base.sum()), audits),
            "null_shapley_coverage_of_zero": float(null_cover_phi.mean()),
            "signal_detected_rate": float(detected.mean()),
            "signal_flag_rate_per_player": [float(f) for f in flagged.mean(axis=0)],
        },
        "truth": {"shapley": [float(v) for v in tr["shapley"]], "shapley_mc_se": [float(v) for v in tr["shapley_mc_se"]],
                  "auc": tr["auc"], "auc_mc_se": tr["auc_mc_se"], "all_layer_accuracy": float(tr["values"][-1]),
                  "definition": "coverage: each audit's own fold attacks on the population "
                                f"({population} independent samples); expected_truth (listed here): mean over "
                                f"{truth_draws} training sets of {n_train} samples of the fitted attacks' population values"},
        "settings": {"players": PLAYERS, "features_per_player": PER_PLAYER, "strengths": list(STRENGTHS),
                     "samples": n_samples, "folds": FOLDS, "training_folds": TRAINING_FOLDS, "replicates": replicates, "seed": seed,
                     "interval": "95% percentile bootstrap, stratified by membership"},
        "wall_s": {"truth": t_truth, "total": time.perf_counter() - t0},
    }
    lo, hi = TARGET_COVERAGE
    out["targets_met"] = {"shapley_coverage": lo <= out["shapley_coverage"] <= hi, "auc_coverage": lo <= out["auc_coverage"] <= hi,
                          "null_detected_rate": out["null_detected_rate"] <= TARGET_NULL_RATE,
                          "null_player_flag_rate": out["null_player_flag_rate"] <= TARGET_NULL_RATE,
                          "audits_at_least_200": audits >= 200}
    return out


def run_timing(n: int = 3, seed: int = 0, n_players: int = 12, n_samples: int = 10_000, replicates: int = 1_000) -> dict:
    """Wall time of the bootstrap of a full L-player sweep (correctness given), ``n`` times."""
    from mia_tasks.uncertainty import bootstrap_metrics, bootstrap_sweep, player_verdicts, stratified_weights

    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n_samples) % 2)
    masks = np.arange(1, 1 << n_players, dtype=np.int64)
    # Correctness with some structure: each coalition is right with probability rising with its size.
    p = 0.5 + 0.2 * np.bitwise_count(masks)[:, None] / n_players if hasattr(np, "bitwise_count") else 0.6
    packed = np.packbits(rng.random((masks.size, n_samples)) < p, axis=1)
    scores = rng.normal(size=n_samples) + 0.5 * y
    times, cpu = [], []
    for r in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        W = stratified_weights(y, replicates, seed + r)
        sb = bootstrap_sweep(packed, masks, y, n_players, weights=W)
        auc = bootstrap_metrics(y, scores, weights=W)["auc"]
        pv = player_verdicts(sb, [f"p{i}" for i in range(n_players)], detected=auc["ci95"][0] > 0.5)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"players": n_players, "coalitions": int(masks.size), "samples": n_samples, "replicates": replicates,
            "pairs": len(pv["differences"]), "n": n, "wall_s": {"median": statistics.median(times), "min": min(times),
                                                              "max": max(times), "values": [round(t, 2) for t in times]},
            "process_cpu_s": {"median": statistics.median(cpu), "values": [round(t, 2) for t in cpu]},
            "target_s": TARGET_TIMING_S, "target_met": max(times) < TARGET_TIMING_S}


def format_table(result: dict) -> str:
    """A plain-text summary."""
    lines = []
    c = result if "audits" in result else None
    if c:
        d = c["detail"]

        def fmt(key: str) -> str:
            e = d[key]
            return f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] (n={e['n']})"
        s = c["settings"]
        lines += [
            f"calibration: {c['audits']} signal + {c['audits']} null audits; L={s['players']} players x "
            f"{s['features_per_player']} features, n={s['samples']}, {s['folds']}-fold cross-fitting, B={s['replicates']}",
            f"  Shapley interval coverage   {fmt('shapley_coverage')}  per player {d['shapley_coverage_per_player']}",
            f"  AUC interval coverage       {fmt('auc_coverage')}",
            f"  expected-truth coverage     Shapley {fmt('expected_truth_shapley_coverage')}, "
            f"AUC {fmt('expected_truth_auc_coverage')}",
            f"  null: leakage detected      {fmt('null_detected_rate')}",
            f"  null: any player flagged    {fmt('null_player_flag_rate')}",
            f"  null: baseline detected     {fmt('null_baseline_detected_rate')}",
            f"  signal: detected {d['signal_detected_rate']:.3f}, players flagged {d['signal_flag_rate_per_player']}",
            f"  expected truth: Shapley {[round(v, 4) for v in c['truth']['shapley']]}, AUC {c['truth']['auc']:.4f}",
            f"  targets met: {c['targets_met']}; wall {c['wall_s']['total']:.0f} s (truth {c['wall_s']['truth']:.0f} s)",
        ]
    t = result.get("timing")
    if t:
        w = t["wall_s"]
        lines.append(f"timing: bootstrap of L={t['players']} ({t['coalitions']} coalitions), n={t['samples']}, "
                     f"B={t['replicates']}, {t['pairs']} pairs: {w['median']:.1f} s median [{w['min']:.1f} - {w['max']:.1f}], "
                     f"n={t['n']} (process CPU {t['process_cpu_s']['median']:.1f} s median); "
                     f"target < {t['target_s']:.0f} s: {'met' if t['target_met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="layerleak bench calibration", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--audits", type=int, default=200, help="simulated audits of each kind, signal and null (default 200)")
    p.add_argument("--quick", action="store_true", help="a smoke run, not a calibration: at most 10 audits of each kind, "
                   "B=200, truth from 5 training sets on 20,000 samples")
    p.add_argument("--timing", action="store_true", help="only the L=12, n=10,000, B=1,000 bootstrap timing")
    p.add_argument("--n", type=int, default=3, help="timed runs in --timing (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the many small fits (default 1)")
    args = p.parse_args(argv)

    def compute() -> dict:
        import torch

        from mia_tasks.errors import LayerleakError

        if args.audits < 1 or args.n < 1:
            raise LayerleakError("--audits and --n must be >= 1")
        torch.set_num_threads(max(1, args.threads))
        if args.timing:
            return {"timing": run_timing(args.n, args.seed)}
        if args.quick:
            return run_calibration(min(args.audits, 10), args.seed, replicates=200, population=20_000, truth_draws=5)
        return run_calibration(args.audits, args.seed)

    return finish(compute, args.json, format_table)


if __name__ == "__main__":
    sys.exit(main())
