"""Atomic output: every file or folder hfq writes appears complete or not at all.

It is written under a temporary name next to its destination (the same filesystem, so the rename is atomic),
flushed to disk with fsync, and moved into place with os.replace. A failure removes the temporary and leaves the
destination as it was. Temporary names start with a dot, so folder listings and Hub uploads skip them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A hidden, unique sibling of path that keeps its suffix (writers such as matplotlib read the suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:   # some filesystems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync a file, or every file and folder under a folder."""
    path = Path(path)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            _fsync(p)
    _fsync(path)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fsync src (a file or a folder tree), then os.replace it onto dst and fsync dst's folder."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    os.replace(src, dst)
    if os.name == "posix":
        _fsync(dst.parent)
    return dst


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; when the block succeeds it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(path: str | os.PathLike, data, **dumps) -> Path:
    return write_text(path, json.dumps(data, **dumps))


@contextmanager
def atomic_dir(path: str | os.PathLike, keep_existing: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; when the block succeeds it replaces `path`. An existing
    `path` stays in place until the new folder is complete, then is removed. keep_existing, called just before
    the swap, may return True to keep what another process put at `path` meanwhile and drop the new folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if keep_existing is None or not keep_existing():
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move folder tmp to out; an existing out is kept until the new one is in place."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = temp_name(out, "old")
        os.replace(out, old)
    try:
        replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
