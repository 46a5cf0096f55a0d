"""A strict, bounded reader of a GGUF file's header (key-value pairs and tensor infos), for check_gguf.

gguf-py's reader trusts the counts it reads: an edited array length can make it loop for billions of items, and
a value it cannot decode (a token that is not UTF-8) only fails later, in whoever asks for it. Here every count and
length is checked against the bytes left in the file before anything is read, every string must be UTF-8, and
each problem is one ValueError naming the file, the key or tensor and the byte offset. The rules are the GGUF
format's as ggml's loader applies them (gguf.cpp): version 2 or 3, no nested arrays, at most 4 dimensions,
tensor names under 64 bytes, no duplicate keys or tensor names, a power-of-two general.alignment of type UINT32."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# GGUF value types (the format's numbering)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
TYPE_NAMES = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64",
              "INT64", "FLOAT64"]
_NP = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4", FLOAT32: "<f4",
       BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}
MAX_DIMS, MAX_NAME = 4, 64


@dataclass
class Value:
    type: int                 # a GGUF value type
    value: object             # a Python scalar or str; for arrays a list (strings) or a numpy array
    item_type: int | None = None   # for arrays


@dataclass
class TensorInfo:
    name: str
    dims: list[int]           # ggml order: dims[0] is the row length
    type: int                 # a GGML type id
    offset: int               # relative to the data section


@dataclass
class Header:
    version: int
    kv: dict[str, Value] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = 32
    data_start: int = 0       # file offset of the data section

    def get(self, key: str, default=None):
        v = self.kv.get(key)
        return default if v is None else v.value


class _Bytes:
    def __init__(self, path: Path, data: bytes | memoryview):
        self.path, self.data, self.at = path, data, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: {what} (at byte {self.at}); the file is damaged or was edited, "
                          "re-export or re-download it.")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError(f"{self.path} is truncated or corrupt: {what} needs {n} bytes at byte {self.at}, the "
                             f"file has {len(self.data)}; re-export or re-download it.")
        out = bytes(self.data[self.at:self.at + n])   # a copy: nothing keeps the file's mapping alive
        self.at += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = self.take(n, f"{what} ({n} bytes)")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.at -= n - e.start
            raise self.fail(f"{what} is not UTF-8 text (byte {e.start} of it is 0x{raw[e.start]:02x})") from None

    def value(self, vtype: int, what: str):
        """A scalar or string value (arrays are read by array())."""
        if vtype == STRING:
            return self.string(what)
        if vtype not in _NP:
            raise self.fail(f"{what} has value type {vtype}, which is not a GGUF type")
        (v,) = np.frombuffer(self.take(np.dtype(_NP[vtype]).itemsize, what), _NP[vtype])
        return bool(v) if vtype == BOOL else v.item()

    def array(self, key: str) -> Value:
        item = self.u32(f"the item type of {key}")
        n = self.u64(f"the length of {key}")
        if item == STRING:
            if n * 8 > len(self.data) - self.at:   # each string takes at least its 8-byte length
                raise self.fail(f"{key} claims {n} strings, more than the rest of the file can hold")
            return Value(ARRAY, [self.string(f"{key}[{i}]") for i in range(n)], item)
        if item not in _NP:
            raise self.fail(f"{key} is an array of type {item}, which is not a GGUF type an array may hold (arrays "
                            "do not nest)")
        dt = np.dtype(_NP[item])
        return Value(ARRAY, np.frombuffer(self.take(n * dt.itemsize, f"{key} ({n} items)"), dt), item)


def read_header(path: str | Path, data: bytes | memoryview) -> Header:
    r = _Bytes(Path(path), data)
    if r.take(4, "the magic") != b"GGUF":
        r.at = 0
        raise r.fail("it does not start with the GGUF magic, so it is not a GGUF file")
    version = r.u32("the version")
    if version not in (2, 3):
        raise r.fail(f"GGUF version {version} is not one llama.cpp reads (2 or 3)")
    n_tensors, n_kv = r.u64("the tensor count"), r.u64("the key count")
    left = len(data) - r.at
    if n_kv * 13 > left or n_tensors * 28 > left:   # the smallest key-value pair and tensor info
        raise r.fail(f"the header claims {n_kv} keys and {n_tensors} tensors, more than the file can hold")
    h = Header(version)
    for i in range(n_kv):
        key = r.string(f"key {i}")
        if not key or not key.isprintable():
            raise r.fail(f"key {i} is {key!r}, not a printable name")
        if key in h.kv:
            raise r.fail(f"key {key!r} appears twice")
        vtype = r.u32(f"the type of {key}")
        h.kv[key] = r.array(key) if vtype == ARRAY else Value(vtype, r.value(vtype, key))
    align = h.kv.get("general.alignment")
    if align is not None:
        if align.type != UINT32 or align.value <= 0 or align.value & (align.value - 1):
            raise r.fail(f"general.alignment is {align.value!r} of type {_type_name(align.type)}, expected a "
                         "power of two of type UINT32")
        h.alignment = align.value
    names = set()
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}")
        problem = ("empty" if not name else "a duplicate" if name in names else "not printable" if not
                   name.isprintable() else f"{len(name.encode())} bytes, llama.cpp allows fewer than {MAX_NAME}"
                   if len(name.encode()) >= MAX_NAME else None)
        if problem:
            raise r.fail(f"tensor {i}'s name {name!r} is {problem}")
        names.add(name)
        n_dims = r.u32(f"the dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name} has {n_dims} dimensions, expected 1 to {MAX_DIMS}")
        dims = [r.u64(f"dimension {j} of {name}") for j in range(n_dims)]
        h.tensors.append(TensorInfo(name, dims, r.u32(f"the type of {name}"), r.u64(f"the offset of {name}")))
    h.data_start = -(-r.at // h.alignment) * h.alignment
    return h


def _type_name(t: int) -> str:
    return TYPE_NAMES[t] if 0 <= t < len(TYPE_NAMES) else str(t)
