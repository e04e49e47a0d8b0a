"""Datasets (COCO, Pascal VOC, YOLO, mask folders, synthetic shapes), augmentation, validation and loading.

Every detection dataset returns ``(Tensor[3, H, W] float in [0, 1], Target)`` (see ``structured.types``)
and carries ``class_names`` with ``class_names[0] == "__background__"``; batches come from
``build_dataloader`` as ``(list of images, list of targets)``. Semantic datasets (``SemanticDataset``,
opened by ``open_semantic_dataset``) return ``(image, SemanticTarget)`` the same way.
"""

from structured.data.base import (
    BACKGROUND,
    DetectionDataset,
    ImageRecord,
    SemanticDataset,
    SemanticSegmentationDataset,
)
from structured.data.coco import CocoDetection, parse_coco
from structured.data.convert import AnnotationSet, read_annotations, write_annotations
from structured.data.folders import MaskFolderDataset, SemanticFolderDataset
from structured.data.loading import (
    EpochDataLoader,
    ImageReadError,
    build_dataloader,
    collate_detection,
    collate_semantic,
    read_image,
    read_index_png,
    seed_worker,
    write_palette_png,
)
from structured.data.semantic import InstanceSemanticDataset, open_semantic_dataset
from structured.data.summary import open_dataset, summarize_dataset, write_mosaic
from structured.data.synthetic import SHAPE_CLASSES, generate_dataset, iter_samples, make_sample
from structured.data.transforms import semantic_training_transforms, training_transforms
from structured.data.validate import ValidationReport
from structured.data.voc import VOC_CLASSES, VOCDetection, VOCSegmentation, parse_voc_xml
from structured.data.yolo import read_yolo

__all__ = [
    "BACKGROUND",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "AnnotationSet",
    "CocoDetection",
    "DetectionDataset",
    "EpochDataLoader",
    "ImageReadError",
    "ImageRecord",
    "InstanceSemanticDataset",
    "MaskFolderDataset",
    "SemanticDataset",
    "SemanticFolderDataset",
    "SemanticSegmentationDataset",
    "VOCDetection",
    "VOCSegmentation",
    "ValidationReport",
    "build_dataloader",
    "collate_detection",
    "collate_semantic",
    "generate_dataset",
    "iter_samples",
    "make_sample",
    "open_dataset",
    "open_semantic_dataset",
    "parse_coco",
    "parse_voc_xml",
    "read_annotations",
    "read_image",
    "read_index_png",
    "read_yolo",
    "seed_worker",
    "semantic_training_transforms",
    "summarize_dataset",
    "training_transforms",
    "write_annotations",
    "write_mosaic",
    "write_palette_png",
]
