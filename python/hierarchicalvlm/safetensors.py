"""Our own minimal reader and writer of the public safetensors format.

Layout: 8-byte little-endian header length, a JSON header mapping tensor names to
{"dtype", "shape", "data_offsets"} (plus an optional "__metadata__" string map), then the raw
little-endian tensor data. Reading is bounds-checked and raises ValueError naming the problem.
"""
import json
import os
import struct

import numpy as np
import torch

MAX_HEADER_BYTES = 64 << 20

# name -> (torch dtype, numpy dtype used to move the bytes, element size)
DTYPES = {
    "F32": (torch.float32, np.float32), "F64": (torch.float64, np.float64),
    "F16": (torch.float16, np.float16), "BF16": (torch.bfloat16, np.int16),
    "I64": (torch.int64, np.int64), "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16), "I8": (torch.int8, np.int8),
    "U8": (torch.uint8, np.uint8), "BOOL": (torch.bool, np.bool_),
}
NAMES = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


def _to_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def serialize(tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in NAMES:
            raise ValueError(f"safetensors: cannot store dtype {t.dtype} ({name})")
        data = _to_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save_file(tensors, path, metadata=None):
    data = serialize(tensors, metadata)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def parse(data, source="<bytes>"):
    """-> (tensors dict, metadata dict)"""
    if len(data) < 8:
        raise ValueError(f"{source}: not a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{source}: header length {n} exceeds the limit (corrupt file?)")
    if n > len(data) - 8:
        raise ValueError(f"{source}: header length {n} runs past the end of the file (truncated?)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{source}: the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: the header is not a JSON object")
    payload = memoryview(data)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{source}: __metadata__ must map strings to strings")
    tensors = {}
    for name, e in header.items():
        where = f"{source}: tensor '{name}'"
        if not isinstance(e, dict) or e.get("dtype") not in DTYPES:
            raise ValueError(f"{where} has a missing or unsupported dtype")
        shape, offsets = e.get("shape"), e.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{where} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets)):
            raise ValueError(f"{where} must have data_offsets [begin, end]")
        begin, end = offsets
        if not begin <= end <= len(payload):
            raise ValueError(f"{where} has data_offsets {offsets} outside the data section")
        torch_dtype, np_dtype = DTYPES[e["dtype"]]
        count = int(np.prod(shape)) if shape else 1
        if count * np.dtype(np_dtype).itemsize != end - begin:
            raise ValueError(f"{where}: {end - begin} bytes do not match dtype and shape {shape}")
        arr = np.frombuffer(payload[begin:end], dtype=np_dtype).copy().reshape(shape)
        t = torch.from_numpy(arr)
        tensors[name] = t.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else t
    return tensors, metadata


def load_file(path):
    with open(path, "rb") as f:
        return parse(f.read(), path)[0]


def load_metadata(path):
    with open(path, "rb") as f:
        return parse(f.read(), path)[1]
