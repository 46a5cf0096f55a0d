"""A deterministic corruption corpus of GGUF files: each case is a clean export with one damage, located with
gguf-py's reader (field and tensor-info offsets) and written as raw bytes.

Kinds: truncations, header bit flips, token-string bytes (invalid UTF-8, a token made equal to another), string
length fields, array lengths, hyperparameter values, value types, tensor infos (dims, type, offset), and random
flips in the tensor data. A case is (label, kind, path)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import gguf
import numpy as np

HPARAMS = ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
           "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count")


def _part_offsets(field) -> list[int]:
    """Byte offset in the file of every part of a gguf-py ReaderField (parts are consecutive from field.offset)."""
    out, at = [], field.offset
    for p in field.parts:
        out.append(at)
        at += p.nbytes
    return out


class GGUFCorpus:
    def __init__(self, clean: Path, root: Path, seed: int):
        self.clean, self.root, self.rng = Path(clean), Path(root), random.Random(seed)
        self.data = self.clean.read_bytes()
        self.reader = gguf.GGUFReader(self.clean)
        self.arch = self.reader.fields["general.architecture"].contents()
        self.data_start = min(t.data_offset for t in self.reader.tensors)
        self.cases: list[tuple[str, str, Path]] = []
        self.root.mkdir(parents=True, exist_ok=True)

    def _case(self, kind: str, label: str, data: bytes) -> None:
        p = self.root / f"{len(self.cases):05d}-{kind}.gguf"
        p.write_bytes(data)
        self.cases.append((f"{kind}: {label}", kind, p))

    def _patched(self, kind: str, label: str, offset: int, new: bytes) -> None:
        b = bytearray(self.data)
        b[offset:offset + len(new)] = new
        self._case(kind, label, bytes(b))

    # ---- the kinds ----
    def truncations(self, k: int) -> None:
        size = len(self.data)
        points = {3, 8, 16, 24, self.data_start - 1, self.data_start, size - 1}
        points |= {self.rng.randrange(24, self.data_start) for _ in range(k)}
        points |= {self.rng.randrange(self.data_start, size) for _ in range(k // 2)}
        for p in sorted(points):
            self._case("truncate", f"at byte {p}", self.data[:p])

    def header_flips(self, k: int) -> None:
        for _ in range(k):
            i = self.rng.randrange(0, self.data_start)
            b = bytearray(self.data)
            b[i] ^= 1 << self.rng.randrange(8)
            self._case("header-flip", f"byte {i}", bytes(b))

    def token_bytes(self, k: int) -> None:
        """Bytes inside tokenizer.ggml.tokens strings: invalid UTF-8, or one token made equal to another."""
        f = self.reader.fields["tokenizer.ggml.tokens"]
        offs = _part_offsets(f)
        idx = f.data   # the string-data parts, one per token
        tokens = [bytes(f.parts[i]) for i in idx]
        bad = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8"]
        for n in range(k):
            t = self.rng.randrange(len(idx))
            data = tokens[t]
            if not data:
                continue
            if n % 3 == 2:    # equal to another token of the same length (a duplicate in the vocabulary)
                same = [j for j, x in enumerate(tokens) if len(x) == len(data) and x != data]
                if same:
                    j = self.rng.choice(same)
                    self._patched("token-bytes", f"token {t} := token {j}", offs[idx[t]], tokens[j])
                continue
            seq = bad[n % len(bad)][:len(data)]
            at = self.rng.randrange(len(data) - len(seq) + 1)
            self._patched("token-bytes", f"token {t} byte {at} := {seq.hex()}", offs[idx[t]] + at, seq)

    def string_lengths(self, k: int) -> None:
        """The uint64 length before a string: a token, a key, or a string value."""
        targets = []
        f = self.reader.fields["tokenizer.ggml.tokens"]
        offs = _part_offsets(f)
        for i in self.rng.sample(list(f.data), min(k, len(f.data))):
            targets.append((f"token string {f.data.index(i)}", offs[i - 1], len(f.parts[i])))
        for name, fld in self.reader.fields.items():
            if name.startswith("GGUF."):
                continue
            o = _part_offsets(fld)
            targets.append((f"key {name}", o[0], len(fld.parts[1])))
            if fld.types == [gguf.GGUFValueType.STRING]:
                targets.append((f"value of {name}", o[-2], len(fld.parts[-1])))
        for label, at, n in self.rng.sample(targets, min(2 * k, len(targets))):
            new = self.rng.choice([n + 1, max(n - 1, 0), n + 7, 0, n * 256 + 3, 1 << 40, (1 << 64) - 1])
            self._patched("string-length", f"{label}: {n} -> {new}", at, struct.pack("<Q", new))

    def array_lengths(self) -> None:
        for name, fld in self.reader.fields.items():
            if fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY:
                at = _part_offsets(fld)[4]
                n = int(fld.parts[4][0])
                for new in (n - 1, n + 1, 0, 1 << 33):
                    self._patched("array-length", f"{name}: {n} -> {new}", at, struct.pack("<Q", max(new, 0)))

    def hparams(self) -> None:
        names = [f"{self.arch}.{h}" for h in HPARAMS] + [k for k in self.reader.fields if k.endswith("_token_id")]
        for name in names:
            fld = self.reader.fields.get(name)
            if fld is None or len(fld.types) != 1 or fld.types[0] == gguf.GGUFValueType.STRING:
                continue
            v, part = int(fld.parts[-1][0]), fld.parts[-1]
            at = _part_offsets(fld)[-1]
            for new in sorted({0, 1, v - 1, v + 1, v * 2, v // 2, 1 << 31, -1}):
                raw = np.array([new], dtype=np.int64).astype(part.dtype).tobytes()   # wraps, as the bytes would
                if raw != part.tobytes():
                    self._patched("hparam", f"{name}: {v} -> {np.frombuffer(raw, part.dtype)[0]}", at, raw)

    def value_types(self) -> None:
        """The type tag of a value (and of an array's items)."""
        for name, fld in sorted(self.reader.fields.items()):
            if name.startswith("GGUF."):
                continue
            o = _part_offsets(fld)
            for new in (gguf.GGUFValueType.INT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING, 99):
                if int(new) != int(fld.parts[2][0]):
                    self._patched("value-type", f"{name} type -> {int(new)}", o[2], struct.pack("<I", int(new)))
                    break
            if fld.types[0] == gguf.GGUFValueType.ARRAY:
                sub = int(fld.parts[3][0])
                new = gguf.GGUFValueType.INT32 if sub != gguf.GGUFValueType.INT32 else gguf.GGUFValueType.FLOAT32
                self._patched("value-type", f"{name} item type {sub} -> {int(new)}", o[3], struct.pack("<I", int(new)))

    def tensor_infos(self, k: int) -> None:
        tensors = self.reader.tensors
        for t in self.rng.sample(list(tensors), min(k, len(tensors))):
            o = _part_offsets(t.field)
            dims = [int(x) for x in t.field.parts[3]]
            j = self.rng.randrange(len(dims))
            for new_dim in (dims[j] * 2, dims[j] // 2 or 2, dims[j] + 32, 0):
                d = list(dims)
                d[j] = new_dim
                self._patched("tensor-info", f"{t.name} dims {dims} -> {d}", o[3], struct.pack(f"<{len(d)}Q", *d))
            ttype = int(t.field.parts[4][0])
            for new in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q5_0,
                        200):
                if int(new) != ttype:
                    self._patched("tensor-info", f"{t.name} type {ttype} -> {int(new)}", o[4], struct.pack("<I", int(new)))
            off = int(t.field.parts[5][0])
            for delta in (32, -32, 1, 1 << 30):
                if off + delta >= 0:
                    self._patched("tensor-info", f"{t.name} offset {off} -> {off + delta}", o[5],
                                  struct.pack("<Q", off + delta))
            self._patched("tensor-info", f"{t.name} n_dims {len(dims)} -> 5", o[2], struct.pack("<I", 5))

    def data_flips(self, k: int) -> None:
        for _ in range(k):
            b = bytearray(self.data)
            i = self.rng.randrange(self.data_start, len(b))
            b[i] ^= 1 << self.rng.randrange(8)
            self._case("data-flip", f"byte {i}", bytes(b))

    def build(self, scale: int = 1) -> list[tuple[str, str, Path]]:
        self.truncations(6 * scale)
        self.header_flips(30 * scale)
        self.token_bytes(18 * scale)
        self.string_lengths(6 * scale)
        self.array_lengths()
        self.hparams()
        self.value_types()
        self.tensor_infos(3 * scale)
        self.data_flips(4 * scale)
        return self.cases
