"""Fine-tuning options of the trainer: train.freeze keeps parts unchanged, train.backbone_lr_factor gives the
backbone its own learning rate (warm-up included) through a resume, train.init_from loads and reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from structured.config import load_config
from structured.data.synthetic import SHAPE_CLASSES
from structured.engine import Trainer, read_log, save_checkpoint
from structured.engine.schedule import lr_factor
from structured.registry import MODELS
from tests.engine.conftest import toy_recipe
from tests.engine.toy import ToyDetector

PARTS_TOY = "engine_test_parts_toy"


class PartsToy(ToyDetector):
    """The toy detector split into ``backbone`` (conv + batch norm), ``neck`` (conv + batch norm) and ``head``."""

    def __init__(self, num_classes: int = 5, width: int = 8) -> None:
        super().__init__(num_classes, width, dropout=0.0)
        del self.features
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """The toy's losses or predictions, through backbone, neck and head."""
        pooled = torch.cat([self.neck(self.backbone(image[None])) for image in images])
        outputs = self.head(pooled)
        boxes, logits = torch.sigmoid(outputs[:, :4]), outputs[:, 4:]
        if targets is not None:
            return self._losses(images, boxes, logits, targets)
        return self._predictions(images, boxes, logits)


@pytest.fixture
def parts_toy(monkeypatch: pytest.MonkeyPatch) -> str:
    """``PartsToy`` registered for one test."""
    monkeypatch.setitem(MODELS._builders, PARTS_TOY, PartsToy)
    return PARTS_TOY


def parts_recipe(root: Path, **train: object) -> dict:
    """The engine tests' toy recipe with ``PartsToy`` and no validation."""
    recipe = toy_recipe(root, eval_every_epochs=0, **train)
    recipe["model"] = {"name": PARTS_TOY}
    return recipe


def test_frozen_parts_are_unchanged_after_training_steps(parts_toy: str, tiny_shapes: Path, tmp_path: Path) -> None:
    trainer = Trainer(load_config(parts_recipe(tiny_shapes, freeze=["backbone", "neck"], max_iters=4)), tmp_path,
                      verbose=False)
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    for key, value in after.items():
        unchanged = torch.equal(value, before[key])
        assert unchanged == (not key.startswith("head.")), key  # batch-norm statistics included
    with pytest.raises(ValueError, match=r"train.freeze names \['trunk'\].*parts: \['dropout', 'head', 'backbone', 'neck'\]"):
        Trainer(load_config(parts_recipe(tiny_shapes, freeze=["trunk"])), tmp_path / "other", verbose=False)


def test_backbone_lr_factor_per_group_with_warmup_through_resume(parts_toy: str, tiny_shapes: Path,
                                                                 tmp_path: Path) -> None:
    settings = dict(backbone_lr_factor=0.1, lr=0.05, warmup_iters=3, warmup_factor=0.2, epochs=2, milestones=[1])
    seen: list[tuple[int, dict[str, float]]] = []

    def recording(trainer: Trainer) -> Trainer:
        step = trainer.optimizer.step

        def step_and_record(*args, **kwargs):
            seen.append((trainer.position.iteration,
                         {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}))
            return step(*args, **kwargs)

        trainer.optimizer.step = step_and_record
        return trainer

    recording(Trainer(load_config(parts_recipe(tiny_shapes, max_iters=3, **settings)), tmp_path, verbose=False)).fit()
    resumed = recording(Trainer(load_config(parts_recipe(tiny_shapes, **settings)), tmp_path, resume=True,
                                verbose=False))
    assert resumed.position.iteration == 3
    resumed.fit()
    total = resumed.total_iterations
    assert [iteration for iteration, _ in seen] == list(range(total))
    for iteration, rates in seen:
        base = 0.05 * lr_factor(iteration, total, "step", resumed.milestone_iterations, 0.1, 3, 0.2)
        assert rates == pytest.approx({"backbone": 0.1 * base, "heads": base}, rel=1e-12), iteration
    names = {name for group in resumed.optimizer.param_groups for name in [group["name"]]}
    assert names == {"backbone", "heads"}


def test_init_from_loads_other_classes_and_logs_the_report(parts_toy: str, tiny_shapes: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = PartsToy(num_classes=5)
    save_checkpoint({"model": source.state_dict(), "class_names": ["__background__", *SHAPE_CLASSES]}, tmp_path / "a.pt")
    trainer = Trainer(load_config(parts_recipe(tiny_shapes, init_from=str(tmp_path / "a.pt"), max_iters=1)),
                      tmp_path / "run", verbose=False)
    assert torch.equal(trainer.model.backbone[0].weight, source.backbone[0].weight)
    assert trainer.transfer_report.reinitialised == ()
    assert trainer.transfer_report.summary() == f"weights {tmp_path / 'a.pt'}: loaded 16 tensors"
    trainer.fit()
    events = [entry for entry in read_log(tmp_path / "run" / "log.jsonl") if entry["kind"] == "event"]
    assert events[1]["message"].endswith("loaded 16 tensors") and events[1]["loaded"] == 16
