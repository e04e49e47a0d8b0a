"""Semantic segmenters; importing this registers the UNet recipes in ``MODELS``."""

from structured.segmentation import losses, unet
from structured.segmentation.unet import UNet, build_original_unet, build_unet

__all__ = ["UNet", "build_original_unet", "build_unet", "losses", "unet"]
