"""Argument checks every command runs before it loads a model: each bad value is one error naming the flag,
the value, what is allowed and the fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]I?B|B)?", re.I)


def at_least(value, flag: str, minimum: int = 1, meaning: str = "") -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} {value} is not allowed; give an integer >= {minimum}{meaning}.")


def shard_size(value: str | None, flag: str = "--max-shard-size") -> None:
    if value is not None and not _SIZE.fullmatch(str(value).strip()):
        raise ValueError(f"{flag} {value!r} is not a size; use bytes or a value such as 5GB, 500MB or 2GiB.")


def text_file(path: str | None, flag: str) -> str | None:
    """The UTF-8 text of a file argument, or None; a missing, empty or binary file is an error naming it."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file; pass an existing UTF-8 text file.")
    from ..algorithms.calibration import decode_text

    text = decode_text(p.read_bytes(), f"{flag} {path}")
    if not text.strip():
        raise ValueError(f"{flag} {path} is empty; pass a file with text in it.")
    return text


def dataset_file(path: str | None, flag: str = "--dataset") -> None:
    """A calibration dataset (.txt, or .jsonl with a "text" field a line), read by the very code that reads it
    for calibration later, so an error here is the one that would come after the model loaded."""
    if path is not None:
        from ..algorithms.calibration import read_dataset_file

        read_dataset_file(path, f"{flag} {path}")


def writable_file(path: str | None, flag: str) -> None:
    """An output file that can be written, checked before the work that fills it."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name.")
    parent = p.parent if str(p.parent) else Path(".")
    d = parent
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise ValueError(f"{flag} {path} cannot be written: {d} is not a folder; choose a writable path.")
    probe = d / f".hfq-write-test-{os.getpid()}"
    try:   # the only sure test (permissions, read-only filesystems, root): create a file there
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {path} cannot be written ({e.strerror} in {d}); choose a writable path.") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path} cannot be written (the file is read-only); choose a writable path.")


def output_path(path: str, flag: str = "--out") -> None:
    """The folder an output goes into must be creatable by this user."""
    writable_file(str(Path(path) / "x"), flag) if Path(path).is_dir() else writable_file(path, flag)


def max_positions(src: str) -> int | None:
    """max_position_embeddings of a local model folder's config.json (None when unknown)."""
    cfg = Path(src) / "config.json"
    if not cfg.is_file():
        return None
    try:
        c = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg} is not valid JSON ({e}); restore it from the original folder.") from None
    if not isinstance(c, dict):
        return None
    n = c.get("max_position_embeddings", (c.get("text_config") or {}).get("max_position_embeddings"))
    return n if isinstance(n, int) and n > 0 else None


def context(ctx: int | None, src: str, flag: str = "--ctx") -> None:
    at_least(ctx, flag, 2, " (tokens per window)")
    n = max_positions(src) if ctx is not None else None
    if n is not None and ctx > n:
        raise ValueError(f"{flag} {ctx} is longer than the model's {n} positions (max_position_embeddings in "
                         f"{Path(src) / 'config.json'}); give {flag} {n} or less.")
