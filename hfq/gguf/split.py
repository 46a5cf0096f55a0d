"""Split GGUF sets (gguf-split's NAME-00001-of-0000N.gguf): which files belong to an export target, the export
identifier every shard of one hfq export carries, and the check that a set is whole and from one export.

llama.cpp finds the other shards by name from the first one's split.count and trusts them: shards of two exports
mixed by a copy, a missing shard or a renamed one load as garbage or fail deep in its loader. hfq stamps every
shard with the same `hfq.export_id` (a hash of the set's bytes, so an export is reproducible byte for byte) and
refuses a set whose ids, split.no or split.count disagree, or that lacks a shard."""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path

import gguf

from ..atomic import refuse_existing
from .header import STRING, Header

EXPORT_ID = "hfq.export_id"
_ID_LEN = 32
_PLACEHOLDER = "0" * _ID_LEN
# the key-value pair as gguf-py writes it: key length, key, value type, value length, value
_STAMP = (struct.pack("<Q", len(EXPORT_ID)) + EXPORT_ID.encode() + struct.pack("<I", STRING)
          + struct.pack("<Q", _ID_LEN))
SHARD = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf")


def shard_names(stem: str, count: int) -> list[str]:
    return [gguf.SHARD_NAME_FORMAT.format(stem, i, count) for i in range(1, count + 1)]


def target_of(path: str | os.PathLike) -> Path:
    """The export target (NAME.gguf) a file belongs to: a shard's name without its -0000i-of-0000N."""
    path = Path(path)
    m = SHARD.fullmatch(path.name)
    return path.with_name(f"{m.group(1)}.gguf") if m else path


def members(path: str | os.PathLike) -> list[str]:
    """Names of the files of target `path` that exist: NAME.gguf and every NAME-0000i-of-0000N.gguf, any N."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stem = path.stem
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name == path.name or ((m := SHARD.fullmatch(p.name)) and m.group(1) == stem))


_KV_START = 24   # magic, version, tensor count, key count


def refuse_existing_set(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    """refuse_existing for every file of the export target (NAME.gguf and its shards)."""
    for name in members(path) or [Path(path).name]:
        refuse_existing(Path(path).with_name(name), overwrite, flag)


class Writer(gguf.GGUFWriter):
    """gguf-py's writer, with a placeholder export id as the first key-value of every shard (so at a fixed
    offset, patched by stamp_export_id)."""

    def add_shard_kv_data(self) -> None:
        super().add_shard_kv_data()
        self.kv_data = [{EXPORT_ID: gguf.GGUFValue(_PLACEHOLDER, gguf.GGUFValueType.STRING), **kv}
                        for kv in self.kv_data]


def _set_hash(files: list[Path]) -> str:
    """sha256 (first _ID_LEN hex digits) of the files in order, with each id's bytes read as the placeholder: what
    stamp_export_id hashed before it wrote the id."""
    h, at = hashlib.sha256(), _KV_START + len(_STAMP)
    for f in files:
        with open(f, "rb") as fh:
            done = 0
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                a, b = at - done, at + _ID_LEN - done
                if a < len(chunk) and b > 0:
                    lo, hi = max(a, 0), min(b, len(chunk))
                    chunk = chunk[:lo] + _PLACEHOLDER.encode()[lo - a:hi - a] + chunk[hi:]
                h.update(chunk)
                done += len(chunk)
    return h.hexdigest()[:_ID_LEN]


def stamp_export_id(files: list[Path]) -> str:
    """Write one id, the sha256 of the files as written (placeholder in place), into every file's placeholder."""
    want = _STAMP + _PLACEHOLDER.encode()
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(_KV_START)
            if fh.read(len(want)) != want:
                raise RuntimeError(f"{f}: no {EXPORT_ID} placeholder where Writer puts it")
    export_id = _set_hash(files)
    for f in files:
        with open(f, "r+b") as fh:
            fh.seek(_KV_START + len(_STAMP))
            fh.write(export_id.encode())
    return export_id


