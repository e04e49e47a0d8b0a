"""Atomic writes and JSON reading with located errors."""

import json
import os
import stat

import pytest
import torch

from structured.io import atomic_output, load_json, load_torch_file, save_json, write_text


def test_atomic_output_replaces_only_on_success(tmp_path):
    path = tmp_path / "out" / "data.txt"
    write_text("old", path)
    with pytest.raises(RuntimeError), atomic_output(path) as temporary:
        temporary.write_text("half-written")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.txt"]
    write_text("new", path)
    assert path.read_text() == "new"


def test_atomic_output_gives_the_permissions_of_a_plainly_created_file(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text("x", tmp_path / "atomic.txt")
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_json_round_trip_and_errors(tmp_path):
    path = save_json({"a": [1, 2]}, tmp_path / "doc.json")
    assert load_json(path) == {"a": [1, 2]}
    assert load_json({"already": "loaded"}) == {"already": "loaded"}
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"results file .*broken.json: malformed JSON at line 2 column 7"):
        load_json(broken, "results")
    with pytest.raises(ValueError, match="annotation file not found"):
        load_json(tmp_path / "missing.json", "annotation")
    assert json.loads(path.read_text()) == {"a": [1, 2]}


def test_load_torch_file_names_the_file(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    assert torch.equal(load_torch_file(tmp_path / "good.pt")["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="weights not found: .*missing.pt"):
        load_torch_file(tmp_path / "missing.pt", "weights")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read checkpoint .*cut.pt"):
        load_torch_file(tmp_path / "cut.pt")


class _NotAllowed:
    """A class ``weights_only`` loading refuses to unpickle."""


def test_load_torch_file_errors_are_one_sentence_naming_the_file_and_the_cause(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:300])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"object": _NotAllowed()}, tmp_path / "pickle.pt")
    messages = {}
    for name in ("cut.pt", "empty.pt", "pickle.pt"):
        with pytest.raises(ValueError) as error:
            load_torch_file(tmp_path / name)
        messages[name] = str(error.value)
    assert all("\n" not in message and f"checkpoint {tmp_path / name}" in message for name, message in messages.items())
    assert "empty, truncated or not written by torch.save" in messages["cut.pt"]
    assert "empty, truncated" in messages["empty.pt"]
    assert "_NotAllowed" in messages["pickle.pt"] and "weights_only=True" in messages["pickle.pt"]


def test_an_exported_model_is_named_as_such_not_as_a_corrupt_checkpoint(tmp_path) -> None:
    onnx_like = tmp_path / "model.pt"
    onnx_like.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX ModelProto starts with ir_version (field 1)
    with pytest.raises(ValueError, match=rf"^{onnx_like} is an exported ONNX model, not a checkpoint; use the"):
        load_torch_file(onnx_like)
