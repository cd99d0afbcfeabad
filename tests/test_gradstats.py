"""The batched per-sample path (mia_tasks.gradstats) against a one-sample loop reduced with numpy/scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mia_tasks.errors import LayerleakError
from mia_tasks.gradstats import (STATS, feature_columns, features_in_batches, features_to_columns, merge_sums, outer_sums,
                                 per_sample_features,
                                 per_sample_grad_stats, reference_grad_stats, stats_from_sums, stats_of, sums_of)
from mia_tasks.gradstats import conv as conv_route
from mia_tasks.gradstats import registry
from mia_tasks.gradstats.moments import row_stats
from mia_tasks.models import audited_layers, build

FAST = settings(max_examples=12, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds contention on a shared 2-core machine (10-50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scipy_stats(v: torch.Tensor) -> torch.Tensor:
    """The seven statistics of each row with numpy/scipy (kurtosis = skewness = 0 for a constant row)."""
    rows = []
    for x in v.detach().cpu().double().numpy():
        const = np.ptp(x) == 0
        rows.append([x.max(), x.min(), x.mean(), np.abs(x).sum(), np.sqrt((x * x).sum()),
                     0.0 if const else scipy.stats.kurtosis(x), 0.0 if const else scipy.stats.skew(x)])
    return torch.tensor(rows, dtype=torch.float64)


def assert_stats_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    """Relative error < rtol; absolute slack only where a statistic is ~0 (mean of a softmax gradient,
    symmetric skewness): 1e-9 of the row's L2 norm for value statistics, 1e-7 for kurtosis/skewness."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape
    atol = torch.cat([1e-9 * want[:, 4:5].abs().expand(-1, 5) + 1e-300, torch.full((want.shape[0], 2), 1e-7, dtype=torch.float64)], 1)
    bad = (got - want).abs() > rtol * want.abs() + atol
    assert not bad.any(), f"mismatch at {bad.nonzero().tolist()[:5]}:\n got {got[bad][:5]}\nwant {want[bad][:5]}"


def check_against_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw) -> dict:
    fast = per_sample_grad_stats(model, x, y, **kw)
    ref = reference_grad_stats(model, x, y, stats=scipy_stats)
    assert list(fast) == list(ref)
    for name in ref:
        assert_stats_close(fast[name], ref[name])
    return fast


def randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) * 2 + 0.3)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


# ---------------------------------------------------------------- statistics helpers


@FAST
@given(st.integers(1, 4), st.integers(1, 60), st.integers(0, 2**31 - 1), st.floats(-3, 3))
def test_stats_of_and_sums_match_scipy(rows, n, seed, shift):
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift
    want = scipy_stats(x) if n > 1 else torch.tensor([[x[i, 0], x[i, 0], x[i, 0], abs(x[i, 0]), abs(x[i, 0]), 0, 0] for i in range(rows)], dtype=torch.float64)
    assert_stats_close(stats_of(x), want)
    assert_stats_close(stats_from_sums(sums_of(x)), want)
    assert_stats_close(row_stats(x), want)


def test_constant_rows_have_zero_kurtosis_and_skewness():
    x = torch.tensor([[0.0] * 5, [2.5] * 5, [-1e-3] * 5], dtype=torch.float64)
    for s in (stats_of(x), stats_from_sums(sums_of(x)), row_stats(x), row_stats(x.float())):
        assert torch.isfinite(s).all()
        assert (s[:, 5:] == 0).all()
        assert torch.allclose(s[:, 0], x[:, 0].double()) and torch.allclose(s[:, 2], x[:, 0].double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(scipy.stats.kurtosis(x[1].numpy()))  # scipy's answer, which we replace by 0


@FAST
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_merge_and_outer_sums(rows, n, m, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    a = torch.randn(rows, m, generator=gen, dtype=torch.float64)
    outer = (g[:, :, None] * a[:, None, :]).reshape(rows, -1)
    assert_stats_close(stats_from_sums(outer_sums(sums_of(g), sums_of(a))), stats_of(outer))
    assert_stats_close(stats_from_sums(merge_sums(sums_of(outer), sums_of(g))), stats_of(torch.cat([outer, g], 1)))


# ---------------------------------------------------------------- models against the one-sample loop


@FAST
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 10), st.integers(2, 7), st.booleans(), st.integers(0, 2**31 - 1))
def test_mlp(batch, d_in, hidden, classes, bias, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, classes)).double()
    x = torch.randn(batch, d_in, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,))
    check_against_loop(model, x, y)


