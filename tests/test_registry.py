"""Registry: decorator registration, lookup, and errors that list what is known."""

import pytest

from structured.registry import BACKBONES, MODELS, NECKS, Registry, UnknownNameError


def make_registry() -> Registry:
    registry = Registry("widget")

    @registry.register("small_widget")
    def build_small(size: int = 1) -> tuple[str, int]:
        return ("small", size)

    @registry.register()
    def large_widget() -> str:
        return "large"

    return registry


def test_register_and_build_by_name():
    registry = make_registry()
    assert registry.build("small_widget", size=3) == ("small", 3)
    assert registry.build("large_widget") == "large"
    assert registry.names() == ["large_widget", "small_widget"]
    assert "small_widget" in registry and "other" not in registry
    assert len(registry) == 2


def test_unknown_name_lists_registered_names_and_closest_match():
    registry = make_registry()
    with pytest.raises(UnknownNameError) as error:
        registry.get("smal_widget")
    message = str(error.value)
    assert "unknown widget 'smal_widget'" in message
    assert "large_widget, small_widget" in message
    assert "Did you mean 'small_widget'?" in message
    assert isinstance(error.value, KeyError)


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownNameError, match="registered widgets") as error:
        make_registry().get("zzzz")
    assert "Did you mean" not in str(error.value)


def test_registering_a_different_builder_twice_is_an_error():
    registry = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("small_widget")(lambda: None)


def test_non_string_name_is_a_type_error():
    with pytest.raises(TypeError, match="must be a string"):
        make_registry().get(3)


def test_project_registries_have_their_kinds():
    assert (BACKBONES.kind, NECKS.kind, MODELS.kind) == ("backbone", "neck", "model")
