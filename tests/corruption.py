"""A deterministic corruption corpus of hfq checkpoints: each case is a copy of a clean save with one damage.

Kinds: truncations, header bit flips, renamed / retyped / reshaped tensors, edited offsets, config.json and
safetensors-metadata edits, NaN / Inf / huge scales, and random data flips. A case is (name, kind, folder);
unchanged files are hard links to the clean save, so a thousand cases cost little disk.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import numpy as np

WEIGHTS = "model.safetensors"


def _header(data: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def _with_header(data: bytes, header: dict) -> bytes:
    """The file with a new JSON header, padded with spaces to the old length when it fits (offsets stay)."""
    n, _ = _header(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) <= n:
        raw = raw + b" " * (n - len(raw))
        return data[:8] + raw + data[8 + n:]
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _layout_keys(header: dict, names=("scales", "absmax", "absmax_scale", "absmax_offset")) -> list[str]:
    return sorted(k for k in header if k != "__metadata__" and k.rsplit(".", 1)[-1] in names)


class Corpus:
    def __init__(self, clean: Path, root: Path, seed: int):
        self.clean, self.root, self.rng = Path(clean), Path(root), random.Random(seed)
        self.data = (self.clean / WEIGHTS).read_bytes()
        self.n, self.header = _header(self.data)
        self.config = json.loads((self.clean / "config.json").read_text())
        self.cases: list[tuple[str, str, Path]] = []

    # ---- writing one case ----
    def _case(self, kind: str, name: str, files: dict[str, bytes], drop: tuple[str, ...] = ()) -> None:
        d = self.root / f"{len(self.cases):05d}-{kind}"
        d.mkdir(parents=True)
        for p in self.clean.iterdir():
            if p.is_file() and p.name not in files and p.name not in drop:
                os.link(p, d / p.name)
        for fname, content in files.items():
            (d / fname).write_bytes(content)
        self.cases.append((f"{kind}: {name}", kind, d))

    def weights(self, kind: str, name: str, data: bytes, card: bool) -> None:
        self._case(kind, name, {WEIGHTS: data}, () if card else ("README.md",))

    def config_edit(self, name: str, edit, card: bool = False) -> None:
        cfg = json.loads(json.dumps(self.config))
        edit(cfg)
        self._case("config", name, {"config.json": json.dumps(cfg, indent=2).encode()},
                   () if card else ("README.md",))

    def header_edit(self, kind: str, name: str, edit, card: bool = False) -> None:
        h = json.loads(json.dumps(self.header))
        edit(h)
        self.weights(kind, name, _with_header(self.data, h), card)

    # ---- the kinds ----
    def truncations(self, k: int) -> None:
        size = len(self.data)
        points = {4, 8, 9, 8 + self.n // 2, 8 + self.n, size - 1} | {self.rng.randrange(1, size) for _ in range(k)}
        for p in sorted(points)[:k + 6]:
            self.weights("truncate", f"at byte {p}", self.data[:p], card=False)

    def header_bit_flips(self, k: int) -> None:
        for _ in range(k):
            i = self.rng.randrange(8, 8 + self.n)
            b = bytearray(self.data)
            b[i] ^= 1 << self.rng.randrange(8)
            self.weights("header-flip", f"byte {i}", bytes(b), card=False)

    def renames(self, k: int) -> None:
        keys = [x for x in self.header if x != "__metadata__"]
        for key in self.rng.sample(keys, min(k, len(keys))):
            j = self.rng.randrange(len(key))
            new = key[:j] + ("x" if key[j] != "x" else "y") + key[j + 1:]
            self.header_edit("rename", f"{key} -> {new}", lambda h, key=key, new=new: h.__setitem__(new, h.pop(key)))

    def retypes(self) -> None:
        same = {"U8": "I8", "I8": "U8", "F16": "BF16", "BF16": "F16", "F32": "I32", "I32": "F32"}
        for key in sorted(x for x in self.header if x != "__metadata__"):
            t = self.header[key]["dtype"]
            if t in same and (key.endswith((".scales", ".absmax", ".zeros", ".g_idx")) or self.rng.random() < 0.3):
                self.header_edit("retype", f"{key} {t}->{same[t]}",
                                 lambda h, key=key, t=t: h[key].__setitem__("dtype", same[t]))

    def reshapes(self, k: int) -> None:
        keys = [x for x in self.header if x != "__metadata__" and len(self.header[x]["shape"]) >= 1
                and int(np.prod(self.header[x]["shape"])) > 1]
        for key in self.rng.sample(keys, min(k, len(keys))):
            shape = self.header[key]["shape"]
            n = int(np.prod(shape))
            new = [n] if len(shape) > 1 else [n // 2, 2] if n % 2 == 0 else [1, n]
            if len(shape) > 2:
                new = [shape[1], shape[0], *shape[2:]]
            self.header_edit("reshape", f"{key} {shape}->{new}",
                             lambda h, key=key, new=new: h[key].__setitem__("shape", new))

    def offsets(self, k: int) -> None:
        keys = sorted(x for x in self.header if x != "__metadata__")
        for key in self.rng.sample(keys, min(k, len(keys))):
            delta = self.rng.choice([-4, -2, -1, 1, 2, 4, 64])
            self.header_edit("offsets", f"{key} shifted {delta}", lambda h, key=key, d=delta: h[key].__setitem__(
                "data_offsets", [max(0, h[key]["data_offsets"][0] + d), max(0, h[key]["data_offsets"][1] + d)]))

    def metadata(self) -> None:
        meta = self.header.get("__metadata__", {})
        layers = json.loads(meta.get("hfq_layers", "{}"))
        first = sorted(layers)[0]

        def set_meta(key, value):
            return lambda h: h["__metadata__"].__setitem__(key, value)

        self.header_edit("metadata", "hfq_method nf4<->fp4 / other", set_meta("hfq_method", _other_method(meta)))
        self.header_edit("metadata", "no hfq metadata", lambda h: h.pop("__metadata__"))
        self.header_edit("metadata", "hfq_layers not JSON", set_meta("hfq_layers", "{broken"))
        self.header_edit("metadata", "a layer dropped from hfq_layers",
                         set_meta("hfq_layers", json.dumps({k: v for k, v in layers.items() if k != first})))
        self.header_edit("metadata", "a layer shape [0, 0]",
                         set_meta("hfq_layers", json.dumps({**layers, first: [0, 0]})))
        self.header_edit("metadata", "a layer shape transposed",
                         set_meta("hfq_layers", json.dumps({**layers, first: layers[first][::-1] if
                                                            layers[first][0] != layers[first][1] else [1, 1]})))
        types = json.loads(meta.get("hfq_tensor_types", "{}"))
        if types:
            t0 = sorted(types)[0]
            self.header_edit("metadata", "a GGML type changed in hfq_tensor_types",
                             set_meta("hfq_tensor_types", json.dumps({**types, t0: "Q8_0" if types[t0] != "Q8_0"
                                                                      else "Q4_0"})))

    def config_edits(self) -> None:
        qc = self.config["quantization_config"]

        def q(**kw):
            return lambda c: c["quantization_config"].update(kw)

        self.config_edit("sym flipped", q(sym=not qc.get("sym", True)))
        self.config_edit("double_quant flipped", q(double_quant=not qc.get("double_quant", False)))
        self.config_edit("method changed", q(method={"nf4": "fp4", "fp4": "nf4", "rtn": "nf4", "gguf": "rtn"}
                                             .get(qc["method"], "rtn")))
        self.config_edit("bits 4->8", q(bits=8 if qc.get("bits") != 8 else 4))
        self.config_edit("group_size changed", q(group_size=32 if qc.get("group_size") != 32 else 64))
        self.config_edit("bits as a string", q(bits="4"))
        self.config_edit("unknown field", q(bogus=1))
        self.config_edit("no quant_method", lambda c: c["quantization_config"].pop("quant_method"))
        self.config_edit("hfq_format_version 99", q(hfq_format_version=99))
        if qc.get("tensor_types"):
            for name, t in list(qc["tensor_types"].items())[:3]:
                other = "Q5_0" if t != "Q5_0" else "Q4_0"
                self.config_edit(f"tensor_types {name} {t}->{other}",
                                 lambda c, name=name, other=other: c["quantization_config"]["tensor_types"]
                                 .__setitem__(name, other))
            self.config_edit("tensor_types missing", lambda c: c["quantization_config"].pop("tensor_types"))
        self._case("config", "not JSON", {"config.json": b'{"model_type": "llama",'}, ("README.md",))
        self._case("config", "binary", {"config.json": bytes(range(256))}, ("README.md",))
        self.config_edit("hidden_size changed", lambda c: c.__setitem__("hidden_size", c["hidden_size"] * 2))
        self.config_edit("num_hidden_layers + 1", lambda c: c.__setitem__("num_hidden_layers",
                                                                           c["num_hidden_layers"] + 1))

    def bad_scales(self) -> None:
        keys = _layout_keys(self.header)
        values = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38}
        for key in keys[:: max(1, len(keys) // 8)]:
            t = self.header[key]
            dt = {"F16": np.float16, "F32": np.float32}.get(t["dtype"])
            if dt is None:
                continue
            start = 8 + self.n + t["data_offsets"][0]
            count = (t["data_offsets"][1] - t["data_offsets"][0]) // np.dtype(dt).itemsize
            for label, v in values.items():
                b = bytearray(self.data)
                i = self.rng.randrange(count) if count else 0
                with np.errstate(over="ignore"):
                    b[start + i * np.dtype(dt).itemsize:start + (i + 1) * np.dtype(dt).itemsize] = \
                        np.array([v], dtype=dt).tobytes()
                self.weights("bad-scale", f"{key}[{i}] = {label}", bytes(b), card=False)

    def ggml_block_scales(self) -> None:
        """NaN in the float16 d of a GGML block (gguf layouts)."""
        types = json.loads(self.header.get("__metadata__", {}).get("hfq_tensor_types", "{}"))
        offsets = {"Q4_0": (0, 18), "Q5_0": (0, 22), "Q8_0": (0, 34), "Q4_1": (0, 20), "Q5_1": (0, 24)}
        for name, t in sorted(types.items())[:6]:
            if t not in offsets or f"{name}.weight" not in self.header:
                continue
            off, size = offsets[t]
            e = self.header[f"{name}.weight"]
            block = self.rng.randrange((e["data_offsets"][1] - e["data_offsets"][0]) // size)
            b = bytearray(self.data)
            at = 8 + self.n + e["data_offsets"][0] + block * size + off
            b[at:at + 2] = np.array([np.nan], dtype=np.float16).tobytes()
            self.weights("bad-scale", f"{name} {t} block {block} d = nan", bytes(b), card=False)

    def data_flips(self, k: int) -> None:
        """Random flips in the tensor data; the card's sha256 is what catches these."""
        for _ in range(k):
            b = bytearray(self.data)
            for _ in range(self.rng.choice([1, 1, 2, 8])):
                i = self.rng.randrange(8 + self.n, len(b))
                b[i] ^= 1 << self.rng.randrange(8)
            self.weights("data-flip", "random bits", bytes(b), card=True)

    def build(self, scale: int = 1) -> list[tuple[str, str, Path]]:
        self.truncations(6 * scale)
        self.header_bit_flips(12 * scale)
        self.renames(5 * scale)
        self.retypes()
        self.reshapes(4 * scale)
        self.offsets(4 * scale)
        self.metadata()
        self.config_edits()
        self.bad_scales()
        self.ggml_block_scales()
        self.data_flips(4 * scale)
        return self.cases


def _other_method(meta: dict) -> str:
    m = meta.get("hfq_method", "nf4-b64")
    return m.replace("nf4", "fp4") if "nf4" in m else m.replace("fp4", "nf4") if "fp4" in m else "nf4-b64"