class ConvNet(nn.Module):
    def __init__(self, conv: nn.Module, example: torch.Tensor, classes: int = 3):
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            width = conv(example).flatten(1).shape[1]
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@st.composite
def conv_case(draw):
    two_d = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"]))
    padding = draw(st.one_of(st.integers(0, 2), st.just("same") if stride == 1 else st.integers(0, 2)))
    span = dilation * (k - 1) + 1
    size = draw(st.integers(max(span, 3 if mode != "zeros" else 1), 12))
    if mode != "zeros" and isinstance(padding, int):
        padding = min(padding, size - 1)
    return dict(two_d=two_d, c_in=c_in, c_out=c_out, k=k, stride=stride, dilation=dilation, groups=groups,
                padding=padding, mode=mode, size=size, bias=draw(st.booleans()), batch=draw(st.integers(1, 5)),
                seed=draw(st.integers(0, 2**31 - 1)))


@FAST
@given(conv_case())
def test_conv_layers(case):
    torch.manual_seed(case["seed"])
    cls = nn.Conv2d if case["two_d"] else nn.Conv1d
    conv = cls(case["c_in"], case["c_out"], case["k"], stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
               groups=case["groups"], bias=case["bias"], padding_mode=case["mode"]).double()
    shape = (case["batch"], case["c_in"]) + ((case["size"],) * (2 if case["two_d"] else 1))
    x = torch.randn(*shape, dtype=torch.float64)
    model = ConvNet(conv, x[:1]).double()
    check_against_loop(model, x, torch.randint(0, 3, (case["batch"],)))


@pytest.mark.parametrize("grouped", [True, False])
def test_both_conv_routes(monkeypatch, grouped):
    """Force the grouped-convolution route and the unfold + matmul (+ contraction) route on the same net."""
    monkeypatch.setattr(conv_route, "GROUPED_MIN_POSITIONS", 1 if grouped else 10**9)
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    x = torch.randn(5, 4, 5, 5, dtype=torch.float64)
    check_against_loop(ConvNet(conv, x[:1]).double(), x, torch.randint(0, 3, (5,)))


@pytest.mark.parametrize("size, kw", [
    (2, dict(kernel_size=3, padding=1)),  # CIFAR AlexNet conv3-5: 4 offsets see one position, 4 see two, 1 sees all
    (1, dict(kernel_size=3, padding=1, stride=2)),  # one offset sees the pixel, eight read only padding
    (3, dict(kernel_size=3, padding=2, dilation=2, groups=2)),
    (4, dict(kernel_size=5, padding=2)),  # CIFAR AlexNet conv2: every offset sees 4+ positions (no split)
])
def test_padding_offsets_as_outer_products(monkeypatch, size, kw):
    """Kernel offsets that read real input at one output position (or none) are summed from factors."""
    monkeypatch.setattr(conv_route, "GROUPED_MIN_POSITIONS", 10**9)
    torch.manual_seed(size)
    conv = nn.Conv2d(4, 6, **kw).double()
    x = torch.randn(3, 4, size, size, dtype=torch.float64)
    src = conv_route._source_pixels(conv_route._geometry(conv), (size, size), conv.padding, x.device)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).reshape(3, 4, src.shape[0], src.shape[1])
    for k, p in (src >= 0).nonzero().tolist():  # the map agrees with a direct unfold of the input
        assert torch.equal(cols[:, :, k, p], x.flatten(2)[:, :, src[k, p]])
    assert not cols[:, :, src < 0].any()
    check_against_loop(ConvNet(conv, x[:1]).double(), x, torch.randint(0, 3, (3,)))


