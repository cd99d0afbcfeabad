"""Architectures: forward passes, audited layers in forward order, groups, checkpoints and user factories."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mia_tasks.errors import LayerleakError
from mia_tasks.models import audited_layers, build, default_groups, load_checkpoint, param_count


@pytest.mark.parametrize("arch,kw,n_layers", [
    ("cnn", dict(num_classes=10, in_channels=1, input_size=8), 4),
    ("alexnet", dict(num_classes=100), 6),
    ("resnet", dict(num_classes=100, depth=20), 22),
    ("resnet", dict(num_classes=10, depth=8, input_size=16), 10),
])
def test_forward_and_layers(arch, kw, n_layers):
    model = build(arch, **kw).eval()
    x = torch.randn(3, kw.get("in_channels", 3), kw.get("input_size", 32), kw.get("input_size", 32))
    assert model(x).shape == (3, kw["num_classes"])
    layers = audited_layers(model, x)
    assert len(layers) == n_layers
    assert all(isinstance(model.get_submodule(l), (nn.Conv2d, nn.Linear)) for l in layers)
    assert isinstance(model.get_submodule(layers[-1]), nn.Linear)  # the classifier is last in forward order


def test_alexnet_layers_sum_to_total():
    model = build("alexnet", 100)
    layers = audited_layers(model)
    assert [type(model.get_submodule(l)).__name__ for l in layers] == ["Conv2d"] * 5 + ["Linear"]
    assert sum(param_count(model, l) for l in layers) == sum(p.numel() for p in model.parameters())


def test_forward_order_follows_execution_not_registration():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.body(x))

    m = Backwards()
    assert audited_layers(m) == ["head", "body"]
    assert audited_layers(m, torch.zeros(1, 3)) == ["body", "head"]


def test_resnet_default_groups_are_stem_stages_head():
    model = build("resnet", 10, depth=20)
    groups = default_groups(audited_layers(model))
    assert list(groups) == ["conv1", "layer1", "layer2", "layer3", "fc"]
    assert sum(len(v) for v in groups.values()) == 22


def test_unknown_arch_and_bad_options():
    with pytest.raises(LayerleakError, match="unknown model.arch 'vgg'"):
        build("vgg", 10)
    with pytest.raises(LayerleakError, match="depth must be 6n\\+2"):
        build("resnet", 10, depth=21)
    with pytest.raises(LayerleakError, match="no option"):
        build("cnn", 10, colour="red")


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module_prefix"])
def test_checkpoint_round_trip(tmp_path, wrap):
    src = build("cnn", 10, in_channels=1, input_size=8)
    state = src.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "ck.pt")
    dst = load_checkpoint(build("cnn", 10, in_channels=1, input_size=8), tmp_path / "ck.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_checkpoint_mismatch_names_keys(tmp_path):
    torch.save(build("cnn", 100, in_channels=1, input_size=8).state_dict(), tmp_path / "ck.pt")
    with pytest.raises(LayerleakError, match=r"shape mismatch \['fc2.weight"):
        load_checkpoint(build("cnn", 10, in_channels=1, input_size=8), tmp_path / "ck.pt")
    torch.save(build("alexnet", 10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(LayerleakError, match="missing keys \\['conv1.weight'"):
        load_checkpoint(build("cnn", 10, in_channels=1, input_size=8), tmp_path / "other.pt")
    with pytest.raises(LayerleakError, match="not found"):
        load_checkpoint(build("cnn", 10), tmp_path / "nope.pt")


class _Payload:
    pass


def test_checkpoint_with_pickled_objects_needs_trust(tmp_path):
    model = build("cnn", 10, in_channels=1, input_size=8)
    torch.save({"state_dict": model.state_dict(), "extra": _Payload()}, tmp_path / "ck.pt")
    with pytest.raises(LayerleakError, match="trust_checkpoint"):
        load_checkpoint(build("cnn", 10, in_channels=1, input_size=8), tmp_path / "ck.pt")
    load_checkpoint(build("cnn", 10, in_channels=1, input_size=8), tmp_path / "ck.pt", trusted=True)


def test_user_factory_from_file(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n"
        "def make(num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")
    model = build(f"{tmp_path}/mymodel.py:make", 5, in_channels=1, input_size=8)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    assert audited_layers(model) == ["1", "3"]
    with pytest.raises(LayerleakError, match="has no callable"):
        build(f"{tmp_path}/mymodel.py:nothing", 5)


def test_cnn_is_the_seed_studys_cnn():
    """On 32x32 RGB inputs the built-in ``cnn`` is the seed's CNN: conv 3->32 (3x3, padding 1), ReLU, max-pool 2,
    conv 32->64 (3x3, padding 1), ReLU, max-pool 2, linear 4096->128, ReLU, linear 128->classes."""
    model = build("cnn", 100)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {"conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
                      "fc1.weight": (128, 4096), "fc1.bias": (128,), "fc2.weight": (100, 128), "fc2.bias": (100,)}
    assert (model.conv1.padding, model.conv2.padding) == ((1, 1), (1, 1))
    assert audited_layers(model, torch.zeros(2, 3, 32, 32)) == ["conv1", "conv2", "fc1", "fc2"]
