"""GoogLeNet (Inception v1) and Inception v3 on torchvision's definitions, without auxiliary classifiers.

Levels: GoogLeNet ``c1`` conv1, ``c2`` conv3, ``c3`` inception3b, ``c4`` inception4e, ``c5`` inception5b;
Inception v3 ``c1`` Conv2d_2b, ``c2`` Conv2d_4a, ``c3`` Mixed_5d, ``c4`` Mixed_6e, ``c5`` Mixed_7c.
Inception v3 uses unpadded convolutions and poolings, so its maps are smaller than ``H / stride`` and it
needs inputs of at least 75x75. Module names are torchvision's; checkpoint keys of the auxiliary
classifiers (``aux1``, ``aux2``, ``AuxLogits``) are accepted and ignored.

torchvision's ImageNet weights for these two nets expect their input re-normalised from ImageNet's
mean/std to mean 0.5 / std 0.5 (torchvision's ``transform_input``). A backbone built with ``pretrained``
set does that as its first step (``trunk.input_transform``); one built from scratch does not.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from structured.backbones.base import Step, TrunkSpec, register_backbones

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GOOGLE_MEAN_STD = 0.5
GOOGLENET_STEPS = (
    Step("conv1", 2, "c1"),
    Step("maxpool1", 4),
    Step("conv2", 4),
    Step("conv3", 4, "c2"),
    Step("maxpool2", 8),
    Step("inception3a", 8),
    Step("inception3b", 8, "c3"),
    Step("maxpool3", 16),
    Step("inception4a", 16),
    Step("inception4b", 16),
    Step("inception4c", 16),
    Step("inception4d", 16),
    Step("inception4e", 16, "c4"),
    Step("maxpool4", 32),
    Step("inception5a", 32),
    Step("inception5b", 32, "c5"),
)
GOOGLENET_CHANNELS = {"c1": 64, "c2": 192, "c3": 480, "c4": 832, "c5": 1024}
INCEPTION_V3_STEPS = (
    Step("Conv2d_1a_3x3", 2),
    Step("Conv2d_2a_3x3", 2),
    Step("Conv2d_2b_3x3", 2, "c1"),
    Step("maxpool1", 4),
    Step("Conv2d_3b_1x1", 4),
    Step("Conv2d_4a_3x3", 4, "c2"),
    Step("maxpool2", 8),
    Step("Mixed_5b", 8),
    Step("Mixed_5c", 8),
    Step("Mixed_5d", 8, "c3"),
    Step("Mixed_6a", 16),
    Step("Mixed_6b", 16),
    Step("Mixed_6c", 16),
    Step("Mixed_6d", 16),
    Step("Mixed_6e", 16, "c4"),
    Step("Mixed_7a", 32),
    Step("Mixed_7b", 32),
    Step("Mixed_7c", 32, "c5"),
)
INCEPTION_V3_CHANNELS = {"c1": 64, "c2": 192, "c3": 288, "c4": 768, "c5": 2048}
INPUT_TRANSFORM_STEP = Step("input_transform", 1)


class ImageNetToHalfNormalization(nn.Module):
    """Re-normalise images from ImageNet mean/std to mean 0.5 / std 0.5 (what Google's weights expect).

    ``(x * std + mean - 0.5) / 0.5`` folded into one scale and shift per channel.
    """

    def __init__(self) -> None:
        super().__init__()
        scale = [std / GOOGLE_MEAN_STD for std in IMAGENET_STD]
        shift = [(mean - GOOGLE_MEAN_STD) / GOOGLE_MEAN_STD for mean in IMAGENET_MEAN]
        self.register_buffer("scale", torch.tensor(scale).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B,3,H,W] normalised with ImageNet's mean/std -> normalised with 0.5/0.5."""
        return x * self.scale + self.shift


def make_inception_trunk(
    arch: str, *, num_classes: int, pretrained: str | None
) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's ``arch`` (untrained, no auxiliary classifiers) and its levels."""
    transform_input = pretrained is not None
    trunk = getattr(torchvision.models, arch)(
        weights=None,
        num_classes=num_classes,
        aux_logits=False,
        init_weights=True,
        transform_input=transform_input,
    )
    if arch == "googlenet":
        steps, channels, ignored = GOOGLENET_STEPS, GOOGLENET_CHANNELS, ("aux1.", "aux2.")
    else:
        steps, channels, ignored = INCEPTION_V3_STEPS, INCEPTION_V3_CHANNELS, ("AuxLogits.",)
    if transform_input:
        trunk.input_transform = ImageNetToHalfNormalization()
        steps = (INPUT_TRANSFORM_STEP, *steps)
    spec = TrunkSpec(
        steps=steps, channels=channels, head=("avgpool", "dropout", "fc"), ignored_checkpoint_prefixes=ignored
    )
    return trunk, spec


register_backbones(("googlenet", "inception_v3"), make_inception_trunk)
