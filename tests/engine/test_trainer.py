"""Trainer: exact resume after a kill, world size kept on resume, the toy learns, records of a run, NaN stop,
weights-only loading, recipe errors, channels-last training."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from structured.boxes.formats import check_boxes
from structured.config import ConfigError, load_config
from structured.data.base import DetectionDataset
from structured.data.loading import ImageReadError
from structured.data.recipes import build_datasets, data_config
from structured.engine import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    load_checkpoint,
    read_log,
    save_checkpoint,
)
from structured.engine.trainer import train_config
from structured.registry import MODELS
from tests.conftest import REPO_ROOT
from tests.engine.conftest import toy_recipe, train_det_tool
from tests.engine.toy import TOY_NAME, ToyDetector, build_toy_detector, register_toy


class SimulatedKill(RuntimeError):
    """Raised by ``FaultyDataset`` to end a run abruptly (nothing after it runs, as after SIGKILL)."""


class FaultyDataset(DetectionDataset):
    """A view of a dataset that kills the run at its ``kill_at``-th fetch (raising ``kill_with(message)``) or
    poisons one sample in one epoch."""

    def __init__(self, dataset: DetectionDataset, kill_at: int | None = None,
                 poison: tuple[int, int] | None = None,
                 kill_with: Callable[[str], BaseException] = SimulatedKill) -> None:
        super().__init__(dataset.records, dataset.class_names[1:], dataset.transforms, seed=dataset.seed)
        self.kill_at = kill_at
        self.poison = poison
        self.kill_with = kill_with
        self.fetches = 0

    def __getitem__(self, index: int):
        self.fetches += 1
        if self.kill_at is not None and self.fetches >= self.kill_at:
            raise self.kill_with(f"killed at fetch {self.fetches}")
        image, target = super().__getitem__(index)
        if self.poison == (self.epoch, index):
            image = torch.full_like(image, float("nan"))
        return image, target


@pytest.fixture(scope="module")
def registered_toy() -> Iterator[str]:
    """The toy detector registered for the whole module (module-scoped runs below need it)."""
    register_toy()
    yield TOY_NAME
    MODELS._builders.pop(TOY_NAME, None)


@pytest.fixture(scope="module")
def straight_run(registered_toy: str, tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 3-epoch (12-step) toy run with a checkpoint every 3 steps."""
    run_dir = tmp_path_factory.mktemp("straight")
    config = load_config(toy_recipe(tiny_shapes, epochs=3, checkpoint_every_iters=3))
    Trainer(config, run_dir, verbose=False).fit()
    return run_dir


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_after_kill_gives_the_same_weights_as_a_straight_run(straight_run: Path, tiny_shapes: Path,
                                                                   tmp_path: Path) -> None:
    config = load_config(toy_recipe(tiny_shapes, epochs=3, checkpoint_every_iters=3))
    train, val = build_datasets(data_config(config), seed=7)
    # 8 images, batch 2: 4 steps per epoch, 2 fetches per step; fetch 14 is inside step 7, after the
    # step-6 checkpoint (taken mid-epoch 2) and after an evaluation and a best.pt.
    killed = Trainer(config, tmp_path, train_dataset=FaultyDataset(train, kill_at=14), val_dataset=val, verbose=False)
    with pytest.raises(SimulatedKill):
        killed.fit()
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert (checkpoint["iteration"], checkpoint["epoch"], checkpoint["batch_in_epoch"]) == (6, 1, 2)
    straight_weights = _weights(straight_run / "last.pt")
    assert any(not torch.equal(value, straight_weights[key]) for key, value in checkpoint["model"].items())

    resumed = Trainer(load_config(toy_recipe(tiny_shapes, epochs=3, checkpoint_every_iters=3)), tmp_path,
                      resume=True, verbose=False)
    resumed.fit()
    final = load_checkpoint(tmp_path / "last.pt")
    assert final["iteration"] == 12
    assert final["model"].keys() == straight_weights.keys()
    for key, value in final["model"].items():
        assert torch.equal(value, straight_weights[key]), key
    straight_optimizer = load_checkpoint(straight_run / "last.pt")["optimizer"]["state"]
    for index, state in final["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], straight_optimizer[index]["momentum_buffer"])
    steps = [entry["iteration"] for entry in read_log(tmp_path / "log.jsonl") if entry["kind"] == "train"]
    assert steps == list(range(1, 13))


def test_resume_with_another_world_size_is_an_error_naming_both(toy_model: str, tiny_shapes: Path,
                                                                tmp_path: Path, capsys) -> None:
    recipe = toy_recipe(tiny_shapes, max_iters=1, eval_every_epochs=0)
    Trainer(load_config(recipe), tmp_path, verbose=False).fit()
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["world_size"] == 1 and len(checkpoint["rng"]) == 1
    save_checkpoint({**checkpoint, "world_size": 2}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt was saved by a run of world size 2 but this run has world "
                                              r"size 1; resume with 2 processes"):
        Trainer(load_config(recipe), tmp_path, resume=True, verbose=False)

    # A checkpoint from before "world_size" was stored: its number of RNG states (one per rank) tells.
    legacy = {key: value for key, value in checkpoint.items() if key not in ("world_size", "format")}
    save_checkpoint({**legacy, "rng": checkpoint["rng"] * 3}, tmp_path / "last.pt")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert train_det_tool().main([str(tmp_path / "recipe.yaml"), "--out", str(tmp_path), "--resume"]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "world size 3 but this run has world size 1" in printed


def test_the_toy_learns_its_box_and_class_within_ten_epochs(toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    recipe = toy_recipe(tiny_shapes, epochs=10, lr=0.1, schedule="constant", milestones=[], eval_every_epochs=0,
                        log_every=4)
    Trainer(load_config(recipe), tmp_path, verbose=False).fit()
    epochs = [entry for entry in read_log(tmp_path / "log.jsonl") if entry["kind"] == "epoch"]
    assert len(epochs) == 10

    def fall(term: str) -> float:
        """Mean ``term`` of the last two epochs over that of the first."""
        return (epochs[-1][term] + epochs[-2][term]) / 2 / epochs[0][term]

    assert fall("loss_box") < 0.75, [entry["loss_box"] for entry in epochs]  # measured 0.56
    assert fall("loss_cls") < 0.9, [entry["loss_cls"] for entry in epochs]  # measured 0.77


def test_run_folder_holds_parseable_records(straight_run: Path) -> None:
    entries = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    assert {entry["kind"] for entry in entries} == {"event", "train", "epoch"}
    epochs = [entry for entry in entries if entry["kind"] == "epoch"]
    assert [entry["epoch"] for entry in epochs] == [1, 2, 3]
    assert all(0.0 <= entry["AP50"] <= 1.0 and entry["loss"] > 0 for entry in epochs)
    rows = (straight_run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "iteration", "lr"] and len(rows) == 4
    for name in ("loss.png", "map.png"):
        picture = cv2.imread(str(straight_run / name))
        assert picture is not None and picture.shape[0] > 100
    resolved = yaml.safe_load((straight_run / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 5
    best = load_checkpoint(straight_run / "best.pt")
    assert best["best"]["metric"] == "AP50"
    assert best["best"]["value"] == max(entry["AP50"] for entry in epochs)
    assert best["class_names"][1:] == ["circle", "rectangle", "triangle", "ellipse", "star"]
    assert not [path.name for path in straight_run.iterdir() if path.name.startswith(".")]


def test_a_new_run_refuses_a_folder_that_holds_one(straight_run: Path, tiny_shapes: Path) -> None:
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(load_config(toy_recipe(tiny_shapes)), straight_run, verbose=False)


def test_non_finite_loss_stops_with_the_step_and_term_and_keeps_last_checkpoint(
        toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    config = load_config(toy_recipe(tiny_shapes, epochs=2, checkpoint_every_iters=1, eval_every_epochs=0))
    train, _ = build_datasets(data_config(config), seed=7)
    poisoned_index = 5
    trainer = Trainer(config, tmp_path, train_dataset=FaultyDataset(train, poison=(1, poisoned_index)), verbose=False)
    bad_step = 4 + trainer.sampler.epoch_order(1).index(poisoned_index) // 2 + 1
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert f"non-finite loss at iteration {bad_step} (epoch 2, " in message
    assert "loss term 'loss_box' = nan" in message and "nothing was saved" in message
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["iteration"] == bad_step - 1
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    assert max(entry.get("iteration", 0) for entry in read_log(tmp_path / "log.jsonl")) == bad_step - 1


def test_weights_only_loads_the_model_and_names_mismatched_keys(toy_model: str, tiny_shapes: Path,
                                                                tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_toy_detector(num_classes=5)
    save_checkpoint({"model": source.state_dict(), "iteration": 99}, tmp_path / "source.pt")
    trainer = Trainer(load_config(toy_recipe(tiny_shapes)), tmp_path / "run", weights=tmp_path / "source.pt",
                      verbose=False)
    for key, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value)
    assert trainer.position.iteration == 0

    other = build_toy_detector(num_classes=3, width=4)
    state = {**other.state_dict(), "extra.weight": torch.zeros(1)}
    save_checkpoint({"model": state}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*head\.weight") as raised:
        Trainer(load_config(toy_recipe(tiny_shapes)), tmp_path / "run2", weights=tmp_path / "other.pt", verbose=False)
    assert "unexpected (1): extra.weight" in str(raised.value)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(toy_model: str, tiny_shapes: Path,
                                                                 tmp_path: Path) -> None:
    final_weights = []
    for batch_size, accumulate in ((2, 1), (1, 2)):
        # SGD: AdamW would blow the rounding noise in the (analytically zero) gradient of the conv bias
        # before the BatchNorm up to full-size steps, which differ between the two summation orders.
        recipe = toy_recipe(tiny_shapes, epochs=2, clip_grad_norm=100.0, accumulate_steps=accumulate,
                            eval_every_epochs=0)
        recipe["model"]["dropout"] = 0.0
        recipe["data"]["batch_size"] = batch_size
        trainer = Trainer(load_config(recipe), tmp_path / f"batch{batch_size}", verbose=False)
        trainer.fit()
        assert trainer.position.iteration == 8
        final_weights.append(trainer.model.state_dict())
    initial = build_toy_detector(num_classes=5, dropout=0.0).state_dict()
    for key, value in final_weights[0].items():
        torch.testing.assert_close(final_weights[1][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(final_weights[0]["head.weight"], initial["head.weight"])


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "epoch", 3, r"unknown key 'epoch' in train.*Did you mean 'epochs'"),
    ("train", "optimizer", "adam", r"train.optimizer must be one of \('sgd', 'adamw'\), got 'adam'"),
    ("train", "best_metric", "mAP", r"train.best_metric must be one of"),
    ("train", "best_metric", "segm_AP50", r"best_metric must be one of \('AP', .*'ARl'\) \(the detection metrics; "
                                          r"segm_ metrics need an instance model and masks in the data\)"),
    ("train", "max_iters", 0, r"train.max_iters must be None \(all epochs\) or >= 1, got 0"),
    ("train", "max_iters", -3, r"train.max_iters must be None \(all epochs\) or >= 1, got -3"),
    ("train", "eval_every_epochs", -1, r"train.eval_every_epochs must be >= 0 \(0: never validate\), got -1"),
    ("train", "checkpoint_every_iters", -1, r"train.checkpoint_every_iters must be >= 0 \(0: only at epoch ends\)"),
    ("train", "warmup_iters", -1, r"train.warmup_iters must be >= 0 \(0: no warm-up\), got -1"),
    ("data", "batchsize", 2, r"unknown key 'batchsize' in data.*Did you mean 'batch_size'"),
    ("data", "augment", "heavy", r"data.augment must be one of"),
])
def test_bad_recipe_keys_are_config_errors_naming_the_key(registered_toy: str, tiny_shapes: Path, section: str,
                                                          key: str, value: object, expected: str) -> None:
    recipe = toy_recipe(tiny_shapes)
    recipe[section][key] = value
    config = load_config(recipe)
    with pytest.raises(ConfigError, match=expected):
        train_config(config)
        data_config(config)


def test_num_classes_from_the_data_and_a_contradicting_value_is_an_error(toy_model: str, tiny_shapes: Path,
                                                                        tmp_path: Path) -> None:
    recipe = toy_recipe(tiny_shapes)
    recipe["model"]["num_classes"] = 3
    with pytest.raises(ConfigError, match=r"model.num_classes is 3 but the training data has 5 classes"):
        Trainer(load_config(recipe), tmp_path, verbose=False)


def channels_last_run(tiny_shapes: Path, run_dir: Path, channels_last: bool) -> Trainer:
    """Two steps of the smoke Faster R-CNN at 64 px, SGD, in the default layout or channels-last."""
    recipe = yaml.safe_load((REPO_ROOT / "configs" / "smoke" / "faster_rcnn_r18_fpn_tiny.yaml").read_text())
    recipe["model"]["transform"].update(min_size=64, max_size=64)
    recipe["data"].update(format="coco", train=str(tiny_shapes / "annotations" / "instances_train.json"),
                          val=str(tiny_shapes / "annotations" / "instances_val.json"), image_size=64, max_size=64)
    recipe["train"].update(max_iters=2, log_every=1, eval_every_epochs=0, device="cpu", deterministic=True,
                           channels_last=channels_last)
    trainer = Trainer(load_config(recipe), run_dir, verbose=False)
    trainer.fit()
    return trainer


def test_channels_last_training_lays_out_the_model_and_changes_only_rounding(tiny_shapes: Path, tmp_path: Path) -> None:
    default = channels_last_run(tiny_shapes, tmp_path / "default", channels_last=False)
    nhwc = channels_last_run(tiny_shapes, tmp_path / "nhwc", channels_last=True)
    conv = nhwc.model.backbone.trunk.conv1.weight
    assert nhwc.model.channels_last and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    losses = [[entry["loss"] for entry in read_log(run / "log.jsonl") if entry["kind"] == "train"]
              for run in (tmp_path / "default", tmp_path / "nhwc")]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    for name, value in default.model.state_dict().items():
        torch.testing.assert_close(nhwc.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_on_a_model_without_the_layout_is_a_config_error(toy_model: str, tiny_shapes: Path,
                                                                        tmp_path: Path) -> None:
    config = load_config(toy_recipe(tiny_shapes, channels_last=True))
    with pytest.raises(ConfigError, match=r"train.channels_last needs a model with use_channels_last\(\); \w+ has none"):
        Trainer(config, tmp_path / "run", verbose=False)


def test_a_range_error_of_a_set_value_names_the_set(registered_toy: str, tiny_shapes: Path, tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(toy_recipe(tiny_shapes)))
    config = load_config(tmp_path / "recipe.yaml", ["train.max_iters=-3"])
    with pytest.raises(ConfigError, match=r"recipe.yaml \(--set train.max_iters=-3\): train.max_iters must be"):
        train_config(config)


def test_resume_with_another_model_says_what_differs_and_another_dataset_is_warned_of(
        toy_model: str, tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    Trainer(load_config(toy_recipe(tiny_shapes, max_iters=1, eval_every_epochs=0)), tmp_path, verbose=False).fit()
    other = toy_recipe(tiny_shapes, max_iters=2, eval_every_epochs=0)
    other["model"]["width"] = 4
    with pytest.raises(CheckpointError) as raised:
        Trainer(load_config(other), tmp_path, resume=True, verbose=False)
    assert str(raised.value) == (
        f"--resume: {tmp_path / 'last.pt'} was trained with model.width=unset; this recipe has model.width=4. "
        f"Resume with the run's own recipe ({tmp_path / 'config.yaml'}) or start a new run in another --out")

    elsewhere = toy_recipe(tiny_shapes, max_iters=2, eval_every_epochs=0)
    elsewhere["data"]["train"] = elsewhere["data"]["val"]
    Trainer(load_config(elsewhere), tmp_path, resume=True).fit()
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --resume continues {tmp_path / 'last.pt'} on other data: data.train="
                        f"{elsewhere['data']['val']} (it was trained with data.train={other['data']['train']})"]


def test_ctrl_c_says_where_training_stopped_and_what_resume_continues_from(
        toy_model: str, tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    config = load_config(toy_recipe(tiny_shapes, checkpoint_every_iters=2, eval_every_epochs=0))
    train, _ = build_datasets(data_config(config), seed=7)
    # batch 2: fetch 7 is inside step 4, after the step-2 checkpoint (step 3 has none)
    trainer = Trainer(config, tmp_path, train_dataset=FaultyDataset(train, kill_at=7, kill_with=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"interrupted after iteration 3; last checkpoint {tmp_path / 'last.pt'} (iteration 2); continue with --resume")
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2


def test_an_update_that_makes_weights_non_finite_stops_before_anything_is_saved(
        toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    config = load_config(toy_recipe(tiny_shapes, optimizer="sgd", lr=1e39, warmup_iters=0, eval_every_epochs=0,
                                    checkpoint_every_iters=1))
    with pytest.raises(NonFiniteLossError, match=r"training diverged: after iteration 1 \(epoch 1\) the weights "
                                                 r"\S+ (\(and \d+ more tensors\) )?hold NaN or infinite values; "
                                                 r"lower train.lr.*no checkpoint was saved yet"):
        Trainer(config, tmp_path, verbose=False).fit()
    assert not (tmp_path / "last.pt").exists()


class BoxCheckingToy(ToyDetector):
    """The toy, checking its predicted boxes as the detectors' box coder does (NaN is a ValueError)."""

    def _losses(self, images, boxes, logits, targets) -> dict[str, torch.Tensor]:
        check_boxes(boxes, "deltas")
        return super()._losses(images, boxes, logits, targets)


def test_a_box_check_that_overflowing_activations_fail_is_a_non_finite_loss_error(
        monkeypatch: pytest.MonkeyPatch, tiny_shapes: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(MODELS._builders, TOY_NAME, lambda num_classes=5: BoxCheckingToy(num_classes))
    config = load_config(toy_recipe(tiny_shapes, epochs=1, checkpoint_every_iters=1, eval_every_epochs=0))
    trainer = Trainer(config, tmp_path, verbose=False)
    with torch.no_grad():
        trainer.model.features[0].weight.fill_(3e38)  # finite weights whose outputs overflow
    with pytest.raises(NonFiniteLossError, match=r"at iteration 1 \(epoch 1, batch 1 of the epoch\) the output of "
                                                 r"layer 'features.0' became NaN or infinite \(deltas contains NaN"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists()


def test_nan_in_the_data_stays_the_datas_error_not_divergence(
        monkeypatch: pytest.MonkeyPatch, tiny_shapes: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(MODELS._builders, TOY_NAME, lambda num_classes=5: BoxCheckingToy(num_classes))
    config = load_config(toy_recipe(tiny_shapes, epochs=1, checkpoint_every_iters=1, eval_every_epochs=0))
    train, _ = build_datasets(data_config(config), seed=7)
    trainer = Trainer(config, tmp_path, train_dataset=FaultyDataset(train, poison=(0, 5)), verbose=False)
    with pytest.raises(ValueError, match="deltas contains NaN coordinates"):  # not NonFiniteLossError
        trainer.fit()


def test_unusable_data_found_in_a_worker_process_keeps_its_own_message(
        toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    recipe = toy_recipe(tiny_shapes, eval_every_epochs=0)
    recipe["data"]["workers"] = 2
    config = load_config(recipe)
    train, _ = build_datasets(data_config(config), seed=7)
    trainer = Trainer(config, tmp_path, train_dataset=FaultyDataset(train, kill_at=1, kill_with=ImageReadError),
                      verbose=False)
    with pytest.raises(ImageReadError) as raised:
        trainer.fit()
    assert str(raised.value) == "killed at fetch 1"
