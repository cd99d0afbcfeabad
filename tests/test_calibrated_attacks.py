"""LiRA, RMIA and calibrated features against plain implementations of the papers' equations on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import norm

from mia_tasks.attacks import AttackData, make_attack
from mia_tasks.attacks.lira import LOSS_FLOOR, confidence_from_loss, lira_scores, logit_confidence
from mia_tasks.attacks.references import join_references, ref_column, reference_columns
from mia_tasks.attacks.rmia import likelihood_ratio, rmia_scores
from mia_tasks.calibration import calibrate, calibrate_table
from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import auc
from mia_tasks.uncertainty import crossfit_attack

K, N = 8, 24


@pytest.fixture
def refs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target confidences [N], reference confidences [K, N], membership [K, N] with >= 2 IN and OUT per sample."""
    rng = np.random.default_rng(7)
    inside = np.zeros((K, N), bool)
    for i in range(N):
        inside[rng.choice(K, K // 2, replace=False), i] = True
    difficulty = rng.normal(0, 2, N)
    ref_phi = difficulty + 1.5 * inside + rng.normal(0, 0.7, (K, N))
    phi = difficulty + rng.normal(0.6, 0.7, N)
    return phi, ref_phi, inside


def _plain_mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _plain_pooled(ref_phi: np.ndarray, inside: np.ndarray, side: bool) -> float:
    ss, dof = 0.0, 0
    for i in range(ref_phi.shape[1]):
        vals = [ref_phi[k, i] for k in range(ref_phi.shape[0]) if inside[k, i] == side]
        if not vals:
            continue
        m = sum(vals) / len(vals)
        ss += sum((v - m) ** 2 for v in vals)
        dof += len(vals) - 1
    return math.sqrt(ss / dof)


def _plain_lira(phi, ref_phi, inside, mode, variance):
    """Carlini et al.'s equations, one sample at a time."""
    scores = []
    pooled = {side: _plain_pooled(ref_phi, inside, side) for side in (True, False)}
    for i in range(len(phi)):
        fit = {}
        for side in (True, False):
            vals = [ref_phi[k, i] for k in range(ref_phi.shape[0]) if inside[k, i] == side]
            m, s = _plain_mean_std(vals)
            fit[side] = (m, pooled[side] if variance == "global" else s)
        if mode == "offline":
            scores.append(-math.log(norm.sf(phi[i], *fit[False])))
        else:
            scores.append(math.log(norm.pdf(phi[i], *fit[True])) - math.log(norm.pdf(phi[i], *fit[False])))
    return np.array(scores)


@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("variance", ["global", "per-example"])
def test_lira_matches_the_papers_equations(refs, mode, variance):
    phi, ref_phi, inside = refs
    np.testing.assert_allclose(lira_scores(phi, ref_phi, inside, mode, variance), _plain_lira(phi, ref_phi, inside, mode, variance),
                               rtol=1e-9, atol=1e-9)


def test_logit_scaled_confidence_is_stable_and_agrees_with_the_loss():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [50.0, -50.0, 10.0], [-3.0, 800.0, 1.0]])
    labels = np.array([0, 2, 0, 1])
    p = np.exp(logits[:2] - logits[:2].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(2), labels[:2]]
    phi = logit_confidence(logits, labels)
    np.testing.assert_allclose(phi[:2], np.log(py / (1 - py)), rtol=1e-12)
    np.testing.assert_allclose(phi[2], 40.0, rtol=1e-12)  # 50 - logsumexp(-50, 10): p_y rounds to 1 in float64
    np.testing.assert_allclose(phi[3], 800.0 - np.logaddexp(-3.0, 1.0), rtol=1e-12)  # no overflow
    z = logits - logits.max(1, keepdims=True)
    loss = -(z[np.arange(4), labels] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(confidence_from_loss(loss[:2]), phi[:2], rtol=1e-9)
    assert loss[2] == 0.0  # p_y = 1 - 4e-18 rounds to 1: from the loss, phi is capped (the same cap for every model)
    cap = confidence_from_loss(np.array([0.0, 1e-30, LOSS_FLOOR]))
    np.testing.assert_allclose(cap, -LOSS_FLOOR - np.log(LOSS_FLOOR), rtol=1e-12)
    assert 34 < cap[0] < phi[2]


def _plain_rmia(p, ref_p, inside, a, gamma, mode, z):
    """Zarifzadeh et al.'s score, with loops: the fraction of z with LR(x)/LR(z) > gamma, x never its own z."""
    def prior(i):
        if mode == "online":
            return sum(ref_p[:, i]) / ref_p.shape[0]
        outs = [ref_p[k, i] for k in range(ref_p.shape[0]) if not inside[k, i]]
        return (1 + a) / 2 * sum(outs) / len(outs) + (1 - a) / 2

    lr = [p[i] / prior(i) for i in range(len(p))]
    scores = []
    for i in range(len(p)):
        others = [j for j in z if j != i]
        scores.append(sum(lr[i] / lr[j] > gamma for j in others) / len(others))
    return np.array(scores)


@pytest.mark.parametrize("mode,a,gamma", [("offline", 0.3, 1.0), ("offline", 0.0, 2.0), ("online", 0.3, 0.5)])
def test_rmia_matches_the_papers_equations(refs, mode, a, gamma):
    phi, ref_phi, inside = refs
    p, ref_p = 1 / (1 + np.exp(-phi)), 1 / (1 + np.exp(-ref_phi))
    z = np.arange(0, N, 2)  # the population: every other sample
    ids = np.arange(N) + 100
    lr = likelihood_ratio(p, ref_p, inside, mode, a)
    got = rmia_scores(lr, lr[z], gamma, ids, ids[z])
    np.testing.assert_allclose(got, _plain_rmia(p, ref_p, inside, a, gamma, mode, z), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cut", ["references", "membership", "target"])
def test_lira_and_rmia_refuse_reference_arrays_of_other_shapes(refs, cut):
    phi, ref_phi, inside = refs
    args = {"references": (phi, ref_phi[:, 1:], inside), "membership": (phi, ref_phi, inside[:-1]),
            "target": (phi[:, None], ref_phi, inside)}[cut]
    for name, score, signal in (("LiRA", lira_scores, "confidences"), ("RMIA", likelihood_ratio, "probabilities")):
        with pytest.raises(LayerleakError) as e:
            score(*args)
        assert str(e.value) == (f"{name}: the target's {signal} must be [n] and the references' {signal} and membership "
                                f"[K, n] (K references, n samples); got {args[0].shape}, {args[1].shape} and {args[2].shape}")


def test_calibrated_features_match_a_direct_computation(refs):
    _, ref_phi, inside = refs
    rng = np.random.default_rng(3)
    scale = np.array([1.0, 100.0, 1e-3])
    ref = rng.normal(size=(K, N, 3)) * scale + ref_phi[..., None]
    x = rng.normal(size=(N, 3)) * scale
    off, on = calibrate(x, ref, inside, "offline"), calibrate(x, ref, inside, "online")
    for i in range(N):
        for j in range(3):
            m_out, s_out = _plain_mean_std([ref[k, i, j] for k in range(K) if not inside[k, i]])
            m_in, s_in = _plain_mean_std([ref[k, i, j] for k in range(K) if inside[k, i]])
            assert off[i, j] == pytest.approx((x[i, j] - m_out) / s_out, rel=1e-9)
            assert on[i, j] == pytest.approx(norm.logpdf(x[i, j], m_in, s_in) - norm.logpdf(x[i, j], m_out, s_out), rel=1e-9, abs=1e-9)
    np.testing.assert_array_equal(calibrate(x, ref, inside, "none"), x)
    with pytest.raises(LayerleakError, match="no audited sample has both IN and OUT reference models among 8"):
        calibrate(x, ref, np.zeros_like(inside), "online")


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_sample_with_every_reference_on_one_side_gets_the_average_gap(refs, mode):
    """With K references a sample has all of them IN (or OUT) with probability 2^(1-K): over 17 targets x 2,000
    samples that happens. Its missing side's mean is its other side's mean -/+ the mean IN - OUT gap over the
    samples with both sides (a plain loop here), its spread the pooled one."""
    phi, ref_phi, inside = refs
    inside = inside.copy()
    inside[:, 0], inside[:, 1] = True, False  # sample 0: no OUT reference; sample 1: no IN reference
    both = [i for i in range(N) if 0 < inside[:, i].sum() < K]
    side = {s: [_plain_mean_std([ref_phi[k, i] for k in range(K) if inside[k, i] == s])[0] if i in both else None
                for i in range(N)] for s in (True, False)}
    gap = sum(side[True][i] - side[False][i] for i in both) / len(both)
    got = lira_scores(phi, ref_phi, inside, mode, "global")
    pooled = {s: _plain_pooled(ref_phi, inside, s) for s in (True, False)}
    mu_out0 = _plain_mean_std(list(ref_phi[:, 0]))[0] - gap
    mu_in1 = _plain_mean_std(list(ref_phi[:, 1]))[0] + gap
    if mode == "offline":
        assert got[0] == pytest.approx(-norm.logsf(phi[0], mu_out0, pooled[False]), rel=1e-6)
    else:
        assert got[1] == pytest.approx(norm.logpdf(phi[1], mu_in1, pooled[True]) - norm.logpdf(phi[1], _plain_mean_std(list(ref_phi[:, 1]))[0], pooled[False]), rel=1e-6)
    assert np.isfinite(got).all()
    p = 1 / (1 + np.exp(-phi))
    ratio = likelihood_ratio(p, 1 / (1 + np.exp(-ref_phi)), inside, "offline", a=0.3)
    assert np.isfinite(ratio).all()


def _population(n: int = 200, k: int = 16, seed: int = 0):
    """Feature tables of a target and k references over one pool of n samples: per-sample difficulty dominates the
    loss, membership lowers it a little (what calibration is for); plus one gradient column tied to the loss."""
    rng = np.random.default_rng(seed)
    difficulty = rng.lognormal(0, 1, n)
    member = np.zeros((k + 1, n), bool)
    for m in range(k + 1):
        member[m, rng.choice(n, n // 2, replace=False)] = True
    loss = difficulty * np.exp(-0.5 * member + rng.normal(0, 0.15, (k + 1, n)))
    ids = np.arange(1000, 1000 + n)
    tables = [pa.table({"sample_id": ids, "label": ids % 10, "member": member[m], "loss": loss[m],
                        "grad.fc.l2": 3 * loss[m] + rng.normal(0, 0.01, n)}) for m in range(k + 1)]
    return tables, {m: ids[member[m]] for m in range(1, k + 1)}


def test_join_references_aligns_by_sample_id():
    tables, members = _population(n=30, k=3)
    shuffled = {m: tables[m].take(np.random.default_rng(m).permutation(30)) for m in members}
    joined = join_references(tables[0], shuffled, members, columns=["loss", "grad.fc.l2"])
    for m in members:
        np.testing.assert_array_equal(joined.column(ref_column(m, "loss")).to_numpy(), tables[m].column("loss").to_numpy())
        np.testing.assert_array_equal(joined.column(ref_column(m, "in")).to_numpy(), tables[m].column("member").to_numpy())
    assert reference_columns(joined.column_names) == [ref_column(m, c) for m in (1, 2, 3) for c in ("loss", "in")]
    with pytest.raises(LayerleakError, match="lack 5 audited samples"):
        join_references(tables[0], {1: tables[1].slice(5)}, members)


def test_calibrated_attacks_beat_the_loss_threshold_when_difficulty_varies():
    tables, members = _population()
    joined = join_references(tables[0], dict(enumerate(tables[1:], 1)), members)
    cols = ["loss", *reference_columns(joined.column_names)]
    data = AttackData.from_table(joined, cols)
    result = {}
    attacks = {"loss-threshold": {}, "lira": {}, "lira-offline": {}, "rmia": {}, "rmia-offline": {"mode": "offline", "a": 1.0}}
    for name, options in attacks.items():
        cf = crossfit_attack(lambda: make_attack(name.removesuffix("-offline") if "rmia" in name else name, **options), data, k=5, seed=0)
        result[name] = auc(cf.y, cf.scores)
    assert result["loss-threshold"] < 0.7
    for name in ("lira", "lira-offline", "rmia", "rmia-offline"):
        assert result[name] > result["loss-threshold"] + 0.15, result
    with pytest.raises(LayerleakError, match="reference models' 'loss' columns"):
        make_attack("lira").fit(AttackData.from_table(tables[0], ["loss"]))


@pytest.mark.parametrize("name", ["lira", "lira-offline", "rmia"])
def test_calibrated_metrics_are_the_plain_ones_of_the_stored_raw_scores(name):
    """A calibrated attack is evaluated as its paper does: each sample's raw score computed once over the whole pool
    (LiRA's pooled variance over every sample, RMIA's z = every other non-member), not per fold; AUC, TPR at low FPR
    and the ROC from those raw scores (sklearn's roc_curve), accuracy from cross-fitted thresholds."""
    from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

    from mia_tasks.attack_runs import attack_record, calibrated_scores

    tables, members = _population(n=400, k=16, seed=3)
    joined = join_references(tables[0], dict(enumerate(tables[1:], 1)), members)
    data = AttackData.from_table(joined, ["loss", *reference_columns(joined.column_names)])
    margins, y, raw, population = calibrated_scores(name, data, folds=5, seed=0)
    ref_loss = np.stack([joined.column(ref_column(m, "loss")).to_numpy() for m in members])
    inside = np.stack([joined.column(ref_column(m, "in")).to_numpy() for m in members]).astype(bool)
    loss = joined.column("loss").to_numpy()
    assert (inside.sum(0) >= 2).all() and ((~inside).sum(0) >= 2).all()  # the plain loop's own per-sample spreads exist
    if name.startswith("lira"):
        plain = _plain_lira(confidence_from_loss(loss), confidence_from_loss(ref_loss), inside,
                            "offline" if name == "lira-offline" else "online", "global")
        assert population == 0
    else:
        plain = _plain_rmia(np.exp(-loss), np.exp(-ref_loss), inside, 0.3, 1.0, "online", np.flatnonzero(~y))
        assert population == int((~y).sum()) - 1
    np.testing.assert_allclose(raw, plain, rtol=1e-9, atol=1e-9)
    record = attack_record(y, margins, 5, 200, 0, raw)
    stored = np.array(record["raw_scores"])
    np.testing.assert_array_equal(stored, raw)
    assert record["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(y, stored), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, stored, drop_intermediate=False)
    sk_points = set(zip(np.round(fpr, 12), np.round(tpr, 12)))
    ours = list(zip(np.round(record["roc"]["fpr"], 12), np.round(record["roc"]["tpr"], 12)))
    assert len(ours) > 50 and all(p in sk_points for p in ours)  # the stored ROC: points of sklearn's curve of the raw scores
    # accuracy reads the cross-fitted thresholds: margins >= 0 predict a member
    assert record["metrics"]["accuracy"]["value"] == pytest.approx(float(((margins >= 0) == y).mean()), abs=1e-12)
    # a sample's raw score does not depend on the samples that share its fold
    sub = AttackData.from_table(joined.slice(0, 200), data.columns)
    if name.startswith("lira"):
        assert not np.allclose(make_attack(name).fit(sub).score(sub), raw[:200])  # scoring a subset pools less


def test_calibrate_table_replaces_columns_in_place():
    tables, members = _population(n=60, k=16)
    joined = join_references(tables[0], dict(enumerate(tables[1:], 1)), members, columns=["loss", "grad.fc.l2"])
    cal = calibrate_table(joined, ["grad.fc.l2"], "offline")
    assert cal.column_names == joined.column_names
    np.testing.assert_array_equal(cal.column("loss").to_numpy(), joined.column("loss").to_numpy())
    y = joined.column("member").to_numpy()
    g = cal.column("grad.fc.l2").to_numpy()
    assert auc(y, -g) > auc(y, -joined.column("grad.fc.l2").to_numpy()) + 0.1
    with pytest.raises(LayerleakError, match="needs every reference model's features"):
        calibrate_table(tables[0], ["grad.fc.l2"], "offline")


@pytest.mark.slow
def test_layerleak_attack_lira_rmia_and_calibrated_logistic_on_the_tiny_population(ray_head, tmp_path):
    """The CLI end to end: 16 reference models trained and extracted, then lira, rmia and the calibrated logistic
    attack cross-fitted over the audited pool, each saved with its intervals and its reference count."""
    import json

    import pyarrow.parquet as pq
    from helpers import run_cli, tiny_args

    out = tmp_path / "run"
    base = tiny_args(out, "references.count=16")
    for name in ("lira", "rmia"):
        proc = run_cli("attack", "--attack", name, *base, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rec = json.loads((out / "attacks" / f"{name}.json").read_text())
        assert rec["references"] == 16 and rec["n"] == 120
        assert 0.0 <= rec["metrics"]["auc"]["ci95"][0] <= rec["metrics"]["auc"]["value"] <= rec["metrics"]["auc"]["ci95"][1] <= 1.0
    lira = json.loads((out / "attacks" / "lira.json").read_text())
    assert lira["options"] == {"mode": "online", "variance": "global"}
    proc = run_cli("attack", "--attack", "logistic", "--features", "grad,loss", *base, "--set", "attack.calibration=offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((out / "attacks" / "logistic-calibrated-offline-grad+loss.json").read_text())  # beside the uncalibrated one
    assert rec["settings"]["calibration"] == "offline"
    # leakage beyond LiRA: v(∅) is LiRA's cross-fitted accuracy (the same folds as 'attack --attack lira'), and
    # the Shapley values sum to v(all) - v(∅)
    proc = run_cli("sweep", *base, "--set", "sweep.baseline=lira", "--set", "attack.calibration=offline", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = json.loads((out / "shapley.json").read_text())["targets"][0]
    assert block["baseline"]["attack"] == "lira"
    assert block["v_empty"]["value"] == pytest.approx(lira["metrics"]["accuracy"]["value"], abs=1e-12)
    assert block["v_empty"]["ci95"][0] < block["v_empty"]["value"] < block["v_empty"]["ci95"][1]
    assert block["efficiency_gap"] < 1e-9
    # targets for free: each of the 17 models in turn is the target, the other 16 its references (no model trained)
    free = [*base, "--set", "split.targets=17", "--set", "sweep.baseline=lira", "--set", "attack.calibration=offline"]
    proc = run_cli("attack", "--attack", "lira", *free, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained" not in proc.stdout and "pooled over 17 targets x 120 audited samples" in proc.stdout
    rec = json.loads((out / "attacks" / "lira.json").read_text())
    assert rec["metrics"] == lira["metrics"]  # target 0 is audited exactly as before
    population = pq.read_table(out / "population.parquet").to_pydict()
    per = rec["targets"]["per_target"]
    assert [p["target"] for p in per] == list(range(17))
    assert [p["members"] for p in per] == [sum(population[f"in.{t}"]) for t in range(17)]  # each its own half
    assert len({p["metrics"]["auc"]["value"] for p in per}) > 1 and all(p["metrics"]["auc"]["value"] > 0.5 for p in per)
    pooled = rec["targets"]["pooled"]
    assert pooled["pairs"] == 17 * 120 and pooled["non_members"] == sum(p["non_members"] for p in per) >= 1000
    assert pooled["attacks"]["lira"]["tpr@1%"]["measurable"]  # 60 non-members per target: measurable only pooled
    assert not rec["metrics"]["tpr@1%"]["measurable"]
    assert rec["targets"]["between_targets"]["auc"]["n"] == 17
    assert "lira - loss-threshold" in pooled["differences"]
    proc = run_cli("sweep", *free, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shapley = json.loads((out / "shapley.json").read_text())
    assert [t["target"] for t in shapley["targets"]] == list(range(17)) and shapley["between_targets"]["targets"] == 17
    assert shapley["targets"][0]["v_empty"] == block["v_empty"]


@pytest.mark.parametrize("args,why", [(("--attack", "lira"), "attack 'lira'"),
                                      (("--attack", "logistic", "--set", "attack.calibration=online"), "attack.calibration=online"),
                                      (("--set", "sweep.baseline=lira"), "sweep.baseline=lira")])
def test_calibrated_attack_without_references_is_one_line_before_any_stage(tmp_path, args, why):
    from helpers import run_cli, tiny_args

    proc = run_cli("attack", *args, *tiny_args(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"layerleak: error: {why} needs reference models: set references.count "
                                                "(e.g. --set references.count=16)"]
    assert not (tmp_path / "run" / "splits.parquet").exists()
