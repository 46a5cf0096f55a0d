"""Atomic output: every file or folder hfq writes appears complete or not at all.

It is written under a temporary name next to its destination (the same filesystem, so the rename is atomic),
flushed to disk with fsync, and moved into place with os.replace. A failure removes the temporary and leaves the
destination as it was. Temporary names start with a dot, so folder listings and Hub uploads skip them.

`publish` is how a command writes a user's output (`--out`): an exclusive lock file next to the destination
(`.NAME.lock`, filelock) for the whole command, so a second writer fails at once; an existing destination is
refused without overwrite, at the start and again at the rename; an overwritten folder is swapped in with
renameat2(RENAME_EXCHANGE) on Linux, so a kill at any moment leaves the old or the new folder at the path
(elsewhere the old folder is set aside until the new one is in place, and the next run puts it back if a kill
came in between); temporaries of killed runs are removed by the next run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


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
    """Move folder tmp to out. An existing out is exchanged with tmp in one step where the OS can (Linux), else
    kept aside until the new one is in place (`recover` puts it back after a kill in between)."""
    tmp, out = Path(tmp), Path(out)
    fsync_tree(tmp)
    if out.exists() and _renameat2(tmp, out, _RENAME_EXCHANGE):
        shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old folder
        _fsync(out.parent)
        return
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


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) through libc; False where it is missing or the filesystem does not support the flag."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):   # EINVAL, ENOSYS, EOPNOTSUPP: fall back
        return False
    raise OSError(err, f"cannot move {src} to {dst}: {os.strerror(err)}")


class OutputExists(ValueError):
    pass


class OutputLocked(ValueError):
    pass


def _occupied(path: Path) -> bool:
    """A destination that holds something of the user's (an empty folder does not count)."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def refuse_existing(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    path = Path(path)
    if not overwrite and _occupied(path):
        fix = "--overwrite" if flag.startswith("--") else "overwrite=True"
        raise OutputExists(f"{flag} {path} exists and is not empty; pass {fix} to replace it, or choose another "
                           "path.")


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of destination `path`; a second holder fails at once, naming the lock."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(path)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLocked(f"{path} is being written by another hfq process (it holds {lock_path(path)}); wait "
                           "for it to finish or choose another output path.") from None
    try:
        yield
    finally:
        # unlinked while still held: a process that opened this inode meanwhile sees it unlinked once it gets
        # the lock and retries on the path (filelock checks st_nlink), so no lock file stays behind
        lock_path(path).unlink(missing_ok=True)
        lock.release()


def recover(path: str | os.PathLike) -> None:
    """Under the destination's lock: put back an old folder a killed overwrite set aside, then remove every
    temporary of `path` that killed runs left (no other writer can own one while we hold the lock)."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds[-1], path)
        olds = olds[:-1]
    for p in [*olds, *path.parent.glob(f".{path.name}.tmp-*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def publish(path: str | os.PathLike, overwrite: bool = False, folder: bool = True,
            flag: str = "--out") -> Iterator[Path]:
    """Write a user's output: yield a temporary folder (folder=True) or file path to fill; when the block
    succeeds it becomes `path`. See the module doc for the lock, the checks and what a kill leaves."""
    path = Path(path)
    with locked(path):
        recover(path)
        refuse_existing(path, overwrite, flag)
        tmp = temp_name(path)
        if folder:
            tmp.mkdir()
        try:
            yield tmp
            refuse_existing(path, overwrite, flag)   # again: something may have appeared at path meanwhile
            place(tmp, path, overwrite)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def place(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool) -> Path:
    """Move a finished temporary file or folder to path: replacing it only with overwrite, never clobbering
    something that appeared at path otherwise."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir():
        if path.exists() and not overwrite:   # an empty folder the user made: replace it
            path.rmdir()
        replace_dir(tmp, path)
        return path
    fsync_tree(tmp)
    if overwrite:
        os.replace(tmp, path)
    elif not _renameat2(tmp, path, _RENAME_NOREPLACE):
        os.link(tmp, path)        # fails if path appeared meanwhile; never replaces it
        tmp.unlink()
    if os.name == "posix":
        _fsync(path.parent)
    return path
