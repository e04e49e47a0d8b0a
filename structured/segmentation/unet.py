"""UNet semantic segmenters: the original UNet and the encoder-UNet over any registered backbone.

Both are a :class:`UNet`: an encoder with the Backbone contract (named features ``c<k>`` at stride ``2**k``,
``out_channels``, ``strides``), a decoder that climbs back to the input's resolution one 2x upsampling at a
time, concatenating the encoder's feature of the stride it reaches (the skip), and a 1x1 convolution to
the class logits.

- ``build_original_unet`` (Ronneberger et al. 2015): the contracting path of ``encoder.depth`` stages of two
  3x3 convolutions, each after a 2x2 max-pooling, ``width`` channels doubled per stage (64..1024, stride 16
  in the paper), features ``c0..c4``; decoder blocks upsample by a 2x2 transposed convolution (or
  bilinear interpolation), concatenate the skip and apply two 3x3 convolutions. Convolutions are padded
  ('same'), not the paper's unpadded ones, so the map has the input's size; batch norm after each
  convolution is the usual modern addition (``norm_layer: null`` gives the paper's plain convolutions).
- ``build_unet``: any registered backbone's ``c1..c5`` (``backbone`` section as in the detectors:
  ``frozen_stages``, ``norm_layer``, ``pretrained``) as the encoder; one decoder block per 2x step from the
  deepest level back to stride 1 (five for a stride-32 backbone, ``decoder.channels`` default 256, 128, 64,
  32, 16, segmentation_models.pytorch's), the last without a skip.

Any input size: the model normalises each image (``transform.image_mean`` / ``image_std``), pads the batch
on the bottom and right to a multiple of the encoder's deepest stride, and crops each map back, so a 97x131
image gives a 97x131 map.

Classes (the detection convention): ``num_classes`` counts the classes without the background; class maps
hold ``0..C`` (0 = background, 255 = ignore). With ``C >= 2`` the head has ``C + 1`` softmax channels; with
``C == 1`` one sigmoid channel (foreground probability). The contract, in train and eval mode alike:

- ``forward(images, targets)`` with ``targets`` (``SemanticTarget`` dicts: ``semantic`` int64 ``[H, W]``) ->
  ``{"loss_ce", "loss_dice"}`` (``structured.segmentation.losses``); padding counts as ignored;
- ``forward(images)`` -> one ``{"mask": int64 [H, W], "probabilities": float [C + 1, H, W]}`` per image at
  its own size (probabilities of classes ``0..C``, so ``mask`` is their argmax; ``[1 - p, p]`` for a
  binary model).

``raw_outputs`` / ``postprocess`` split inference into the network and the per-image cropping and
activation; ``optimize_for_inference`` folds eval-mode batch norms into the convolutions and switches to
channels-last, like the detectors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structured.backbones.base import level_name
from structured.config import Recipe, settings_from
from structured.detection.parts import BackboneSection, InferenceModel, original_sizes_of
from structured.detection.roi_heads import HEAD_NORMS, conv_norm_relu
from structured.detection.transform import IMAGENET_MEAN, IMAGENET_STD, check_image, pad_batch, padded_side
from structured.registry import BACKBONES, MODELS
from structured.segmentation.losses import segmentation_losses
from structured.types import IGNORE_INDEX, SemanticTarget

UPSAMPLING = ("nearest", "bilinear", "transposed")


@dataclass(frozen=True)
class EncoderSettings:
    """The original UNet's contracting path: a recipe's ``model.encoder`` section (the paper's by default).

    Attributes:
        width: channels of the first stage, doubled after each of the ``depth`` 2x2 max-poolings.
        depth: downsampling stages (4: features ``c0..c4`` of 64..1024 channels, stride 16).
        norm_layer: ``"bn"``, ``"gn"`` or ``None`` (plain convolutions) after each 3x3 convolution.
    """

    width: int = 64
    depth: int = 4
    norm_layer: str | None = "bn"


@dataclass(frozen=True)
class DecoderSettings:
    """The expanding path: a recipe's ``model.decoder`` section.

    Attributes:
        channels: output channels of each decoder block, deepest first; one block per 2x upsampling from
            the encoder's deepest stride back to the input (5 for stride 32, 4 for the original's 16).
        upsampling: ``"nearest"`` or ``"bilinear"`` interpolation, or ``"transposed"`` (a 2x2 stride-2
            transposed convolution to the block's channels, the paper's up-convolution).
        norm_layer: ``"bn"``, ``"gn"`` or ``None`` after each 3x3 convolution.
    """

    channels: Sequence[int] = (256, 128, 64, 32, 16)
    upsampling: str = "nearest"
    norm_layer: str | None = "bn"


@dataclass(frozen=True)
class SegmentationTransformSettings:
    """Input normalisation: a recipe's ``model.transform`` section (the [0, 1] RGB image's mean and std)."""

    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD


def _check_norm(norm_layer: str | None, where: str) -> None:
    if norm_layer is not None and norm_layer not in HEAD_NORMS:
        raise ValueError(f"{where}.norm_layer must be one of {HEAD_NORMS} or None, got {norm_layer!r}")


def _check_images(images: list[Tensor]) -> None:
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images must be a non-empty list of float tensors [3, H, W]")
    for index, image in enumerate(images):
        check_image(image, index)


class UNetEncoder(nn.Module):
    """The original UNet's contracting path, with the Backbone contract: features ``c0..c<depth>``."""

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__()
        if settings.width < 1 or settings.depth < 1:
            raise ValueError(f"encoder.width and encoder.depth must be >= 1, got {settings.width} and {settings.depth}")
        _check_norm(settings.norm_layer, "encoder")
        stages, in_channels = [], 3
        for index in range(settings.depth + 1):
            out_channels = settings.width * 2**index
            pooling = [nn.MaxPool2d(2)] if index else []
            stages.append(nn.Sequential(*pooling, conv_norm_relu(in_channels, out_channels, settings.norm_layer),
                                        conv_norm_relu(out_channels, out_channels, settings.norm_layer)))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = {f"c{k}": settings.width * 2**k for k in range(settings.depth + 1)}
        self.strides = {f"c{k}": 2**k for k in range(settings.depth + 1)}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Features of ``x`` [B, 3, H, W] (sides multiples of ``2**depth``), finest first."""
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name, stage in zip(self.out_channels, self.stages, strict=True):
            x = stage(x)
            features[name] = x
        return features


class DecoderBlock(nn.Module):
    """Upsample 2x (to the skip's size), concatenate the skip when there is one, two 3x3 convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str,
                 norm_layer: str | None) -> None:
        super().__init__()
        self.upsampling = upsampling
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2) if upsampling == "transposed" else None
        upsampled_channels = out_channels if self.up is not None else in_channels
        self.convs = nn.Sequential(conv_norm_relu(upsampled_channels + skip_channels, out_channels, norm_layer),
                                   conv_norm_relu(out_channels, out_channels, norm_layer))

    def upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``x`` at ``size`` (twice its own side for the encoders here; a transposed convolution's output
        that misses ``size`` by a pixel, behind an encoder with unpadded convolutions, is interpolated)."""
        if self.up is not None:
            x = self.up(x)
            if tuple(x.shape[-2:]) == size:
                return x
        if self.upsampling == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        """The block's output at the skip's resolution (twice ``x``'s without a skip)."""
        size = tuple(skip.shape[-2:]) if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = self.upsample(x, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """Decoder blocks from the encoder's deepest level back to stride 1, each taking the level at its stride."""

    def __init__(self, encoder_channels: Mapping[str, int], encoder_strides: Mapping[str, int],
                 settings: DecoderSettings) -> None:
        super().__init__()
        if settings.upsampling not in UPSAMPLING:
            raise ValueError(f"decoder.upsampling must be one of {UPSAMPLING}, got {settings.upsampling!r}")
        _check_norm(settings.norm_layer, "decoder")
        levels = {name: stride for name, stride in encoder_strides.items() if name == level_name(stride)}
        self.deepest = max(levels, key=levels.get)
        steps = round(math.log2(levels[self.deepest]))
        if len(settings.channels) != steps:
            raise ValueError(
                f"decoder.channels has {len(settings.channels)} entries {list(settings.channels)}, but the "
                f"encoder's deepest features ({self.deepest}) have stride {levels[self.deepest]}: give {steps}, "
                "one per 2x upsampling back to the input's resolution")
        self.skips = [level_name(2**k) if level_name(2**k) in levels else None for k in reversed(range(steps))]
        blocks, in_channels = [], encoder_channels[self.deepest]
        for skip, out_channels in zip(self.skips, settings.channels, strict=True):
            skip_channels = encoder_channels[skip] if skip is not None else 0
            blocks.append(DecoderBlock(in_channels, skip_channels, out_channels, settings.upsampling,
                                       settings.norm_layer))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """``[B, channels[-1], H, W]`` at the input's resolution from the encoder's features."""
        x = features[self.deepest]
        for block, skip in zip(self.blocks, self.skips, strict=True):
            x = block(x, features[skip] if skip is not None else None)
        return x


@dataclass
class RawSegmentation:
    """What the network computes for a batch (see ``UNet.raw_outputs``): ``logits [B, K, H', W']`` of the
    padded batch and the ``(height, width)`` of each input image in it (top left)."""

    logits: Tensor
    image_sizes: list[tuple[int, int]]


class UNet(InferenceModel):
    """Encoder -> decoder -> 1x1 head, with normalisation, padding and cropping inside (see the module docstring).

    Args:
        backbone: the encoder: a registered backbone or ``UNetEncoder`` (Backbone contract).
        decoder: a ``UNetDecoder`` over the encoder's features.
        num_classes: classes without the background (1: one sigmoid channel, else ``num_classes + 1``).
        transform: the input normalisation.
    """

    def __init__(self, backbone: nn.Module, decoder: UNetDecoder, num_classes: int,
                 transform: SegmentationTransformSettings) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes counts classes without the background and must be >= 1, got {num_classes}")
        if len(transform.image_mean) != 3 or len(transform.image_std) != 3:
            raise ValueError(f"transform.image_mean and image_std need 3 values (RGB), got "
                             f"{transform.image_mean} and {transform.image_std}")
        self.backbone = backbone
        self.decoder = decoder
        self.num_classes = num_classes
        self.head = nn.Conv2d(decoder.out_channels, 1 if num_classes == 1 else num_classes + 1, 1)
        # The class-specific tensors for fine-tuning on other classes (engine/transfer.py): the head's rows,
        # one per class 0..C. A binary head has only the foreground's channel, no per-class layout, so it
        # declares none: it loads a binary checkpoint whole, whatever the class is called.
        self.CLASS_SPECIFIC_TENSORS = {} if num_classes == 1 else {"head.": 1}
        self.size_divisible = max(backbone.strides.values())
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(3, 1, 1), persistent=False)

    def forward(self, images: list[Tensor], targets: list[SemanticTarget] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (``loss_ce``, ``loss_dice``) when ``targets`` are given, else one prediction per image."""
        if targets is None:
            return self.postprocess(self.raw_outputs(images))
        _check_images(images)
        if len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        maps = [self._checked_map(target, index, size)
                for index, (target, size) in enumerate(zip(targets, original_sizes_of(images), strict=True))]
        logits = self.raw_outputs(images).logits
        return segmentation_losses(logits, pad_batch(maps, self.size_divisible, fill=IGNORE_INDEX))

    def _checked_map(self, target: SemanticTarget, index: int, size: tuple[int, int]) -> Tensor:
        """Target ``index``'s class map as int64, checked against the image's size and the class count."""
        if not isinstance(target, Mapping) or "semantic" not in target:
            raise ValueError(f"target {index} has no 'semantic'; expected an int64 [H, W] class map "
                             f"(0..{self.num_classes}, {IGNORE_INDEX} = ignore)")
        semantic = target["semantic"]
        if not isinstance(semantic, Tensor) or semantic.is_floating_point() or tuple(semantic.shape) != size:
            found = f"{semantic.dtype} {list(semantic.shape)}" if isinstance(semantic, Tensor) else type(semantic).__name__
            raise ValueError(f"target {index} 'semantic' must be an integer class map of the image's size "
                             f"{list(size)}, got {found}")
        semantic = semantic.long()
        bad = (semantic > self.num_classes) & (semantic != IGNORE_INDEX)
        if bool(bad.any()):
            values = sorted(set(semantic[bad].unique().tolist()))[:10]
            raise ValueError(f"target {index} 'semantic' holds class indices {values} outside 0..{self.num_classes} "
                             f"(num_classes {self.num_classes} without the background; {IGNORE_INDEX} = ignore)")
        return semantic

    def raw_outputs(self, images: list[Tensor]) -> RawSegmentation:
        """The network's part: normalise, pad into a batch, encoder, decoder, head (logits of the padded batch)."""
        _check_images(images)
        batch = pad_batch([(image - self.mean.to(image)) / self.std.to(image) for image in images],
                          self.size_divisible)
        return RawSegmentation(self.padded_logits(batch), original_sizes_of(images))

    def padded_logits(self, batch: Tensor) -> Tensor:
        """The network on a normalised batch ``[B, 3, H, W]`` whose sides are multiples of ``size_divisible``:
        encoder, decoder, head; logits ``[B, K, H, W]``."""
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = self.head(self.decoder(self.backbone(batch)))
        if logits.shape[-2:] != batch.shape[-2:]:
            logits = F.interpolate(logits, size=batch.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def postprocess(self, raw: RawSegmentation) -> list[dict[str, Tensor]]:
        """Per image: the logits cropped to its size, class probabilities ``[C + 1, H, W]`` and their argmax."""
        predictions = []
        for logits, (height, width) in zip(raw.logits, raw.image_sizes, strict=True):
            probabilities = self.class_probabilities(logits[:, :height, :width].float())
            predictions.append({"mask": probabilities.argmax(dim=0), "probabilities": probabilities})
        return predictions

    @staticmethod
    def class_probabilities(logits: Tensor) -> Tensor:
        """``[..., C + 1, H, W]`` probabilities of classes ``0..C`` from ``[..., K, H, W]`` logits (sigmoid when
        ``K == 1``)."""
        if logits.shape[-3] == 1:
            foreground = logits.sigmoid()
            return torch.cat([1 - foreground, foreground], dim=-3)
        return logits.softmax(dim=-3)

    EXPORT_OUTPUTS = ("mask", "probabilities")

    def export_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """What an exported graph computes for a batch ``[B, 3, H, W]`` of same-size images: ``mask [B, H, W]``
        and ``probabilities [B, C + 1, H, W]``, each image's prediction. The padding to ``size_divisible``
        is computed from the input's shape, so the graph serves any batch and size."""
        height, width = images.shape[-2], images.shape[-1]
        normalised = (images - self.mean) / self.std
        padded = F.pad(normalised, (0, padded_side(width, self.size_divisible) - width,
                                    0, padded_side(height, self.size_divisible) - height))
        probabilities = self.class_probabilities(self.padded_logits(padded)[..., :height, :width].float())
        return probabilities.argmax(dim=-3), probabilities

    def export_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch, height and width of the input and of both outputs vary."""
        return {"image": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 1: "height", 2: "width"},
                "probabilities": {0: "batch", 2: "height", 3: "width"}}

    def loss(self, images: list[Tensor], targets: list[SemanticTarget]) -> dict[str, Tensor]:
        """Named scalar losses for ``images`` and their ``targets``."""
        return self(images, targets)

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Predictions for ``images`` at their own sizes (no gradient)."""
        return self(images)


DEFAULT_ENCODER, DEFAULT_DECODER = EncoderSettings(), DecoderSettings()
DEFAULT_TRANSFORM = SegmentationTransformSettings()


def build_unet(
    *,
    num_classes: int,
    backbone: BackboneSection,
    decoder: DecoderSettings | Mapping[str, Any] = DEFAULT_DECODER,
    transform: SegmentationTransformSettings | Mapping[str, Any] = DEFAULT_TRANSFORM,
) -> UNet:
    """UNet over a registered backbone: ``backbone`` is its section (``{name: resnet34, frozen_stages: 0,
    ...}``, its ``c1..c5`` the skips), ``decoder`` a ``DecoderSettings`` (or mapping), ``transform`` the
    normalisation. ``num_classes``: classes without the background."""
    if not isinstance(backbone, Mapping) or not isinstance(backbone.get("name"), str):
        raise ValueError(f"backbone must be a mapping with a registered 'name' and its options, got {backbone!r}")
    options = {key: value for key, value in backbone.items() if key != "name"}
    encoder = BACKBONES.build(backbone["name"], **options, classifier=False)
    decoder = settings_from(DecoderSettings, decoder, "decoder")
    return UNet(encoder, UNetDecoder(encoder.out_channels, encoder.strides, decoder), num_classes,
                settings_from(SegmentationTransformSettings, transform, "transform"))


def build_original_unet(
    *,
    num_classes: int,
    encoder: EncoderSettings | Mapping[str, Any] = DEFAULT_ENCODER,
    decoder: DecoderSettings | Mapping[str, Any] = DEFAULT_DECODER,
    transform: SegmentationTransformSettings | Mapping[str, Any] = DEFAULT_TRANSFORM,
) -> UNet:
    """The original UNet: ``encoder`` an ``EncoderSettings`` (or mapping), ``decoder`` a ``DecoderSettings``
    with ``encoder.depth`` blocks, ``transform`` the normalisation. ``num_classes``: without the background."""
    contracting = UNetEncoder(settings_from(EncoderSettings, encoder, "encoder"))
    decoder = settings_from(DecoderSettings, decoder, "decoder")
    return UNet(contracting, UNetDecoder(contracting.out_channels, contracting.strides, decoder), num_classes,
                settings_from(SegmentationTransformSettings, transform, "transform"))


C1_TO_C5 = ("c1", "c2", "c3", "c4", "c5")
TRAINABLE_BACKBONE = dict(out_levels=C1_TO_C5, frozen_stages=0, norm_layer="bn")
"""An encoder trained with the decoder: every level a skip, nothing frozen, its own batch norms."""

RECIPES: dict[str, tuple[Any, dict]] = {
    "unet_original": (build_original_unet, dict(
        num_classes=1,
        encoder=dict(width=64, depth=4, norm_layer="bn"),
        decoder=dict(channels=(512, 256, 128, 64), upsampling="transposed", norm_layer="bn"),
    )),
    "unet_resnet34": (build_unet, dict(num_classes=20, backbone=dict(name="resnet34", **TRAINABLE_BACKBONE))),
    "unet_mobilenet_v2": (build_unet, dict(num_classes=20, backbone=dict(name="mobilenet_v2", **TRAINABLE_BACKBONE))),
    "unet_nuclei": (build_original_unet, dict(
        num_classes=1,
        encoder=dict(width=16, depth=4, norm_layer="bn"),
        decoder=dict(channels=(128, 64, 32, 16), upsampling="bilinear", norm_layer="bn"),
    )),
}
"""Registered recipes: (builder, defaults per part). ``unet_original`` is the paper's network (64..1024
channels, up-convolutions; one class: the paper's cell / background) with batch norm; ``unet_resnet34`` and
``unet_mobilenet_v2`` are segmentation_models.pytorch's ``Unet`` layout on our backbones (20 classes: VOC);
``unet_nuclei`` is a quarter-width original UNet with bilinear upsampling for DSB2018 nuclei on a CPU."""

for _name, (_builder, _defaults) in RECIPES.items():
    MODELS.register(_name)(Recipe(_builder, _defaults, task="semantic"))
