"""measure_speed on a tiny model: structure, call counts, what the description says (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from structured.evaluation.speed import STAGES, measure_speed


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.forward_calls = 0
        self.modes_seen: set[bool] = set()

    def forward(self, x):
        self.forward_calls += 1
        self.modes_seen.add(self.training)
        return self.conv(x)


class Counter:
    def __init__(self, function):
        self.function = function
        self.calls = 0

    def __call__(self, data):
        self.calls += 1
        return self.function(data)


def test_stages_are_called_once_per_pass_and_summarised():
    torch.manual_seed(0)
    model = TinyNet().train()
    images = [torch.rand(3, 16, 16) for _ in range(3)]
    preprocess = Counter(torch.stack)
    postprocess = Counter(lambda output: output.argmax(dim=1))
    result = measure_speed(
        model, images, preprocess=preprocess, postprocess=postprocess, warmup=2, iterations=5
    )
    assert preprocess.calls == postprocess.calls == model.forward_calls == 7
    assert model.modes_seen == {False} and model.training  # timed in eval mode, mode restored
    assert result.batch_size == 3 and result.iterations == 5 and result.warmup == 2
    assert set(result.stages) == set(STAGES)
    assert all(len(samples) == 5 for samples in result.samples_ms.values())
    for name in STAGES:
        stage = result.stages[name]
        assert stage.mean_ms > 0 and stage.median_ms > 0 and stage.p90_ms >= stage.median_ms
    total = [sum(result.samples_ms[s][i] for s in STAGES[:3]) for i in range(5)]
    assert result.samples_ms["total"] == pytest.approx(total)
    assert result.fps == pytest.approx(3 / (result.stages["total"].mean_ms / 1e3))
    assert result.peak_memory_mb > 0
    assert "Counter" in result.description and "batch size 3" in result.description
    json.dumps(result.as_dict())


def test_amp_and_defaults():
    model = TinyNet()
    batch = torch.rand(2, 3, 8, 8)
    result = measure_speed(model, batch, warmup=0, iterations=2, amp=True)
    assert result.amp_dtype == "bfloat16"
    assert result.stage_names["preprocess"].startswith("identity")
    assert "autocast bfloat16" in result.description
    assert measure_speed(model, batch, warmup=0, iterations=1).amp_dtype is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="iterations"):
        measure_speed(TinyNet(), torch.rand(1, 3, 8, 8), iterations=0)
    with pytest.raises(ValueError, match="batch_size"):
        measure_speed(TinyNet(), object(), preprocess=lambda _: torch.rand(1, 3, 8, 8), iterations=1)


@pytest.mark.gpu
def test_cuda_memory_and_sync():
    model = TinyNet().cuda()
    result = measure_speed(model, torch.rand(2, 3, 32, 32, device="cuda"), warmup=1, iterations=3, amp=True)
    assert result.device.startswith("cuda") and result.amp_dtype == "float16"
    assert result.peak_memory_mb > 0 and "CUDA" in result.memory_kind
