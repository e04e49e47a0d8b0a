"""Loading torchvision classification checkpoints into our backbones: same features, checked keys."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from structured.registry import BACKBONES

TOLERANCE = 1e-5
# torchvision module whose output is each level, written from torchvision's definitions.
REFERENCE_NODES = {
    "resnet18": {"c1": "relu", "c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"},
    "vgg11_bn": {"c1": "features.6", "c2": "features.13", "c3": "features.20", "c4": "features.27", "c5": "features.28"},
    "alexnet": {"c2": "features.1", "c3": "features.4", "c4": "features.11", "c5": "features.12"},
    "mobilenet_v2": {"c1": "features.1", "c2": "features.3", "c3": "features.6", "c4": "features.13", "c5": "features.18"},
    "mobilenet_v3_small": {
        "c1": "features.0", "c2": "features.1", "c3": "features.3", "c4": "features.8", "c5": "features.12",
    },
    "efficientnet_b0": {"c1": "features.1", "c2": "features.2", "c3": "features.3", "c4": "features.5", "c5": "features.8"},
    "googlenet": {"c1": "conv1", "c2": "conv3", "c3": "inception3b", "c4": "inception4e", "c5": "inception5b"},
    "inception_v3": {
        "c1": "Conv2d_2b_3x3", "c2": "Conv2d_4a_3x3", "c3": "Mixed_5d", "c4": "Mixed_6e", "c5": "Mixed_7c",
    },
}  # fmt: skip
# torchvision builds these two with transform_input=True when it loads its ImageNet weights; so do we.
TORCHVISION_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": True},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": True},
}


def seeded_torchvision_model(arch: str, seed: int = 0) -> nn.Module:
    """torchvision's ``arch`` with seeded random weights and batch-norm statistics of random images.

    Statistics measured on data keep activations O(1) in eval mode, so an absolute tolerance means
    the same thing at every level.
    """
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, **TORCHVISION_OPTIONS.get(arch, {}))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(2, 3, 80, 80))
    return model.eval()


def reference_features(
    model: nn.Module, nodes: dict[str, str], images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Outputs of torchvision's named modules during its own forward pass (forward hooks)."""
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda module, inputs, output, level=level: captured.__setitem__(level, output.clone())
        )
        for level, path in nodes.items()
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return captured


@pytest.mark.parametrize("arch", list(REFERENCE_NODES))
def test_torchvision_checkpoint_gives_torchvision_features(arch: str, tmp_path: Path) -> None:
    model = seeded_torchvision_model(arch)
    checkpoint = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), checkpoint)
    ours = BACKBONES.build(arch, pretrained=str(checkpoint)).eval()
    images = torch.rand(2, 3, 80, 91, generator=torch.Generator().manual_seed(3))
    expected = reference_features(model, REFERENCE_NODES[arch], images)
    with torch.no_grad():
        got = ours(images)
    assert list(got) == list(expected)
    for level, feature in got.items():
        torch.testing.assert_close(feature, expected[level], rtol=0, atol=TOLERANCE, msg=f"{arch} {level}")


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return seeded_torchvision_model("resnet18").state_dict()


def save(state: dict, path: Path) -> str:
    torch.save(state, path)
    return str(path)


def test_classifier_head_and_wrapped_or_prefixed_checkpoints(resnet18_state: dict, tmp_path: Path) -> None:
    model = seeded_torchvision_model("resnet18")
    images = torch.rand(1, 3, 64, 64)
    classifier = BACKBONES.build(
        "resnet18", classifier=True, pretrained=save(resnet18_state, tmp_path / "a.pth")
    )
    with torch.no_grad():
        torch.testing.assert_close(classifier.eval().classify(images), model(images), rtol=0, atol=TOLERANCE)
    wrapped = BACKBONES.build("resnet18", pretrained=save({"state_dict": resnet18_state}, tmp_path / "b.pth"))
    reloaded = BACKBONES.build("resnet18", pretrained=save(wrapped.state_dict(), tmp_path / "c.pth"))
    for key, value in wrapped.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="classifier=True"):
        wrapped.classify(images)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda sd: sd.pop("layer1.0.conv1.weight"), KeyError, "missing keys 'layer1.0.conv1.weight'"),
        (
            lambda sd: sd.__setitem__("layer9.weight", torch.zeros(1)),
            KeyError,
            "unexpected keys 'layer9.weight'",
        ),
        (
            lambda sd: sd.__setitem__("conv1.weight", torch.zeros(64, 3, 3, 3)),
            ValueError,
            r"'conv1.weight' has shape",
        ),
    ],
)
def test_bad_checkpoint_is_an_error_naming_the_key(
    resnet18_state: dict, tmp_path: Path, edit, error: type, message: str
) -> None:
    state = dict(resnet18_state)
    edit(state)
    with pytest.raises(error, match=message):
        BACKBONES.build("resnet18", pretrained=save(state, tmp_path / "bad.pth"))


def test_classifier_with_other_class_count_is_an_error(resnet18_state: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'fc.weight'"):
        BACKBONES.build(
            "resnet18", classifier=True, num_classes=10, pretrained=save(resnet18_state, tmp_path / "a.pth")
        )


def test_missing_checkpoint_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        BACKBONES.build("resnet18", pretrained=str(tmp_path / "nothing.pth"))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and no network."""

    def no_network(url: str, destination: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_imagenet_weights_offline_error_names_the_path_then_load_from_cache(
    offline_hub: Path, resnet18_state: dict
) -> None:
    expected_path = offline_hub / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError) as raised:
        BACKBONES.build("resnet18", pretrained="imagenet")
    assert str(expected_path) in str(raised.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(raised.value)
    torch.save(resnet18_state, expected_path)
    ours = BACKBONES.build("resnet18", pretrained="imagenet:IMAGENET1K_V1")
    torch.testing.assert_close(ours.trunk.conv1.weight, resnet18_state["conv1.weight"], rtol=0, atol=0)


def test_imagenet_weights_for_our_own_nets_or_unknown_tags_are_errors(offline_hub: Path) -> None:
    with pytest.raises(ValueError, match="no ImageNet weights for 'mobilenet_v1'"):
        BACKBONES.build("mobilenet_v1", pretrained="imagenet")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        BACKBONES.build("resnet18", pretrained="imagenet:IMAGENET9K")
