"""The target stage: accuracy measured in inference mode, progress printed before the stage's summary."""

from __future__ import annotations

import json

import torch
from helpers import TINY, run_cli, tiny_args
from torch import nn

from flows import presets
from mia_tasks.data import load_dataset
from mia_tasks.models import build
from mia_tasks.train import accuracy, correct_batches, for_inference


class _Probe(nn.Module):
    """Predicts class 0 and records, per call, whether inference mode was on and the batch size."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[bool, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_inference_mode_enabled(), len(x)))
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 4).float()


def test_accuracy_in_inference_mode_and_batches():
    data = load_dataset(presets.load(None, TINY).dataset)
    probe = _Probe()
    acc = accuracy(probe, data, data.test_x, data.test_y, torch.device("cpu"), batch=32)
    assert acc == (data.test_y == 0).float().mean().item()
    assert probe.calls == [(True, 32), (True, 32), (True, 16)]  # 80 test images
    assert [n for n, _ in correct_batches(probe, data, data.test_x, data.test_y, torch.device("cpu"), batch=50)] == [50, 30]


class _Flattens(nn.Module):
    """A user model whose ``.view`` needs contiguous activations (channels-last ones raise)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        return self.fc(h.view(len(h), -1))


def test_inference_copy_is_used_only_where_it_gives_the_same_logits():
    torch.manual_seed(0)
    resnet = build("resnet", 4, 1, depth=8, input_size=8).eval()
    for m in resnet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 1, 8, 8)
    fast, fmt = for_inference(resnet, x)
    assert fast is not resnet and fmt == torch.channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # folded into the convolutions
    with torch.inference_mode():
        assert torch.allclose(fast(x.contiguous(memory_format=fmt)), resnet(x), rtol=1e-4, atol=1e-5)
    user = _Flattens().eval()
    assert for_inference(user, x) == (user, torch.contiguous_format)  # falls back, never fails


def test_progress_lines_come_before_the_stage_summary(ray_head, tmp_path):
    """The task's progress reaches the driver as the task's results, so the driver prints it in order, before
    ``[layerleak] target: Xs`` (a task's own prints arrive asynchronously, sometimes after it)."""
    out = tmp_path / "run"
    proc = run_cli("train", *tiny_args(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    epochs = [i for i, l in enumerate(lines) if l.startswith("[layerleak] train target: epoch ")]
    measured = [i for i, l in enumerate(lines) if l.startswith("[layerleak] measure target: ")]
    summary = next(i for i, l in enumerate(lines) if l.startswith("[layerleak] target: train acc"))
    stage = next(i for i, l in enumerate(lines) if l.startswith("[layerleak] target: ") and l.endswith("s") and i > summary)
    assert len(epochs) == 15 and lines[epochs[-1]].startswith("[layerleak] train target: epoch 15/15, loss ")
    assert max(epochs) < min(measured) and max(measured) < summary < stage
    assert lines[max(measured)].startswith("[layerleak] measure target: 140/140 images")
    metrics = json.loads((out / "target" / "metrics.json").read_text())
    assert metrics["epochs"] == 15 and metrics["measure_s"] >= 0 and (out / "target" / "model.pt").is_file()