def test_patches_stay_within_the_budget(monkeypatch):
    """The patches made at once (all offsets, or only the dense ones) fit in the budget, whatever the batch."""
    monkeypatch.setattr(conv_route, "GROUPED_MIN_POSITIONS", 10**9)
    made = []
    real = conv_route.outer_chunk_sums

    def spy(g, A, plan, m):
        def patches(b0, b1):
            P = A(b0, b1)
            assert P.shape[2] == m
            made.append((b1 - b0, P.numel() * P.element_size()))
            return P
        return real(g, patches, plan, m)

    monkeypatch.setattr(conv_route, "outer_chunk_sums", spy)
    torch.manual_seed(0)
    for conv in (nn.Conv2d(64, 8, 7, padding=3), nn.Conv2d(64, 8, 3, padding=1)):  # 1 of 49 / 5 of 9 offsets dense
        made.clear()
        x = torch.randn(256, 64, 2, 2)
        per_sample_grad_stats(ConvNet(conv, x[:1]), x, torch.randint(0, 3, (256,)), budget_mb=0.25)
        assert made and max(bytes_ for _, bytes_ in made) <= 0.25 * 2**20 / 2
        assert sum(n for n, _ in made) == 256  # every sample once, in several blocks
        assert len(made) > 1


@FAST
@given(st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_batchnorm_in_eval(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5),
                          nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    randomise_bn(model, gen)
    model.train()
    stats_before = [b.clone() for b in model.buffers()]
    x = torch.randn(batch, 2, 6, 6, dtype=torch.float64)
    check_against_loop(model, x, torch.randint(0, 3, (batch,)))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats_before, model.buffers()))  # eval mode: running stats untouched


@FAST
@given(st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_resnet(batch, seed):
    torch.manual_seed(seed)
    model = build("resnet", 10, depth=8, input_size=8).double()
    randomise_bn(model, torch.Generator().manual_seed(seed))
    check_against_loop(model, torch.randn(batch, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (batch,)))


@FAST
@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_small_cnn(batch, seed):
    torch.manual_seed(seed)
    model = build("cnn", 10, in_channels=1, input_size=8).double()
    check_against_loop(model, torch.randn(batch, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (batch,)))


def test_alexnet_with_inplace_relu():
    """AlexNet: in-place ReLUs after every conv, few output positions (the contraction route)."""
    torch.manual_seed(0)
    model = build("alexnet", 10).double()
    check_against_loop(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (2,)))


@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_linear_on_sequences(batch, steps, seed):
    torch.manual_seed(seed)

    class SeqNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.proj(x)).mean(1))

    check_against_loop(SeqNet().double(), torch.randn(batch, steps, 3, dtype=torch.float64), torch.randint(0, 2, (batch,)))


# ---------------------------------------------------------------- batch independence, outputs, loss, model state


def test_rows_do_not_depend_on_batch_or_budget():
    torch.manual_seed(3)
    model = build("resnet", 10, depth=8, input_size=8).double()
    randomise_bn(model, torch.Generator().manual_seed(3))
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    whole = per_sample_features(model, x, y)
    parts = [per_sample_features(model, x[:3], y[:3]), per_sample_features(model, x[3:], y[3:])]
    tiny = per_sample_features(model, x, y, budget_mb=1e-6)  # one sample per chunk
    for kind in ("grad", "out"):
        for name in whole[kind]:
            split = torch.cat([p[kind][name] for p in parts])
            assert torch.allclose(split, whole[kind][name], rtol=1e-10, atol=1e-12)
            assert torch.allclose(tiny[kind][name], whole[kind][name], rtol=1e-10, atol=1e-12)
    assert torch.allclose(torch.cat([p["loss"] for p in parts]), whole["loss"])


def test_output_stats_and_loss():
    torch.manual_seed(4)
    model = build("cnn", 10, in_channels=1, input_size=8).double()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
             for n in audited_layers(model)]
    with torch.no_grad():
        logits = model.eval()(x)
    for h in hooks:
        h.remove()
    res = per_sample_features(model, x, y)
    assert torch.allclose(res["loss"], F.cross_entropy(logits, y, reduction="none"), rtol=1e-12)
    assert list(res["out"]) == audited_layers(model)
    for name, act in seen.items():
        assert_stats_close(res["out"][name], scipy_stats(act.flatten(1)))


