"""Pretrained targets: checkpoints written the way old PyTorch wrote them load and are audited end to end.

Published CIFAR checkpoints (e.g. the seed study's pretrained ResNets) were saved by PyTorch before
BatchNorm had ``num_batches_tracked``, from a DataParallel model (``module.`` prefixes), wrapped as
``{'state_dict': ..., 'best_prec1': ...}``, in the legacy non-zip format.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers import TINY, run_cli, tiny_args
from torch import nn

from flows import presets
from mia_tasks.config import TrainConfig
from mia_tasks.data import load_dataset
from mia_tasks.errors import LayerleakError
from mia_tasks.models import build, load_checkpoint
from mia_tasks.train import accuracy, train_epochs

RESNET = ["model.arch=resnet", "model.options={depth: 8}", "sweep.players={stem: [conv1], head: [fc]}"]  # 3 coalitions
USER_MODEL = '''
from torch import nn


def make(num_classes, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


def save_like_old_pytorch(model: nn.Module, path: Path, metadata: bool = True) -> None:
    """What ``torch.save({'state_dict': DataParallel(model).state_dict(), 'best_prec1': ...})`` wrote in PyTorch 0.4.0.

    No ``num_batches_tracked`` buffers; ``_metadata`` versions 1 (BatchNorm's version 2 came with the counter),
    or no ``_metadata`` at all as before 0.4; keys under the DataParallel wrapper's ``module.``; legacy format.
    """
    state = OrderedDict((f"module.{k}", v.detach().clone()) for k, v in model.state_dict().items()
                        if not k.endswith("num_batches_tracked"))
    if metadata:
        state._metadata = OrderedDict([("", {"version": 1})] + [
            (f"module.{name}" if name else "module", {"version": 1}) for name, _ in model.named_modules()])
    torch.save({"state_dict": state, "best_prec1": 91.25, "epoch": 180}, path, _use_new_zipfile_serialization=False)


def _tiny_cfg():
    """The config ``layerleak run`` resolves from the tiny test arguments (the default preset + TINY)."""
    return presets.load(None, TINY)


def _pretrained(arch: str, data, **options) -> nn.Module:
    """A model briefly trained from another seed than the run's, so its weights and BatchNorm statistics are its own."""
    model = build(arch, data.num_classes, data.in_channels, input_size=data.input_size, **options)
    for _ in train_epochs(model, data, list(range(120)), TrainConfig(epochs=3, batch_size=16, lr=0.05), seed=11,
                          device=torch.device("cpu")):
        pass
    return model.eval()


@pytest.mark.parametrize("metadata", [True, False])
def test_old_pytorch_resnet_checkpoint_loads(tmp_path, metadata):
    src = build("resnet", 10, depth=8)
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics a trained net would have
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    save_like_old_pytorch(src, tmp_path / "old.th", metadata)
    dst = load_checkpoint(build("resnet", 10, depth=8), tmp_path / "old.th")
    for k, v in src.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert dst.state_dict()[k].item() == 0  # BatchNorm fills the counter old files lack
        else:
            assert torch.equal(dst.state_dict()[k], v), k


def test_missing_counter_of_a_current_file_is_refused(tmp_path):
    """PyTorch's semantics, not a blanket pass: a state dict that says it is BatchNorm version 2 must hold the counter."""
    state = build("resnet", 10, depth=8).state_dict()
    del state["bn1.num_batches_tracked"]
    torch.save(state, tmp_path / "ck.pt")
    with pytest.raises(LayerleakError, match=r"does not fit the model: missing keys \['bn1.num_batches_tracked'\]$"):
        load_checkpoint(build("resnet", 10, depth=8), tmp_path / "ck.pt")


def test_misfit_lists_are_short_and_counted(tmp_path):
    torch.save(build("resnet", 3, depth=14).state_dict(), tmp_path / "deeper.pt")
    with pytest.raises(LayerleakError) as e:
        load_checkpoint(build("resnet", 10, depth=8), tmp_path / "deeper.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert "unexpected keys ['layer1.1.conv1.weight', 'layer1.1.bn1.weight', 'layer1.1.bn1.bias'] and 33 more" in msg  # 36 keys of three extra blocks
    assert "shape mismatch ['fc.weight (3, 64) vs (10, 64)', 'fc.bias (3,) vs (10,)']" in msg
    assert "missing" not in msg


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint\n" * 20, "zip-truncated", "json"])
@pytest.mark.parametrize("trusted", [False, True])
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, content, trusted):
    path = tmp_path / "ck.pt"
    if content == "zip-truncated":
        torch.save(build("cnn", 10).state_dict(), path)
        content = path.read_bytes()[:2000]
    elif content == "json":
        content = json.dumps({"weights": [1, 2, 3]}).encode()
    path.write_bytes(content)
    with pytest.raises(LayerleakError, match=rf"^checkpoint {path} is not a PyTorch checkpoint \(.+\)$") as e:
        load_checkpoint(build("cnn", 10), path, trusted=trusted)
    assert "trust_checkpoint" not in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_without_a_state_dict_names_what_it_found(tmp_path):
    torch.save({"epoch": 3, "best_prec1": 0.5}, tmp_path / "ck.pt")
    with pytest.raises(LayerleakError, match=r"holds no state dict \(found a dict with keys \['epoch', 'best_prec1'\]\)"):
        load_checkpoint(build("cnn", 10), tmp_path / "ck.pt")


def test_whole_pickled_module_loads_when_trusted(tmp_path):
    src = build("cnn", 10)
    torch.save({"net": src}, tmp_path / "ck.pt")
    with pytest.raises(LayerleakError, match="model.trust_checkpoint=true"):
        load_checkpoint(build("cnn", 10), tmp_path / "ck.pt")
    dst = load_checkpoint(build("cnn", 10), tmp_path / "ck.pt", trusted=True)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def _one_error_line(proc, needle: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("layerleak: error: ") and needle in lines[0], proc.stderr
    return lines[0]


@pytest.mark.parametrize("kind", ["resnet", pytest.param("user", marks=pytest.mark.slow)])
def test_old_checkpoint_audited_end_to_end(ray_head, tmp_path, kind):
    """``layerleak run`` on a pretrained target: no training, its own weights measured, features and a sweep made."""
    cfg = _tiny_cfg()
    data = load_dataset(cfg.dataset)
    if kind == "resnet":
        model, sets = _pretrained("resnet", data, depth=8), RESNET
    else:
        (tmp_path / "usermodel.py").write_text(USER_MODEL)
        arch = f"{tmp_path / 'usermodel.py'}:make"
        model, sets = _pretrained(arch, data), [f"model.arch={arch}"]
    save_like_old_pytorch(model, tmp_path / "old.th")
    out = tmp_path / "run"
    proc = run_cli("run", *tiny_args(out, *sets, f"model.checkpoint={tmp_path / 'old.th'}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    metrics = json.loads((out / "target" / "metrics.json").read_text())
    assert metrics["epochs"] == 0 and metrics["checkpoint"] == str(tmp_path / "old.th")
    assert metrics["test_accuracy"] == pytest.approx(accuracy(model, data, data.test_x, data.test_y, torch.device("cpu")))
    assert metrics["members"] + metrics["test_size"] == 60 + 80
    assert not (out / "target" / "model.pt").exists()  # nothing trained, nothing saved
    assert list((out / "features").glob("part-*.parquet")) and list((out / "sweep").glob("part-*.parquet"))
    lines = proc.stdout.splitlines()
    summary = next(i for i, l in enumerate(lines) if l.startswith("[layerleak] target: train acc"))
    measured = [i for i, l in enumerate(lines) if l.startswith("[layerleak] measure target: ")]
    assert measured and max(measured) < summary and lines[max(measured)].startswith("[layerleak] measure target: 140/140 images")
    assert "train target" not in proc.stdout
