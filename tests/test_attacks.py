"""Attacks: a planted signal recovered at the Bayes-optimal accuracy, evaluation data never touching the fit,
threshold baselines against brute force, the column selector, and the Nasr attack end to end."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from mia_tasks.attacks import (
    ATTACKS, AttackData, ConfidenceThresholdAttack, LogisticAttack, LossThresholdAttack, NasrAttack,
    evaluate, make_attack, select_columns,
)
from mia_tasks.attacks.nasr import raw_features
from mia_tasks.attacks.threshold import best_threshold
from mia_tasks.errors import LayerleakError
from mia_tasks.metrics import attack_metrics
from mia_tasks.schema import layers_in, parse_column
from mia_tasks.models import build


def _data(X, y, columns=None, labels=None):
    n = len(y)
    columns = columns or [f"f{i}" for i in range(X.shape[1])]
    return AttackData(X, columns, y, np.arange(n), np.zeros(n, int) if labels is None else labels)


def _gaussians(n_per_class, d, shift, rng):
    """Members shifted by ``shift`` along feature 0, unit variance everywhere, equal priors."""
    X = rng.normal(size=(2 * n_per_class, d))
    y = np.r_[np.ones(n_per_class, int), np.zeros(n_per_class, int)]
    X[:, 0] += shift * y
    return _data(X, y)


# ---------------------------------------------------------------- logistic

def test_logistic_reaches_bayes_optimal_accuracy():
    rng = np.random.default_rng(0)
    shift = 1.0
    bayes = norm.cdf(shift / 2)  # Φ(Δ/2σ) = 0.691
    train, test = _gaussians(20_000, 5, shift, rng), _gaussians(20_000, 5, shift, rng)
    m = evaluate(LogisticAttack(), train, test)
    assert abs(m["accuracy"] - bayes) < 0.01
    assert abs(m["auc"] - norm.cdf(shift / np.sqrt(2))) < 0.01  # AUC of two unit Gaussians Δ apart


def test_logistic_matches_sklearn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    train, test = _gaussians(300, 4, 0.7, rng), _gaussians(300, 4, 0.7, rng)
    att = LogisticAttack(C=0.5, tol=1e-8).fit(train)
    sc = StandardScaler().fit(train.X)
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(sc.transform(train.X), train.y)
    np.testing.assert_allclose(att.score(test), ref.decision_function(sc.transform(test.X)), rtol=1e-6, atol=1e-8)
    assert att.converged_


def test_eval_data_never_touches_the_fit():
    rng = np.random.default_rng(2)
    train, ev = _gaussians(200, 3, 1.0, rng), _gaussians(200, 3, 1.0, rng)
    wild = _data(rng.normal(100, 50, size=ev.X.shape), 1 - ev.y)
    wild.X[0, 0], wild.X[1, 1] = np.nan, np.inf

    a, b = LogisticAttack(), LogisticAttack()
    evaluate(a, train, ev)
    state = (a.scaler_.mean_.copy(), a.scaler_.scale_.copy(), a.model_.coef_.copy(), a.model_.intercept_.copy())
    a.score(wild)
    evaluate(b, train, wild)
    for fitted in (a, b):
        got = (fitted.scaler_.mean_, fitted.scaler_.scale_, fitted.model_.coef_, fitted.model_.intercept_)
        for x, y in zip(state, got):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.score(ev), b.score(ev))

    for cls in (LossThresholdAttack, ConfidenceThresholdAttack):
        cols = ["loss"]
        t_train = _data(np.abs(train.X[:, :1]), train.y, cols)
        t1, t2 = cls(), cls()
        evaluate(t1, t_train, _data(np.abs(ev.X[:, :1]), ev.y, cols))
        evaluate(t2, t_train, _data(np.abs(wild.X[:, :1]), wild.y, cols))
        assert t1.threshold_ == t2.threshold_


def test_logistic_non_finite_features_count_as_the_train_mean():
    rng = np.random.default_rng(3)
    train = _gaussians(200, 3, 1.0, rng)
    train.X[:5, 1] = np.nan
    train.X[5:8, 2] = np.inf
    att = LogisticAttack().fit(train)
    finite = train.X[np.isfinite(train.X).all(1)]
    # the scaler's mean ignores the missing entries
    np.testing.assert_allclose(att.scaler_.mean_[1], np.nanmean(np.where(np.isfinite(train.X[:, 1]), train.X[:, 1], np.nan)))
    row = finite[:1].copy()
    with_nan, with_mean = row.copy(), row.copy()
    with_nan[0, 1], with_mean[0, 1] = np.nan, att.scaler_.mean_[1]
    s = att.score(_data(np.vstack([with_nan, with_mean]), np.array([0, 1])))
    assert np.isfinite(s).all() and s[0] == pytest.approx(s[1])
    # an all-NaN column does not break the fit
    train.X[:, 2] = np.nan
    assert np.isfinite(LogisticAttack().fit(train).score(train)).all()


def test_logistic_errors():
    rng = np.random.default_rng(4)
    train = _gaussians(50, 2, 1.0, rng)
    att = LogisticAttack().fit(train)
    with pytest.raises(LayerleakError, match="other feature columns"):
        att.score(_data(train.X, train.y, ["a", "b"]))
    with pytest.raises(LayerleakError, match="both members and non-members"):
        LogisticAttack().fit(_data(train.X, np.ones(100, int)))
    with pytest.raises(LayerleakError, match="C must be"):
        LogisticAttack(C=0)


# ---------------------------------------------------------------- threshold baselines

def _brute_force(y, s):
    cands = np.r_[-np.inf, np.unique(s), np.inf]
    return max(np.mean((s >= t) == y.astype(bool)) for t in cands)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_attacks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 150
    y = rng.integers(0, 2, n)
    loss = np.round(rng.exponential(1.0, n) * (1.5 - y), 1 if seed % 2 else 6)  # rounding: ties
    train = _data(loss[:, None], y, ["loss"])
    for att, score in ((LossThresholdAttack(), -loss), (ConfidenceThresholdAttack(), np.exp(-loss))):
        att.fit(train)
        np.testing.assert_allclose(att.score(train), score)
        assert att.train_accuracy_ == pytest.approx(_brute_force(y, score))
        assert attack_metrics(y, att.score(train), att.threshold_)["accuracy"] == pytest.approx(att.train_accuracy_)


def test_best_threshold_edges():
    # all one class: predict everyone a member / no one
    assert best_threshold(np.ones(4), np.arange(4.0)) == (-np.inf, 1.0)
    thr, acc = best_threshold(np.zeros(4), np.arange(4.0))
    assert acc == 1.0 and thr > 3
    # adjacent floats: the threshold still separates them
    lo = 1.0
    hi = np.nextafter(lo, 2.0)
    thr, acc = best_threshold(np.array([1, 0]), np.array([hi, lo]))
    assert acc == 1.0 and lo < thr <= hi
    # infinite scores
    thr, acc = best_threshold(np.array([1, 1, 0]), np.array([np.inf, 5.0, -np.inf]))
    assert acc == 1.0


def test_confidence_attack_prefers_a_confidence_column():
    y = np.array([1, 1, 0, 0])
    X = np.array([[0.1, 0.2], [0.2, 0.9], [3.0, 0.8], [2.0, 0.1]])
    att = ConfidenceThresholdAttack().fit(_data(X, y, ["loss", "confidence"]))
    np.testing.assert_array_equal(att.score(_data(X, y, ["loss", "confidence"])), X[:, 1])
    with pytest.raises(LayerleakError, match="'loss' column"):
        LossThresholdAttack().fit(_data(X, y, ["a", "b"]))


def test_nan_loss_scores_least_likely_member():
    att = LossThresholdAttack().fit(_data(np.array([[0.1], [np.nan], [2.0]]), np.array([1, 0, 0]), ["loss"]))
    assert att.score(_data(np.array([[np.nan]]), np.array([0]), ["loss"]))[0] == -np.inf
    assert att.train_accuracy_ == 1.0


# ---------------------------------------------------------------- column selection and plumbing

COLS = ["sample_id", "label", "member", "loss"] + [
    f"{kind}.{layer}.{stat}" for layer in ("conv1", "layer1.0.conv1", "fc") for kind in ("grad", "out") for stat in ("max", "l2")
]


def test_select_columns():
    assert layers_in(COLS) == ["conv1", "layer1.0.conv1", "fc"]
    assert parse_column("grad.layer1.0.conv1.l2") == ("grad", "layer1.0.conv1", "l2")
    assert parse_column("member") == ("", None, None)
    assert select_columns(COLS) == COLS[3:]
    assert select_columns(COLS, layers=["fc", "layer1.0.conv1"], kinds=("grad",)) == [
        "grad.layer1.0.conv1.max", "grad.layer1.0.conv1.l2", "grad.fc.max", "grad.fc.l2"]
    assert select_columns(COLS, layers=["conv1"], kinds=("out", "loss"), stats=["l2"]) == ["loss", "out.conv1.l2"]
    assert select_columns(COLS, layers=[], kinds=("loss",)) == ["loss"]
    assert select_columns(COLS, layers=["fc"], kinds=("grad",), exclude=["grad.fc.max"]) == ["grad.fc.l2"]  # constant columns


def test_select_columns_errors():
    with pytest.raises(LayerleakError, match=r"unknown layer\(s\) \['fc9'\].*\['conv1', 'layer1.0.conv1', 'fc'\]"):
        select_columns(COLS, layers=["fc", "fc9"])
    with pytest.raises(LayerleakError, match="unknown feature kind.*'grad', 'out', 'loss'"):
        select_columns(COLS, kinds=("gradient",))
    with pytest.raises(LayerleakError, match="unknown statistic"):
        select_columns(COLS, stats=["median"])
    with pytest.raises(LayerleakError, match="no feature columns"):
        select_columns(COLS, layers=[], kinds=("grad",))


def test_attack_data_from_table_and_registry():
    pa = pytest.importorskip("pyarrow")
    n = 6
    table = pa.table({"sample_id": np.arange(10, 10 + n), "label": np.arange(n) % 3, "member": np.arange(n) % 2 == 0,
                      "loss": np.linspace(0, 1, n), "grad.fc.l2": np.arange(n, dtype=float)})
    d = AttackData.from_table(table, ["loss", "grad.fc.l2"], sample_ids=[15, 10, 12])
    np.testing.assert_array_equal(d.sample_ids, [15, 10, 12])
    np.testing.assert_array_equal(d.y, [0, 1, 1])
    np.testing.assert_array_equal(d.column("grad.fc.l2"), [5.0, 0.0, 2.0])
    np.testing.assert_array_equal(d.labels, [2, 0, 2])
    with pytest.raises(LayerleakError, match="not in the features table"):
        AttackData.from_table(table, ["loss"], sample_ids=[99])
    with pytest.raises(LayerleakError, match="no column"):
        d.column("out.fc.max")
    with pytest.raises(LayerleakError, match="names"):
        AttackData(np.zeros((2, 2)), ["a"], [0, 1], [0, 1], [0, 0])
    assert set(ATTACKS) == {"logistic", "nasr", "loss-threshold", "confidence-threshold", "lira", "lira-online",
                            "lira-offline", "rmia"}
    assert isinstance(make_attack("logistic", C=2.0), LogisticAttack)
    with pytest.raises(LayerleakError, match="unknown attack 'svm'"):
        make_attack("svm")
    with pytest.raises(LayerleakError, match="attack 'logistic'"):
        make_attack("logistic", gamma=1)


# ---------------------------------------------------------------- nasr

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: threads only add contention on a shared 2-core machine (20x slower there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _loop_reference(model, x, y, layers, module_outputs):
    """Per-sample weight gradients and module outputs, one sample at a time with plain autograd."""
    model.eval()
    mods = dict(model.named_modules())
    grads = {l: [] for l in layers}
    outs = {o: [] for o in module_outputs}
    for i in range(len(x)):
        seen = {}
        hooks = [mods[o].register_forward_hook(lambda m, a, out, o=o: seen.__setitem__(o, out.detach().flatten(1))) for o in module_outputs]
        logits = model(x[i:i + 1])
        for h in hooks:
            h.remove()
        loss = F.cross_entropy(logits, y[i:i + 1])
        gs = torch.autograd.grad(loss, [mods[l].weight for l in layers])
        for l, g in zip(layers, gs):
            grads[l].append(g.flatten(1))
        for o in module_outputs:
            outs[o].append(seen[o][0])
    return {l: torch.stack(v) for l, v in grads.items()}, {o: torch.stack(v) for o, v in outs.items()}


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_raw_features_equal_one_sample_loop(arch):
    torch.manual_seed(0)
    if arch == "cnn":
        model = build("cnn", 10, in_channels=1, input_size=8, width=4, hidden=16)
        layers, mods = ["conv2", "fc1", "fc2"], ["conv1", "fc1"]
        x = torch.randn(11, 1, 8, 8)
    else:
        model = build("resnet", 10, in_channels=1, input_size=8, depth=8)
        for m in model.modules():  # non-trivial running statistics: BatchNorm must use them
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        layers, mods = ["conv1", "layer2.0.conv2", "fc"], ["layer1.0.conv1"]
        x = torch.randn(11, 1, 8, 8)
    y = torch.randint(0, 10, (11,))
    model.train()
    batches = list(raw_features(model, x, y, layers, outputs=["softmax", "logits", *mods], batch_size=4))
    assert model.training  # mode restored
    got = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    ref_g, ref_o = _loop_reference(model, x, y, layers, mods)
    for l in layers:
        assert got[f"grad.{l}"].shape == (11, model.get_submodule(l).weight.shape[0], ref_g[l].shape[2])
        torch.testing.assert_close(got[f"grad.{l}"], ref_g[l], rtol=1e-4, atol=1e-6)
    for o in mods:
        torch.testing.assert_close(got[f"out.{o}"], ref_o[o], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = model.eval()(x)
    torch.testing.assert_close(got["out.logits"], logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["out.softmax"], logits.softmax(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss"], F.cross_entropy(logits, y, reduction="none"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["label"], y)


class _MLP(nn.Module):
    def __init__(self, d=20, h=64, c=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, c)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _overfit_target(seed=0, n=200, d=20, c=4):
    """An MLP that memorises random labels of ``n`` members; non-members are fresh draws."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, d, generator=g)
    y = torch.randint(0, c, (2 * n,), generator=g)
    torch.manual_seed(seed)
    model = _MLP(d, 128, c)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(x[:n]), y[:n])
        opt.zero_grad()
        loss.backward()
        opt.step()
    member = torch.r_[torch.ones(n), torch.zeros(n)] if hasattr(torch, "r_") else torch.cat([torch.ones(n), torch.zeros(n)])
    return model.eval(), x, y, member


