"""Image decoding, batching and DataLoader set-up shared by every dataset.

- ``read_image(path)`` decodes with OpenCV into uint8 ``[H, W, 3]`` RGB: EXIF orientation applied,
  grayscale / RGBA / 16-bit converted; a missing, empty, undecodable or truncated file raises
  ``ImageReadError`` (a ``ValueError``) naming the file.
- ``collate_detection`` batches ``(image, target)`` pairs of different sizes as two lists;
  ``collate_semantic`` pads a training batch of semantic samples to one size (images with 0, class maps
  with 255 = ignore).
- ``read_index_png`` / ``write_palette_png`` read and write class-index PNGs (VOC palette).
- ``build_dataloader`` seeds shuffling and workers, advances the dataset's augmentation epoch on each
  pass, and keeps each worker on one OpenCV / torch thread so that ``num_workers`` processes do not
  oversubscribe the CPU.
- ``ResumableSampler`` gives the training loop an epoch order that is a pure function of (seed, epoch),
  sharded across distributed ranks, that can start mid-epoch (exact resume).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from structured.io import atomic_output
from structured.types import IGNORE_INDEX

_JPEG_START = b"\xff\xd8"
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END = b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)


class ImageReadError(ValueError):
    """An image file is missing, empty, truncated or cannot be decoded."""


def _jpeg_is_truncated(data: bytes) -> bool:
    """True when the last scan of a JPEG has no end-of-image marker after it (the file was cut short)."""
    last_scan = data.rfind(_JPEG_START_OF_SCAN)
    return last_scan < 0 or data.find(_JPEG_END, last_scan) < 0


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` into a uint8 ``[H, W, 3]`` RGB array (EXIF orientation applied).

    Raises ``ImageReadError`` naming the file when it is missing, empty, truncated or undecodable.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(f"image file is empty: {path}")
    if data.startswith(_JPEG_START) and _jpeg_is_truncated(data):
        raise ImageReadError(f"JPEG file is truncated (no end-of-image marker): {path}")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"cannot decode image file (corrupt, truncated or unsupported format): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or float ``[H, W, 3]`` already scaled) -> float32 ``[3, H, W]``, uint8 / 255."""
    channels_first = image.transpose(2, 0, 1)
    if image.dtype == np.uint8:
        return torch.from_numpy(np.multiply(channels_first, np.float32(1 / 255), dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(channels_first, dtype=np.float32))


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch ``(image, target)`` pairs of any sizes into ``(list of images, list of targets)``."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def collate_semantic(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Like ``collate_detection``, with every image and ``semantic`` map padded (bottom, right) to the batch's
    largest height and width: images with 0, class maps with ``IGNORE_INDEX`` (255), so padding has no loss."""
    height = max(int(image.shape[-2]) for image, _ in batch)
    width = max(int(image.shape[-1]) for image, _ in batch)
    images, targets = [], []
    for image, target in batch:
        padding = (0, width - int(image.shape[-1]), 0, height - int(image.shape[-2]))
        images.append(torch.nn.functional.pad(image, padding, value=0.0))
        targets.append({**target, "semantic": torch.nn.functional.pad(target["semantic"], padding,
                                                                      value=IGNORE_INDEX)})
    return images, targets


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV / torch thread per worker, numpy and random seeded.

    The seeds derive from torch's per-worker seed, itself derived from the loader's generator, so a
    seeded loader gives the same batches on every run.
    """
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class EpochDataLoader(DataLoader):
    """A DataLoader that calls ``dataset.set_epoch(e)`` before pass ``e`` (0, 1, 2, ...).

    Datasets seed augmentation by ``(seed, epoch, index)``, so each pass draws new augmentations while the
    result stays independent of the number of workers. Workers are started per pass (not persistent) so
    that they see the new epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def __iter__(self):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self.epoch += 1
        return super().__iter__()


def build_dataloader(dataset: Dataset, batch_size: int = 2, shuffle: bool = True, num_workers: int = 0,
                     seed: int = 0, drop_last: bool = False, **loader_options: Any) -> EpochDataLoader:
    """An ``EpochDataLoader``: the dataset's own ``collate`` (``collate_detection`` by default), seeded
    shuffling, one thread per worker.

    ``loader_options`` go to ``torch.utils.data.DataLoader`` (for example ``pin_memory``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader_options.setdefault("collate_fn", getattr(dataset, "collate", collate_detection))
    return EpochDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                           worker_init_fn=seed_worker, generator=generator, drop_last=drop_last, **loader_options)


def read_index_png(path: str | Path) -> np.ndarray:
    """Read a class-index PNG (palette or 8-bit grayscale) as uint8 ``[H, W]`` indices.

    Palette PNGs (Pascal VOC ``SegmentationClass``) give their palette indices, not colours. Colour PNGs
    raise ``ImageReadError``: class indices cannot be recovered from RGB without a colour table.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            indices = np.asarray(image)
    except (OSError, SyntaxError) as error:
        raise ImageReadError(f"cannot decode mask file {path}: {error}") from None
    if mode not in ("P", "L", "1", "I", "I;16"):
        raise ImageReadError(f"{path}: expected a palette or grayscale index PNG, got mode {mode}")
    if indices.size and indices.max() > 255:
        raise ImageReadError(f"{path}: class indices above 255 (max {indices.max()}) do not fit uint8")
    return indices.astype(np.uint8)


def voc_palette() -> list[int]:
    """The Pascal VOC colour map as a flat 768-entry PIL palette (index 255 = cream, the ignore colour)."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.extend((red, green, blue))
    return palette


def write_palette_png(path: str | Path, class_map: np.ndarray) -> Path:
    """Write a uint8 ``[H, W]`` class-index map as a VOC-style palette PNG (read back by ``read_index_png``)."""
    path = Path(path)
    if path.suffix.lower() != ".png" or path.is_dir():
        found = "it is a folder" if path.is_dir() else "a class-index map is a palette PNG"
        raise ValueError(f"cannot write class map {path}: {found}; expected a file name ending in .png")
    image = Image.fromarray(np.asarray(class_map).astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    with atomic_output(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image as ``read_image`` returns it (EXIF rotation applied), from its header."""
    width, height, orientation = _image_header(Path(path))
    return (width, height) if orientation in _EXIF_TRANSPOSED else (height, width)


def exif_transposes(path: str | Path) -> bool:
    """Whether the EXIF orientation of the image at ``path`` swaps its stored width and height (False when its
    header cannot be read)."""
    try:
        return _image_header(Path(path))[2] in _EXIF_TRANSPOSED
    except ImageReadError:
        return False


def _image_header(path: Path) -> tuple[int, int, int]:
    """``(stored width, stored height, EXIF orientation)`` of an image; ``ImageReadError`` when unreadable."""
    try:
        with Image.open(path) as image:
            return image.size[0], image.size[1], image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image header of {path}: {error}") from None


def worker_errors_unwrapped(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches of a ``DataLoader``; unusable input a worker process met (a ``ValueError`` or ``OSError``, such as
    an ``ImageReadError``) is raised with the message it had there. torch re-raises a worker's error as the same type
    with ``Caught <type> in DataLoader worker process <n>. Original Traceback ...`` and the whole traceback, which a
    tool would print on one line; the original error stays attached as the cause."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as error:
            message = _worker_error_message(error)
            if message is None:
                raise
            raise type(error)(message) from error
        yield batch


def _worker_error_message(error: Exception) -> str | None:
    """The message a worker's error had there; None for an error of the main process."""
    text, name = str(error), type(error).__name__
    if not text.startswith(f"Caught {name} in DataLoader worker") or f"{name}: " not in text:
        return None
    return text[text.rindex(f"{name}: ") + len(name) + 2:].strip()


class ResumableSampler(Sampler[int]):
    """Epoch-seeded, shardable, resumable sample order (the training loop's ``DistributedSampler``).

    The order of epoch ``e`` is a pure function of ``(seed, e)``: a permutation drawn from a generator
    seeded with ``seed + e`` (or ``0..n-1`` without shuffling). For ``num_replicas > 1`` the order is padded
    by repeating its head to a multiple of ``num_replicas`` and rank ``r`` takes positions ``r, r + R, ...``
    (as ``torch.utils.data.DistributedSampler``). ``set_epoch(e, skip=k)`` starts the next pass at
    position ``k`` of this rank's share, so a run stopped after ``k`` samples of an epoch continues exactly.
    """

    def __init__(self, dataset_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 num_replicas: int = 1) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.dataset_size = dataset_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.epoch = 0
        self.skip = 0

    @property
    def samples_per_replica(self) -> int:
        """Length of one rank's share of an epoch (before skipping)."""
        return -(-self.dataset_size // self.num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass epoch ``epoch`` of this rank's share, starting after its first ``skip`` samples."""
        if not 0 <= skip <= self.samples_per_replica:
            raise ValueError(f"skip must be in 0..{self.samples_per_replica}, got {skip}")
        self.epoch = epoch
        self.skip = skip

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full share of epoch ``epoch`` (no skipping)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        padded_size = self.samples_per_replica * self.num_replicas
        order = (order * -(-padded_size // self.dataset_size))[:padded_size]
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.skip:])

    def __len__(self) -> int:
        return self.samples_per_replica - self.skip
