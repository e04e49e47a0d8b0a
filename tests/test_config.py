"""Configs: YAML loading, typed overrides, validation against builder signatures, dumping."""

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import pytest
import yaml

from structured.config import (
    Config,
    ConfigError,
    RegisteredPart,
    build_from_section,
    build_model,
    load_config,
    parse_value,
    type_name,
    validate_keys,
    validate_section,
    value_fits,
)
from structured.detection.rpn import RPNSettings
from structured.registry import MODELS, Registry

RECIPE = """
model:
  name: toy_detector
  num_classes: 3
  score_thresh: 0.05
  backbone:
    name: toy_backbone
    depth: 18
train:
  lr: 1e-3
  epochs: 2
  milestones: [8, 11]
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    return path


TOY_BACKBONES = Registry("backbone")


@TOY_BACKBONES.register("toy_backbone")
def toy_backbone(depth: int = 18, frozen_stages: int = 0, classifier: bool = False):
    return depth


def toy_detector(num_classes: int, score_thresh: float = 0.05,
                 backbone: Annotated[dict | None, RegisteredPart(TOY_BACKBONES, ("classifier",))] = None):
    return {"num_classes": num_classes, "score_thresh": score_thresh, "backbone": backbone}


@pytest.fixture
def registries():
    models = Registry("model")
    models.register("toy_detector")(toy_detector)
    return models, TOY_BACKBONES


def test_load_reads_scientific_notation_as_float(recipe_file):
    config = load_config(recipe_file)
    assert config.get("train.lr") == pytest.approx(1e-3)
    assert isinstance(config.get("train.lr"), float)
    assert config.get("train.milestones") == [8, 11]
    assert config["model"]["backbone"]["depth"] == 18


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("true", True),
        ("False", False),
        ("null", None),
        ("[1, 2, 3]", [1, 2, 3]),
        ("[0.5, [1, 2], x]", [0.5, [1, 2], "x"]),
        ("[]", []),
        ("resnet50", "resnet50"),
        ("'123'", "123"),
    ],
)
def test_parse_value_types(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_are_typed_and_create_sections(recipe_file):
    config = load_config(
        recipe_file,
        ["train.epochs=24", "model.score_thresh=0", "model.backbone.depth=50", "data.root=/tmp/x"],
    )
    assert config.get("train.epochs") == 24
    assert config.get("model.score_thresh") == 0.0 and isinstance(config.get("model.score_thresh"), float)
    assert config.get("model.backbone.depth") == 50
    assert config.get("data.root") == "/tmp/x"


@pytest.mark.parametrize("override", ["no_equals_sign", "=3", "a..b=1"])
def test_malformed_override_is_an_error(recipe_file, override):
    with pytest.raises(ConfigError):
        load_config(recipe_file, [override])


def test_override_through_a_value_is_an_error(recipe_file):
    with pytest.raises(ConfigError, match="'train.lr' is a value"):
        load_config(recipe_file, ["train.lr.x=1"])


def test_an_unknown_section_in_the_file_or_a_set_names_it_and_the_valid_sections(tmp_path, recipe_file):
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(RECIPE + "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"misspelt.yaml: unknown section 'trian'; valid sections: model, data, "
                                          r"train. Did you mean 'train'\?"):
        load_config(misspelt)
    with pytest.raises(ConfigError, match=r"toy.yaml \(--set trian.lr=0.1\): unknown section 'trian'.*"
                                          r"Did you mean 'train'\?"):
        load_config(recipe_file, ["trian.lr=0.1"])


def test_a_key_given_twice_names_the_file_the_line_and_the_key(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(RECIPE + "  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml, line 13: key 'lr' is given a second time \(first on "
                                          r"line 10\)"):
        load_config(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text("model: &base {name: a, depth: 18}\ndata: {<<: *base, depth: 50}\n")
    assert load_config(merged).get("data.depth") == 50


def test_an_unknown_key_given_with_set_names_the_set(recipe_file):
    config = load_config(recipe_file, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"toy.yaml \(--set train.lrr=0.1\): unknown key 'lrr' in train"):
        validate_keys(lambda lr=0.1, epochs=1, milestones=(): None, config["train"], "train", config.source,
                      config.overrides_under("train"))


def test_validation_accepts_recipe_and_builds(recipe_file, registries):
    models, _ = registries
    config = load_config(recipe_file)
    built = build_from_section(config["model"], models, "model", config.source)
    assert built["num_classes"] == 3
    assert built["backbone"] == {"name": "toy_backbone", "depth": 18}


def test_unknown_key_names_key_file_and_valid_keys(recipe_file, registries):
    models, _ = registries
    config = load_config(recipe_file, ["model.score_tresh=0.1"])
    with pytest.raises(ConfigError) as error:
        validate_section(config["model"], models, "model", config.source)
    message = str(error.value)
    assert str(recipe_file) in message
    assert "'score_tresh'" in message
    assert "num_classes, score_thresh, backbone" in message
    assert "Did you mean 'score_thresh'?" in message


def test_unknown_nested_key_is_found(recipe_file, registries):
    models, _ = registries
    config = load_config(recipe_file, ["model.backbone.frozen=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'frozen' in model.backbone \(toy_backbone\)"):
        validate_section(config["model"], models, "model", config.source)


def test_a_value_error_of_the_builder_names_the_file_and_the_model():
    models = Registry("model")

    @models.register("levels")
    def levels(sizes: Sequence[int] = (1, 2), ratios: Sequence[float] = (1.0, 1.0)):
        raise ValueError(f"sizes and ratios must have one entry per level, got {len(sizes)} and {len(ratios)}")

    with pytest.raises(ConfigError, match=r"^anchors.yaml: model \(levels\): sizes and ratios must have one entry "
                                          r"per level, got 2 and 3$"):
        build_from_section({"name": "levels", "ratios": [1.0, 2.0, 0.5]}, models, "model", "anchors.yaml")


def test_unknown_name_and_missing_keys(registries):
    models, _ = registries
    with pytest.raises(ConfigError, match="unknown model 'toy_detectr'.*Did you mean 'toy_detector'"):
        validate_section({"name": "toy_detectr"}, models, "model")
    with pytest.raises(ConfigError, match="missing required key.*num_classes"):
        validate_section({"name": "toy_detector"}, models, "model")
    with pytest.raises(ConfigError, match="has no 'name'"):
        validate_section({"num_classes": 3}, models, "model")


def test_validate_keys_accepts_var_keyword_builders():
    def builder(a, **rest):
        return a

    validate_keys(builder, {"a": 1, "anything": 2}, "section")


def test_dump_round_trips(tmp_path, recipe_file):
    config = load_config(recipe_file, ["train.epochs=5"])
    written = config.dump(tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(written.read_text()) == config.data
    assert load_config(written).data == config.data
    assert not list(written.parent.glob(".*.tmp"))


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)


def test_missing_key_error_names_source():
    config = Config({"a": {"b": 1}}, "recipe.yaml")
    assert config.get("a.c", 7) == 7
    with pytest.raises(KeyError, match=r"recipe.yaml: no key 'a.c'"):
        config["a.c"]


@pytest.mark.parametrize(
    ("value", "annotation", "fits"),
    [
        (1, float, True),
        (0.5, float, True),
        ("abc", float, False),
        (True, int, False),
        (True, bool, True),
        (1, bool, False),
        (2.5, int, False),
        (None, int | None, True),
        ("x", int | None, False),
        ([1, 2], Sequence[int], True),
        ([1, "x"], Sequence[int], False),
        ("ab", Sequence[str], False),
        ([[16], [32.0]], Sequence[Sequence[float]], True),
        (3, int | Sequence[int], True),
        ([1, 2], tuple[int, int], True),
        ([1], tuple[int, int], False),
        ({"a": 1}, dict[str, int], True),
        ({"a": "b"}, dict[str, int], False),
        ("sgd", Literal["sgd", "adamw"], True),
        ("adam", Literal["sgd", "adamw"], False),
        (object(), Callable[..., int], True),
    ],
)
def test_value_fits_annotation(value, annotation, fits):
    assert value_fits(value, annotation) is fits


def test_type_name_is_short_and_readable():
    assert type_name(int | None) == "int | None"
    assert type_name(Sequence[Sequence[float]]) == "Sequence[Sequence[float]]"
    assert type_name(float) == "float"


def test_wrong_typed_override_names_the_set_the_key_the_type_and_the_value(recipe_file, registries):
    models, _ = registries
    config = load_config(recipe_file, ["model.score_thresh=abc"])
    with pytest.raises(ConfigError) as error:
        validate_section(config["model"], models, "model", config.source, config.overrides)
    assert str(error.value) == (f"{recipe_file} (--set model.score_thresh=abc): 'score_thresh' in model (toy_detector) "
                                "must be float, got 'abc' (str)")
    config = load_config(recipe_file, ["model.backbone.depth=[1]"])
    with pytest.raises(ConfigError, match=r"--set model.backbone.depth=\[1\]\): 'depth' in model.backbone "
                                          r"\(toy_backbone\) must be int, got \[1\] \(list\)"):
        validate_section(config["model"], models, "model", config.source, config.overrides)


def test_wrong_typed_recipe_value_names_the_file_and_an_int_is_a_float(tmp_path, registries):
    models, _ = registries
    recipe = tmp_path / "typed.yaml"
    recipe.write_text("model:\n  name: toy_detector\n  num_classes: three\n  score_thresh: 1\n")
    config = load_config(recipe)
    with pytest.raises(ConfigError, match=rf"^{recipe}: 'num_classes' in model \(toy_detector\) must be int, "
                                          r"got 'three' \(str\)$"):
        validate_section(config["model"], models, "model", config.source)
    config.set("model.num_classes", 3)
    validate_section(config["model"], models, "model", config.source)
    with pytest.raises(ConfigError, match="model.name must be a string"):
        validate_section({"name": 3}, models, "model")


def test_a_key_the_model_fills_in_is_refused_in_its_part(registries):
    models, _ = registries
    section = {"name": "toy_detector", "num_classes": 3, "backbone": {"name": "toy_backbone", "classifier": True}}
    with pytest.raises(ConfigError, match=r"unknown key 'classifier' in model.backbone \(toy_backbone\); "
                                          r"valid keys: depth, frozen_stages. The model sets 'classifier' itself."):
        validate_section(section, models, "model")


GROUPED = """
model:
  name: faster_rcnn_r18_fpn
  num_classes: 3
  backbone: {frozen_stages: 0}
  rpn: {post_nms_top_n_test: 50}
  transform: {min_size: 96, max_size: 128}
