"""A minimal reader and writer of the public safetensors format.

Layout: an 8-byte little-endian header length `L`, `L` bytes of UTF-8 JSON header
(`{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`), then the raw little-endian tensor data; offsets are relative
to the end of the header. Reading is bounds-checked: a truncated or malformed file raises a
ValueError saying what is wrong, never returns garbage.
"""

import json
import math
import struct
import sys

import torch

__all__ = ["save_file", "load_file", "load_file_with_metadata", "read_metadata",
           "serialize", "deserialize", "DTYPES"]

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


def _raw_bytes(t):
    """The tensor's contiguous bytes in little-endian order."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    raw = flat.view(torch.uint8)
    itemsize = flat.element_size()
    if sys.byteorder != "little" and itemsize > 1:
        raw = raw.view(-1, itemsize).flip(1).reshape(-1)
    return raw.numpy().tobytes()


def serialize(tensors, metadata=None):
    """`tensors` {name: Tensor} (sorted by name in the file) -> bytes."""
    if not isinstance(tensors, dict):
        raise ValueError(f"tensors must be a dict of name -> Tensor, got {type(tensors).__name__}")
    header = {}
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata must be a dict of str -> str")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {t.dtype}; supported: "
                             + ", ".join(DTYPES))
        data = _raw_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": [int(s) for s in t.shape],
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save_file(tensors, path, metadata=None):
    """Writes `tensors` {name: Tensor} to `path`, with an optional str -> str metadata map."""
    blob = serialize(tensors, metadata)
    with open(path, "wb") as f:
        f.write(blob)


def _parse_header(buf, source):
    if len(buf) < 8:
        raise ValueError(f"{source}: truncated safetensors file: {len(buf)} bytes, need at "
                         "least 8 for the header length")
    (hlen,) = struct.unpack("<Q", buf[:8])
    if hlen > _MAX_HEADER:
        raise ValueError(f"{source}: safetensors header length {hlen} exceeds the limit "
                         f"{_MAX_HEADER}")
    if 8 + hlen > len(buf):
        raise ValueError(f"{source}: truncated safetensors file: header length {hlen} but only "
                         f"{len(buf) - 8} bytes follow")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{source}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: safetensors header must be a JSON object")
    return header, 8 + hlen


def _check_entry(name, entry, data_len, source):
    where = f"{source}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: entry must be an object")
    unknown = set(entry) - {"dtype", "shape", "data_offsets"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype!r}; supported: " + ", ".join(DTYPES))
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise ValueError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ValueError(f"{where}: data_offsets {offsets} must satisfy 0 <= begin <= end")
    if end > data_len:
        raise ValueError(f"{where}: data_offsets {offsets} run past the end of the data "
                         f"({data_len} bytes); the file is truncated or corrupt")
    want = math.prod(shape) * _ITEMSIZE[dtype]
    if end - begin != want:
        raise ValueError(f"{where}: shape {shape} of {dtype} needs {want} bytes, data_offsets "
                         f"{offsets} hold {end - begin}")
    return dtype, shape, begin, end


def deserialize(buf, source="<bytes>"):
    """bytes -> (tensors {name: Tensor}, metadata {str: str} or None)."""
    buf = memoryview(buf)
    header, data_start = _parse_header(buf, source)
    data_len = len(buf) - data_start
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError(f"{source}: __metadata__ must be an object of string values")
    entries = []
    for name, entry in header.items():
        entries.append((name,) + _check_entry(name, entry, data_len, source))
    spans = sorted((begin, end, name) for name, _, _, begin, end in entries if end > begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{source}: tensors {n0!r} and {n1!r} overlap in the data buffer")
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=DTYPES[dtype])
            continue
        raw = bytearray(buf[data_start + begin:data_start + end])
        itemsize = _ITEMSIZE[dtype]
        t = torch.frombuffer(raw, dtype=torch.uint8)
        if sys.byteorder != "little" and itemsize > 1:
            t = t.view(-1, itemsize).flip(1).reshape(-1).clone()
        if dtype == "BOOL" and bool((t > 1).any()):
            raise ValueError(f"{source}: tensor {name!r}: BOOL data must be 0 or 1 bytes")
        tensors[name] = t.view(DTYPES[dtype]).reshape(shape)
    return tensors, metadata


def load_file_with_metadata(path):
    """-> (tensors {name: Tensor}, metadata {str: str} or None)."""
    with open(path, "rb") as f:
        buf = f.read()
    return deserialize(buf, str(path))


def load_file(path):
    """-> {name: Tensor} (CPU tensors that own their memory)."""
    return load_file_with_metadata(path)[0]


def read_metadata(path):
    """The `__metadata__` map of a file (None when absent)."""
    return load_file_with_metadata(path)[1]
