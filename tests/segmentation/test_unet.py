"""What is special to the UNets: the original's layout, any registered encoder, backbone options, errors."""

from __future__ import annotations

import pytest
import torch

from structured.config import ConfigError, validate_section
from structured.registry import MODELS
from structured.segmentation.unet import EncoderSettings, UNetEncoder, build_original_unet, build_unet


def test_the_original_unet_has_the_papers_stages():
    model = MODELS.build("unet_original")
    assert model.backbone.out_channels == {"c0": 64, "c1": 128, "c2": 256, "c3": 512, "c4": 1024}
    assert model.backbone.strides == {"c0": 1, "c1": 2, "c2": 4, "c3": 8, "c4": 16}
    assert model.decoder.skips == ["c3", "c2", "c1", "c0"]
    assert [block.up.out_channels for block in model.decoder.blocks] == [512, 256, 128, 64]
    assert model.head.out_channels == 1 and model.size_divisible == 16


def test_plain_convolutions_without_norm_and_bilinear_upsampling():
    model = build_original_unet(num_classes=2, encoder={"width": 4, "depth": 2, "norm_layer": None},
                                decoder={"channels": [8, 4], "upsampling": "bilinear", "norm_layer": None})
    assert not any(isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for module in model.modules())
    assert all(block.up is None for block in model.decoder.blocks)
    prediction = model.predict([torch.rand(3, 13, 7)])[0]
    assert prediction["probabilities"].shape == (3, 13, 7)


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "vgg16_bn", "resnet34", "mobilenet_v2"])
def test_any_registered_backbone_is_an_encoder(encoder):
    torch.manual_seed(0)
    model = build_unet(num_classes=2, backbone={"name": encoder}, decoder={"channels": [16, 16, 8, 8, 8]})
    assert model.decoder.skips == ["c4", "c3", "c2", "c1", None] and model.size_divisible == 32
    losses = model([torch.rand(3, 45, 67)], [{"semantic": torch.randint(0, 3, (45, 67))}])
    sum(losses.values()).backward()
    assert model.predict([torch.rand(3, 45, 67)])[0]["mask"].shape == (45, 67)


def test_backbone_options_reach_the_encoder():
    model = build_unet(num_classes=2, backbone={"name": "resnet18", "frozen_stages": 2, "norm_layer": "frozen_bn"})
    frozen = [name for name, parameter in model.backbone.named_parameters() if not parameter.requires_grad]
    assert frozen and all(name.startswith(("trunk.conv1", "trunk.layer1")) for name in frozen)
    assert all(parameter.requires_grad for parameter in model.decoder.parameters())


def test_a_shallower_encoder_needs_fewer_decoder_blocks():
    model = build_unet(num_classes=3, backbone={"name": "resnet18", "out_levels": ["c1", "c2", "c3"]},
                       decoder={"channels": [32, 16, 8]})
    assert model.size_divisible == 8 and model.decoder.skips == ["c2", "c1", None]
    assert model.predict([torch.rand(3, 21, 30)])[0]["mask"].shape == (21, 30)
    with pytest.raises(ValueError, match=r"decoder.channels has 5 entries .* stride 8: give 3"):
        build_unet(num_classes=3, backbone={"name": "resnet18", "out_levels": ["c1", "c2", "c3"]})


@pytest.mark.parametrize(("settings", "message"), [
    ({"decoder": {"channels": [8, 8, 8, 8], "upsampling": "cubic"}}, "decoder.upsampling must be one of"),
    ({"decoder": {"channels": [8, 8, 8, 8], "norm_layer": "ln"}}, "decoder.norm_layer must be one of"),
    ({"encoder": {"width": 8, "norm_layer": "frozen_bn"}}, "encoder.norm_layer must be one of"),
    ({"encoder": {"width": 0}}, "encoder.width and encoder.depth must be >= 1"),
    ({"num_classes": 0}, "num_classes counts classes without the background"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build("unet_nuclei", **settings)


def test_recipe_keys_are_validated_part_by_part():
    with pytest.raises(ConfigError, match=r"unknown key 'chanels' in model.decoder.*Did you mean 'channels'"):
        validate_section({"name": "unet_resnet34", "decoder": {"chanels": [1]}}, MODELS, "model")
    with pytest.raises(ConfigError, match=r"'width' in model.encoder must be int"):
        validate_section({"name": "unet_nuclei", "encoder": {"width": "wide"}}, MODELS, "model")


@pytest.fixture(scope="module")
def small_binary():
    torch.manual_seed(0)
    return MODELS.build("unet_nuclei", encoder={"width": 4}, decoder={"channels": [8, 8, 8, 4]})


@pytest.mark.parametrize(("target", "message"), [
    ({"mask": torch.zeros(20, 30, dtype=torch.int64)}, "target 0 has no 'semantic'"),
    ({"semantic": torch.zeros(20, 31, dtype=torch.int64)}, r"image's size \[20, 30\], got torch.int64 \[20, 31\]"),
    ({"semantic": torch.zeros(20, 30)}, "must be an integer class map"),
    ({"semantic": torch.full((20, 30), 2)}, r"class indices \[2\] outside 0..1"),
])
def test_bad_targets_are_named(small_binary, target, message):
    with pytest.raises(ValueError, match=message):
        small_binary([torch.rand(3, 20, 30)], [target])


def test_bad_images_are_named(small_binary):
    with pytest.raises(ValueError, match=r"image 1 must be a float tensor \[3, H, W\]"):
        small_binary.predict([torch.rand(3, 8, 8), torch.rand(8, 8)])
    with pytest.raises(ValueError, match="got 1 images but 2 targets"):
        small_binary([torch.rand(3, 8, 8)], [{"semantic": torch.zeros(8, 8, dtype=torch.int64)}] * 2)


def test_binary_probabilities_are_background_then_foreground(small_binary):
    small_binary.eval()
    raw = small_binary.raw_outputs([torch.rand(3, 20, 30)])
    assert raw.logits.shape == (1, 1, 32, 32) and raw.image_sizes == [(20, 30)]
    prediction = small_binary.postprocess(raw)[0]
    foreground = raw.logits[0, 0, :20, :30].sigmoid()
    torch.testing.assert_close(prediction["probabilities"][1], foreground)
    assert torch.equal(prediction["mask"], (foreground > 0.5).long())


def test_the_encoder_offers_the_backbone_contract():
    encoder = UNetEncoder(EncoderSettings())
    features = encoder(torch.rand(1, 3, 32, 32))
    assert list(features) == list(encoder.out_channels) == list(encoder.strides)
    assert [tuple(feature.shape[1:]) for feature in features.values()] == [
        (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1024, 2, 2)]