"""


@pytest.fixture
def grouped_recipe(tmp_path):
    path = tmp_path / "grouped.yaml"
    path.write_text(GROUPED)
    return path


def test_parts_merge_over_the_registered_recipe_and_overrides_reach_the_model(grouped_recipe):
    config = load_config(grouped_recipe, ["model.roi_heads.score_thresh=0.3", "model.rpn.nms_thresh=0.6"])
    model = build_model(config)
    assert model.roi_heads.score_thresh == 0.3 and model.roi_heads.detections_per_img == 100
    assert model.rpn.nms_thresh == 0.6 and model.rpn.test_settings.post_nms_top_n == 50
    assert model.rpn.test_settings.pre_nms_top_n == 1000  # the recipe's default, not named in the file
    assert model.backbone.frozen_modules == ()  # frozen_stages 0 over the recipe's 2; its levels and norm kept
    assert list(model.backbone.out_channels) == ["c2", "c3", "c4", "c5"]
    assert model.roi_heads.box_head.fc6.out_features == 512  # the r18 recipe's representation_size
    assert model.transform.min_sizes == (96,) and model.neck.out_channels["p2"] == 128


def test_neck_null_removes_the_recipes_neck():
    model = MODELS.build("faster_rcnn_r18_fpn", num_classes=2, neck=None, rpn={
        "features": ["c4"], "anchor_sizes": [[64, 128]], "aspect_ratios": [[1.0]]}, roi_heads={"features": ["c4"]})
    assert model.neck is None and model.rpn_features == ["c4"]


def test_unknown_key_in_a_settings_part_names_the_part_and_its_valid_keys(grouped_recipe):
    config = load_config(grouped_recipe, ["model.rpn.nms_tresh=0.6"])
    with pytest.raises(ConfigError) as error:
        build_model(config)
    valid = ", ".join(RPNSettings.__dataclass_fields__)
    assert str(error.value) == (f"{grouped_recipe} (--set model.rpn.nms_tresh=0.6): unknown key 'nms_tresh' in "
                                f"model.rpn; valid keys: {valid}. "
                                "Did you mean 'nms_thresh'?")


def test_wrong_type_inside_a_part_names_the_set_and_the_key(grouped_recipe):
    config = load_config(grouped_recipe, ["model.roi_heads.score_thresh=high"])
    with pytest.raises(ConfigError) as error:
        build_model(config)
    assert str(error.value) == (f"{grouped_recipe} (--set model.roi_heads.score_thresh=high): 'score_thresh' in "
                                "model.roi_heads must be float, got 'high' (str)")
    config = load_config(grouped_recipe, ["model.backbone.frozen_stages=two"])
    with pytest.raises(ConfigError, match=r"\(--set model.backbone.frozen_stages=two\): 'frozen_stages' in "
                                          r"model.backbone \(resnet18\) must be int"):
        build_model(config)
    with pytest.raises(ConfigError, match=r"'rpn' in model \(faster_rcnn_r18_fpn\) must be RPNSettings \| "
                                          r"Mapping\[str, Any\], got 0.6"):
        build_model(load_config(grouped_recipe, ["model.rpn=0.6"]))


def test_unknown_key_in_a_registered_part_is_checked_after_the_merge(grouped_recipe):
    config = load_config(grouped_recipe, ["model.neck.out_chanels=64"])
    with pytest.raises(ConfigError, match=r"unknown key 'out_chanels' in model.neck \(fpn\); valid keys: "
                                          r"out_channels, extra_levels, extra_from, norm_layer. Did you mean"):
        build_model(config)
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet19'"):
        build_model(load_config(grouped_recipe, ["model.backbone.name=resnet19"]))


def test_an_old_flat_recipe_is_told_where_each_key_goes(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("model:\n  name: faster_rcnn_r18_fpn\n  backbone: resnet18\n  rpn_post_nms_top_n_test: 100\n"
                    "  box_head: conv_fc\n  min_size: 128\n  fpn_channels: 64\n")
    with pytest.raises(ConfigError) as error:
        build_model(load_config(path))
    message = str(error.value)
    assert message.startswith(f"{path}: model (faster_rcnn_r18_fpn) uses keys of the old flat recipe format; each "
                              "part (backbone, neck, rpn, roi_heads, transform) now has its own sub-section.")
    for move in ("rpn_post_nms_top_n_test -> rpn.post_nms_top_n_test", "box_head -> roi_heads.head",
                 "min_size -> transform.min_size", "fpn_channels -> neck.out_channels",
                 "backbone: resnet18 -> backbone.name"):
        assert move in message
    with pytest.raises(ConfigError, match="box_score_thresh -> roi_heads.score_thresh"):
        MODELS.build("faster_rcnn_r18_fpn", box_score_thresh=0.0)


def test_settings_parts_accept_their_dataclass_and_check_mappings_built_directly():
    from structured.detection import build_faster_rcnn

    backbone, neck = {"name": "resnet18", "out_levels": ["c2", "c3", "c4", "c5"]}, {"name": "fpn", "out_channels": 32}
    model = build_faster_rcnn(num_classes=2, backbone=backbone, neck=neck, rpn=RPNSettings(nms_thresh=0.5))
    assert model.rpn.nms_thresh == 0.5
    with pytest.raises(ConfigError, match=r"unknown key 'nms' in roi_heads; valid keys: features, head"):
        build_faster_rcnn(num_classes=2, backbone=backbone, neck=neck, roi_heads={"nms": 0.1})


def test_value_fits_a_settings_dataclass_as_itself_or_a_mapping():
    assert value_fits(RPNSettings(), RPNSettings | Mapping[str, Any])
    assert value_fits({"nms_thresh": 0.5}, RPNSettings)
    assert not value_fits(0.5, RPNSettings)