def check_export_id(files: list[Path]) -> str | None:
    """The export id of an hfq export, after checking that it still is the sha256 of the files' bytes (the id's
    own bytes read as the placeholder), so that any changed byte is found; None for a GGUF that hfq did not write.
    Raises one ValueError naming the files."""
    ids = set()
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(_KV_START)
            if fh.read(len(_STAMP)) != _STAMP:
                if f == files[0]:
                    return None
                raise ValueError(f"{f} has no {EXPORT_ID} though {files[0]} has one: shards of different exports "
                                 f"were mixed; {_fix(target_of(files[0]))}.")
            ids.add(fh.read(_ID_LEN))
    stored = ids.pop().decode("ascii", "replace") if len(ids) == 1 else None
    if stored is None or _set_hash(files) != stored:
        names = ", ".join(str(f) for f in files)
        raise ValueError(f"{names}: the bytes no longer match their {EXPORT_ID} (the sha256 hfq wrote at export): "
                         "the file was changed or damaged after export; export it again or restore a good copy.")
    return stored


def _fix(target: Path) -> str:
    return (f"re-export to {target} (with --overwrite), or copy every shard of one export, and nothing else, "
            "next to each other")


def shard_set(path: Path, first: Header, read) -> list[tuple[Path, Header]]:
    """[(file, header)] for every shard of the set whose first shard is `path` (just [(path, first)] for a single
    file); read(p) gives a shard's header. Raises one ValueError naming the files and the fix for a set that is
    not whole or not one export."""
    count, no, m = first.get("split.count"), first.get("split.no"), SHARD.fullmatch(path.name)
    if count is None and m is None:
        return [(path, first)]
    target = target_of(path)
    if count is None or no is None:
        raise ValueError(f"{path} is named as a split shard but has no split.no/split.count; {_fix(target)}.")
    if m is None:
        raise ValueError(f"{path} is shard {no + 1} of {count} (split.count) but is not named NAME-00001-of-"
                         f"{count:05d}.gguf, which llama.cpp needs to find the other shards; rename it so.")
    names = shard_names(m.group(1), count)
    if no != 0 or path.name != names[0]:
        raise ValueError(f"{path} is shard {no + 1} of {count} by its metadata and {int(m.group(2))} of "
                         f"{int(m.group(3))} by its name; pass the first shard, {path.with_name(names[0])}"
                         + ("" if path.name in names else f" (if it is the first, {_fix(target)})") + ".")
    missing = [n for n in names if not (path.parent / n).is_file()]
    if missing:
        raise ValueError(f"the split set of {path} (split.count {count}) lacks {', '.join(missing)} in "
                         f"{path.parent}; {_fix(target)}.")
    shards = [(path, first)] + [(path.with_name(n), read(path.with_name(n))) for n in names[1:]]
    wrong = [f"{p.name} says split {h.get('split.no', -1) + 1} of {h.get('split.count')}" for i, (p, h)
             in enumerate(shards) if (h.get("split.no"), h.get("split.count")) != (i, count)]
    ids: dict[str, list[str]] = {}
    for p, h in shards:
        ids.setdefault(str(h.get(EXPORT_ID)), []).append(p.name)
    if len(ids) > 1:
        wrong.append(f"{EXPORT_ID} differs: " + "; ".join(f"{v} in {', '.join(n)}" for v, n in ids.items()))
    n_tensors = sum(len(h.tensors) for _, h in shards)
    if not wrong and first.get("split.tensors.count") != n_tensors:
        wrong.append(f"split.tensors.count is {first.get('split.tensors.count')} but the shards hold {n_tensors}")
    if wrong:
        raise ValueError(f"{', '.join(names)} in {path.parent} are not one whole export ({'; '.join(wrong)}): "
                         f"shards of different exports were mixed; {_fix(target)}.")
    return shards