def test_output_stats_float32_before_inplace_relu():
    torch.manual_seed(5)
    model = build("alexnet", 10)
    x = torch.randn(3, 3, 32, 32)
    seen = {}
    first = model.features[0]
    h = first.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.detach().clone()))  # runs before ReLU(inplace)
    res = per_sample_features(model, x, torch.randint(0, 10, (3,)))
    h.remove()
    assert (seen["a"] < 0).any()
    assert_stats_close(res["out"]["features.0"], scipy_stats(seen["a"].flatten(1)), rtol=1e-5)


def test_model_state_restored():
    torch.manual_seed(6)
    model = build("cnn", 10, in_channels=1, input_size=8)
    model.fc1.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    model.train()
    model.fc2.eval()
    per_sample_features(model, torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    assert model.training and model.conv1.training and not model.fc2.training
    assert not model.fc1.weight.requires_grad and model.conv2.weight.requires_grad
    assert torch.equal(model.conv1.weight.grad, torch.ones_like(model.conv1.weight))
    assert model.conv2.weight.grad is None


def test_layer_not_reaching_the_loss_has_zero_gradient():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    res = per_sample_features(Branchy().double(), torch.randn(3, 3, dtype=torch.float64), torch.tensor([0, 1, 0]))
    assert (res["grad"]["unused"] == 0).all() and (res["grad"]["used"][:, 4] > 0).all()


def test_float32_overflow_falls_back_to_float64():
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3)
    x = torch.randn(2, 2, 6, 6) * 1e11  # weight-gradient entries ~1e12: x**4 overflows float32
    model = ConvNet(conv, x[:1])
    fast = per_sample_grad_stats(model, x, torch.tensor([0, 1]), layers=["conv"])["conv"]
    ref = reference_grad_stats(model, x, torch.tensor([0, 1]), layers=["conv"])["conv"]
    assert torch.isfinite(fast).all()
    assert_stats_close(fast, ref, rtol=1e-3)


# ---------------------------------------------------------------- errors and columns


def test_shared_module_is_an_error():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(torch.relu(self.lin(x)))

    model = Shared()
    with pytest.raises(LayerleakError, match="more than once"):
        per_sample_grad_stats(model, torch.randn(2, 4), torch.tensor([0, 1]))
    assert not model._forward_hooks  # hooks removed after the error