def test_nasr_beats_chance_on_an_overfit_target():
    model, x, y, member = _overfit_target()
    with torch.no_grad():
        assert (model(x[:200]).argmax(1) == y[:200]).float().mean() > 0.95  # memorised
    half = torch.cat([torch.arange(0, 100), torch.arange(200, 300)])
    rest = torch.cat([torch.arange(100, 200), torch.arange(300, 400)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    att = NasrAttack(model, layers=["fc1", "fc2"], epochs=15, seed=0, device="cpu")
    att.fit(x[half], y[half], member[half])
    scores = att.score(x[rest], y[rest])
    m = attack_metrics(member[rest].numpy(), scores, att.threshold_)
    assert m["auc"] > 0.75 and m["accuracy"] > 0.65, m
    assert att.history_[-1] < att.history_[0]
    for k, v in model.state_dict().items():  # target untouched
        torch.testing.assert_close(v, before[k])

    # Same seed, same attack; through the common interface too (AttackData with inputs).
    n = len(rest)
    train = AttackData(np.zeros((len(half), 0)), [], member[half].numpy(), half.numpy(), y[half].numpy(), inputs=x[half])
    ev = AttackData(np.zeros((n, 0)), [], member[rest].numpy(), rest.numpy(), y[rest].numpy(), inputs=x[rest])
    again = NasrAttack(model, layers=["fc1", "fc2"], epochs=15, seed=0, device="cpu")
    assert evaluate(again, train, ev) == pytest.approx(m)


def test_nasr_streams_when_the_cache_is_too_small():
    model, x, y, member = _overfit_target(seed=1, n=40)
    kw = dict(layers=["fc2"], epochs=3, seed=3, device="cpu", batch_size=16, num_threads=1)
    torch.set_num_threads(2)
    cached = NasrAttack(model, **kw).fit(x, y, member)
    streamed = NasrAttack(model, cache_mb=0, **kw).fit(x, y, member)
    assert torch.get_num_threads() == 2  # restored
    assert cached.cached_ and not streamed.cached_
    np.testing.assert_allclose(cached.score(x, y), streamed.score(x, y), rtol=1e-4, atol=1e-5)


def test_nasr_errors():
    model = _MLP()
    with pytest.raises(LayerleakError, match=r"unknown gradient layer\(s\) \['fc3'\].*\['fc1', 'fc2'\]"):
        NasrAttack(model, layers=["fc3"])
    with pytest.raises(LayerleakError, match="unknown output"):
        NasrAttack(model, outputs=["probs"])
    att = NasrAttack(model, device="cpu")
    assert att.layers == ["fc2"]
    with pytest.raises(LayerleakError, match="call fit"):
        att.score(torch.zeros(2, 20), torch.zeros(2, dtype=torch.long))
    with pytest.raises(LayerleakError, match="raw inputs"):
        att.fit(_data(np.zeros((2, 1)), np.array([0, 1])))
    with pytest.raises(LayerleakError, match="both members"):
        att.fit(torch.zeros(2, 20), torch.zeros(2, dtype=torch.long), torch.ones(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nasr_on_gpu_matches_cpu():
    model, x, y, member = _overfit_target(seed=2, n=64)
    cpu = [b for b in raw_features(model, x, y, ["fc1", "fc2"], batch_size=32, device="cpu")]
    gpu = [b for b in raw_features(model.cuda(), x, y, ["fc1", "fc2"], batch_size=32, device="cuda")]
    for b_cpu, b_gpu in zip(cpu, gpu):
        for k in b_cpu:
            torch.testing.assert_close(b_gpu[k].cpu(), b_cpu[k], rtol=1e-4, atol=1e-5)
    att = NasrAttack(model, layers=["fc2"], epochs=5, device="cuda").fit(x, y, member)
    assert np.isfinite(att.score(x, y)).all()


@pytest.mark.slow
def test_nasr_on_digits_default_size():
    """The default config's scale: digits, the small CNN, 400 attack-train and 400 attack-eval samples."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    mem, non = perm[:400], perm[400:800]
    model = build("cnn", 10, in_channels=1, input_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        for idx in mem[torch.randperm(400)].split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    tr = torch.cat([mem[:200], non[:200]])
    ev = torch.cat([mem[200:], non[200:]])
    member = torch.cat([torch.ones(200), torch.zeros(200)])
    t0 = time.perf_counter()
    att = NasrAttack(model.eval(), layers=["fc1", "fc2"], seed=0, device="cpu").fit(x[tr], y[tr], member)
    m = attack_metrics(member.numpy(), att.score(x[ev], y[ev]), att.threshold_)
    assert time.perf_counter() - t0 < 120
    assert m["auc"] > 0.5, m
