"""The safetensors reader/writer: byte layout, round trips of every dtype, and clear
ValueErrors for truncated or corrupt files."""

import json
import struct

import pytest
import torch

from hierarchicalvlm.safetensors import (DTYPES, deserialize, load_file,
                                         load_file_with_metadata, read_metadata, save_file,
                                         serialize)


def _sample():
    t = {
        "f64": torch.randn(3, 2, dtype=torch.float64),
        "f32": torch.randn(2, 3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.tensor([-(2 ** 40), 7, 0]),
        "i32": torch.tensor([[-3, 2 ** 30]], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6).t(),   # non-contiguous input
    }
    return t


def test_round_trip_every_dtype(tmp_path):
    tensors = _sample()
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    loaded, metadata = load_file_with_metadata(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert read_metadata(path) == metadata
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name], t), name
    assert {t.dtype for t in loaded.values()} == set(DTYPES.values())
    assert load_file(path).keys() == loaded.keys()


def test_byte_layout():
    blob = serialize({"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([7], dtype=torch.int16)},
                     metadata={"format": "pt"})
    (hlen,) = struct.unpack("<Q", blob[:8])
    assert (8 + hlen) % 8 == 0
    header = json.loads(blob[8:8 + hlen])
    assert header == {"__metadata__": {"format": "pt"},
                      "a": {"dtype": "I16", "shape": [1], "data_offsets": [0, 2]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}}
    data = blob[8 + hlen:]
    assert data == struct.pack("<h", 7) + struct.pack("<2f", 1.0, 2.0)
    assert [k for k in header if k != "__metadata__"] == ["a", "b"]


def test_no_metadata():
    tensors, metadata = deserialize(serialize({"x": torch.ones(2)}))
    assert metadata is None and torch.equal(tensors["x"], torch.ones(2))


def _file(header, data=b"", pad=True):
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


F32_2 = struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize("blob,match", [
    (b"", "truncated"),
    (b"\x10\x00\x00", "truncated"),
    (struct.pack("<Q", 2 ** 62), "exceeds the limit"),
    (struct.pack("<Q", 64) + b"{}", "truncated"),
    (struct.pack("<Q", 4) + b"{abc", "not valid JSON"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
    (_file([1, 2]), "must be a JSON object"),
    (_file({"x": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, F32_2), "unsupported dtype"),
    (_file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, F32_2), "shape"),
    (_file({"x": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, F32_2), "shape"),
    (_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, F32_2), "data_offsets"),
    (_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, F32_2), "begin <= end"),
    (_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, F32_2), "past the end"),
    (_file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, F32_2), "needs 12 bytes"),
    (_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32_2), "overlap"),
    (_file({"x": "F32"}), "entry must be an object"),
    (_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}}, F32_2),
     "unknown field"),
    (_file({"__metadata__": {"a": 1}}), "__metadata__"),
    (_file({"x": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"), "BOOL"),
])
def test_corrupt_files_raise_value_error(tmp_path, blob, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=match):
        load_file(path)


def test_every_truncation_is_a_value_error():
    blob = serialize({"a": torch.randn(3, 3), "b": torch.arange(5)}, metadata={"k": "v"})
    for cut in range(len(blob)):
        with pytest.raises(ValueError):
            deserialize(blob[:cut])
    deserialize(blob)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unsupported dtype"):
        serialize({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="metadata"):
        serialize({"x": torch.zeros(1)}, metadata={"a": 1})
    with pytest.raises(ValueError, match="torch.Tensor"):
        serialize({"x": [1.0]})
    with pytest.raises(ValueError, match="invalid tensor name"):
        serialize({"__metadata__": torch.zeros(1)})