def test_inplace_change_of_a_saved_input_is_an_error():
    class Clobber(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(1, 2, 3, padding=1)
            self.c2 = nn.Conv1d(2, 2, 3, padding=1)

        def forward(self, x):
            h = self.c1(x)
            z = self.c2(h)
            h.mul_(2)
            return (z + h).mean(2)

    with pytest.raises(LayerleakError, match="in place"):
        per_sample_grad_stats(Clobber(), torch.randn(2, 1, 5), torch.tensor([0, 1]))


def test_bad_layers_are_errors():
    model = build("cnn", 10, in_channels=1, input_size=8)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(LayerleakError, match="not a module"):
        per_sample_grad_stats(model, x, y, layers=["nope"])
    with pytest.raises(LayerleakError, match="MaxPool2d"):
        per_sample_grad_stats(model, x, y, layers=["pool"])


def test_feature_columns_and_table():
    model = build("cnn", 10, in_channels=1, input_size=8)
    layers = audited_layers(model)
    res = per_sample_features(model, torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    names = feature_columns(layers)
    assert names[:7] == [f"grad.conv1.{s}" for s in STATS] and names[-1] == "out.fc2.skewness"
    assert len(names) == 2 * 7 * len(layers)
    cols = features_to_columns(res, layers)
    assert list(cols) == ["loss"] + names
    assert all(c.dtype == np.float64 and c.shape == (3,) for c in cols.values())
    assert np.array_equal(cols["grad.fc1.l2"], res["grad"]["fc1"][:, 4].numpy())


# ---------------------------------------------------------------- compiled reductions, GPU


@pytest.mark.slow
def test_compiled_reductions_match_eager():
    torch.manual_seed(8)
    model = build("resnet", 10, depth=8, input_size=8).double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
    eager = per_sample_features(model, x, y, compile=False)
    compiled = per_sample_features(model, x, y, compile=True)
    for kind in ("grad", "out"):
        for name in eager[kind]:
            assert_stats_close(compiled[kind][name], eager[kind][name], rtol=1e-8)


GPU_CASES = (("resnet", dict(depth=8), 3, 16), ("alexnet", {}, 3, 32), ("cnn", {}, 3, 16),
             ("cnn", dict(in_channels=1), 1, 16))  # 1 channel: the default config's per-sample depthwise route


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(dtype):
    """float64: the CUDA routes agree with the CPU to 1e-7. float32: to 1e-4, which TF32 (~1e-3, cuDNN's
    default for convolutions) would break: features must not depend on the device."""
    torch.manual_seed(9)
    for arch, kw, channels, size in GPU_CASES:
        model = build(arch, 10, input_size=size, **kw).to(dtype)
        randomise_bn(model, torch.Generator().manual_seed(9))
        x, y = torch.randn(6, channels, size, size, dtype=dtype), torch.randint(0, 10, (6,))
        cpu = per_sample_features(model, x, y)
        gpu = per_sample_features(model.cuda(), x.cuda(), y.cuda(), budget_mb=1)
        model.cpu()
        assert torch.allclose(gpu["loss"].cpu(), cpu["loss"], rtol=1e-10 if dtype == torch.float64 else 1e-5)
        for kind in ("grad", "out"):
            for name in cpu[kind]:
                assert gpu[kind][name].is_cuda
                if dtype == torch.float64:
                    assert_stats_close(gpu[kind][name], cpu[kind][name], rtol=1e-7)
                else:  # float32 sums in another order: kurtosis/skewness near 0 get an absolute slack
                    got, want = gpu[kind][name].cpu(), cpu[kind][name]
                    scale = torch.cat([want[:, 4:5].abs().expand(-1, 5) * 1e-6, torch.full((len(want), 2), 1e-4, dtype=want.dtype)], 1)
                    assert ((got - want).abs() <= 1e-4 * want.abs() + scale).all(), (arch, kind, name, got, want)


def test_full_fp32_on_cuda_restores_the_flags():
    """Set and restored without a GPU: the flags are process-wide settings."""
    from mia_tasks.gradstats.recorder import _full_fp32

    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, mm.fp32_precision
    with _full_fp32(torch.device("cuda")):
        assert (conv.fp32_precision, mm.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, mm.fp32_precision) == before
    with _full_fp32(torch.device("cpu")):
        assert (conv.fp32_precision, mm.fp32_precision) == before


def test_grad_requiring_tensor_outside_the_parameters():
    """A model whose graph does not start at a frozen parameter (a plain tensor attribute requiring grad)."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.ones(4, dtype=torch.float64, requires_grad=True)  # not an nn.Parameter
            self.l1 = nn.Linear(4, 5)
            self.l2 = nn.Linear(5, 3)

        def forward(self, x):
            return self.l2(torch.tanh(self.l1(x * self.scale)))

    torch.manual_seed(10)
    check_against_loop(Scaled().double(), torch.randn(4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))


# ---------------------------------------------------------------- the layer-type registry


class Scale(nn.Module):
    """An elementwise weight w ⊙ x: a layer family the package does not know."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.weight


def test_a_registered_layer_family_is_audited(monkeypatch):
    """A new layer type takes part once a route is registered for it (each sample's gradient is g ⊙ a)."""
    monkeypatch.setattr(registry, "LAYER_STATS", dict(registry.LAYER_STATS))  # registrations end with the test
    torch.manual_seed(11)
    model = nn.Sequential(Scale(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    with pytest.raises(LayerleakError, match="Scale; per-sample gradient statistics support"):
        per_sample_grad_stats(model, x, y, layers=["0", "2"])

    @registry.register_layer_stats(Scale)
    def scale_grad_sums(module, saved, g, plan):
        return sums_of(g * saved.input)

    assert audited_layers(model) == ["0", "2"]  # the audited layers follow the registry

    fast = per_sample_grad_stats(model, x, y, layers=["0", "2"])
    ref = reference_grad_stats(model, x, y, layers=["0", "2"], stats=scipy_stats)
    for name in ("0", "2"):
        assert_stats_close(fast[name], ref[name])
    assert registry.layer_stats_for(nn.LazyLinear(3)).grad_sums is registry.LAYER_STATS[nn.Linear].grad_sums  # subclasses


# ---------------------------------------------------------------- columns constant by construction


@pytest.mark.parametrize("bias", [True, False])
def test_logits_layer_gradient_mean_is_an_exact_zero(bias):
    """Softmax cross-entropy: each sample's logit gradient sums to 0, so the mean of the logits layer's
    weight(+bias) gradient is 0; the loop gives rounding noise there, the fast path an exact 0."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4, bias=bias))
    x, y = torch.randn(9, 6), torch.randint(0, 4, (9,))
    res = per_sample_features(model, x, y)
    assert res["constant_columns"] == ["grad.2.mean"]
    mean = STATS.index("mean")
    assert (res["grad"]["2"][:, mean] == 0).all() and (res["grad"]["0"][:, mean] != 0).all()
    ref = reference_grad_stats(model, x, y)
    mean_abs = {n: ref[n][:, STATS.index("l1")] / sum(p.numel() for p in model.get_submodule(n).parameters()) for n in ref}
    assert (ref["2"][:, mean].abs() <= 1e-5 * mean_abs["2"]).all()  # rounding noise of a zero
    assert (ref["0"][:, mean].abs() > 1e-3 * mean_abs["0"]).any()  # a real statistic


def test_only_the_layer_whose_output_is_the_logits_is_constant():
    """Logits computed from the last Linear layer's output (here squared) do not make its mean constant."""
    class Squared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x) ** 2

    torch.manual_seed(13)
    res = per_sample_features(Squared(), torch.randn(6, 5), torch.randint(0, 3, (6,)))
    assert res["constant_columns"] == [] and (res["grad"]["fc"][:, STATS.index("mean")] != 0).all()
    single = per_sample_features(nn.Linear(5, 3), torch.randn(6, 5), torch.randint(0, 3, (6,)), layers=[""])
    assert single["constant_columns"] == ["grad..mean"]  # a one-layer model: its (cloned) output is the logits


def test_default_features_do_not_depend_on_the_batch_size():
    """Must show 5: the default target (digits, small CNN trained as the default config trains it) gives the
    same features, to 1e-5 of each column's scale, for feature batch sizes 1, 7 and 128, and no column of
    rounding noise: the one constant by construction is an exact zero in every batching. (With the loss in
    float32 the worst column, a skewness, differed by 3e-5; the fc2 gradient mean changed about tenfold.)"""
    from mia_tasks.config import DatasetConfig, TrainConfig
    from mia_tasks.data import load_dataset
    from mia_tasks.train import train_epochs

    data = load_dataset(DatasetConfig())
    torch.manual_seed(0)  # as mia_tasks.target builds the default target (seed 0)
    model = build("cnn", data.num_classes, in_channels=data.in_channels, input_size=data.input_size)
    for _ in train_epochs(model, data, np.arange(70), TrainConfig(), seed=0, device=torch.device("cpu")):
        pass
    ids = np.r_[np.arange(70), data.n_train + np.arange(70)]  # 70 members, 70 test samples
    x, y = data.images(ids)
    layers = audited_layers(model)
    runs = {bs: features_in_batches(model, x, y, layers, bs, prepare=data.normalise) for bs in (1, 7, 128)}
    constant = runs[128][1]
    assert constant == ["grad.fc2.mean"] and all(c == constant for _, c in runs.values())
    cols = runs[128][0]
    assert list(cols) == ["loss", *feature_columns(layers)]
    worst = {}
    for bs in (1, 7):
        for name, want in cols.items():
            got = runs[bs][0][name]
            scale = np.abs(want).max()
            worst[name] = max(worst.get(name, 0.0), np.abs(got - want).max() / scale if scale else np.abs(got).max())
    assert all(runs[bs][0]["grad.fc2.mean"].tolist() == [0.0] * len(ids) for bs in runs)
    bad = {k: v for k, v in worst.items() if v > 1e-5}
    assert not bad, bad
