"""Backbones and FPN on CUDA: same features as on CPU, training step with frozen stages."""

from __future__ import annotations

import copy

import pytest
import torch

from structured.backbones.fpn import FPN
from structured.registry import BACKBONES

pytestmark = pytest.mark.gpu
CASES = {
    "resnet18": {"norm_layer": "frozen_bn", "frozen_stages": 2},
    "mobilenet_v3_small": {"out_levels": ("c5_entry", "c5"), "frozen_stages": 3},
    "efficientnet_b0": {"norm_layer": "gn", "frozen_stages": 1},
    "googlenet": {"frozen_stages": 2},
    "fractalnet": {
        "channels": (8, 16, 16, 32, 32),
        "frozen_stages": 1,
        "drop_path": 0.0,
        "global_drop_ratio": 0.0,
    },
}


@pytest.fixture(autouse=True)
def exact_float32() -> None:
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_cpu_and_trains(name: str) -> None:
    torch.manual_seed(0)
    cpu = BACKBONES.build(name, **CASES[name]).eval()
    fpn = FPN(in_channels=cpu.out_channels, in_strides=cpu.strides, out_channels=32).eval()
    gpu, gpu_fpn = copy.deepcopy(cpu).cuda(), copy.deepcopy(fpn).cuda()
    images = torch.rand(2, 3, 75, 83)
    with torch.no_grad():
        expected = fpn(cpu(images))
        got = gpu_fpn(gpu(images.cuda()))
    for level, feature in expected.items():
        torch.testing.assert_close(got[level].cpu(), feature, rtol=1e-4, atol=1e-4, msg=f"{name} {level}")
    gpu.train(), gpu_fpn.train()
    sum(v.square().mean() for v in gpu_fpn(gpu(images.cuda())).values()).backward()
    frozen = {id(p) for path in gpu.frozen_modules for p in gpu.trunk.get_submodule(path).parameters()}
    for parameter in gpu.parameters():
        assert (parameter.grad is None) == (id(parameter) in frozen)
