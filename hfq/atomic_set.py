"""Atomic output of a set of files that belong together (a split GGUF export's shards).

One rename cannot replace several files, so a set is replaced in steps that a journal (`.NAME.journal`, written
atomically next to the destination) makes recoverable: the finished new files wait, fsynced, in a hidden staging
folder on the same filesystem; the journal is written (phase "backup"); every file of the old set is moved into a
hidden backup folder (`.NAME.backup-*`); the journal moves to phase "install"; the new files are moved in; the
journal is removed (the commit point); the backup is deleted. After a kill at any step, `recover_set` (the next
export, or a reader through `settle`) puts the old set back (killed in "backup", or in "install" with a new file
lost) or finishes moving the new one in (killed in "install"), with one log line. Old files are only ever moved
aside, never deleted, until the new set is wholly in place. The caller holds the destination's lock
(hfq.atomic.locked) throughout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .atomic import OutputLocked, _fsync, fsync_tree, locked, place, recover, replace, temp_name

logger = logging.getLogger(__name__)


def journal_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.journal")


def _write_journal(path: Path, state: dict) -> None:
    tmp = temp_name(path)   # .NAME.tmp-*: removed by hfq.atomic.recover if a kill leaves it
    tmp.write_text(json.dumps(state))
    replace(tmp, journal_path(path))


def _sync(*folders: Path) -> None:
    for d in folders:
        if d.exists():
            _fsync(d)


def publish_set(path: str | os.PathLike, staging: str | os.PathLike, old: Iterable[str],
                overwrite: bool) -> list[Path]:
    """Move every file of folder `staging` next to `path`, replacing the files named in `old` (the existing set,
    names in path's folder). Without overwrite, old must be empty and no new file replaces one that appears
    meanwhile. Returns the new files in place."""
    path, staging = Path(path), Path(staging)
    parent, new = path.parent, sorted(p.name for p in staging.iterdir())
    old = sorted(set(old))
    if len(new) == 1 and set(old) <= set(new):   # one file over itself: a single atomic rename suffices
        return [place(staging / new[0], parent / new[0], overwrite)]
    fsync_tree(staging)
    backup = temp_name(path, "backup")
    # a new file is known by its inode (a rename keeps it): a file that appeared at one of its names is not ours
    ids = {n: _inode(staging / n) for n in new}
    state = {"phase": "backup", "backup": backup.name, "staging": staging.name, "old": old, "new": new, "ids": ids,
             "overwrite": overwrite}
    _write_journal(path, state)
    try:
        backup.mkdir()
        for name in old:
            os.replace(parent / name, backup / name)
        _sync(backup, parent)
        _write_journal(path, {**state, "phase": "install"})
        for name in new:
            place(staging / name, parent / name, overwrite)
    except BaseException:
        _roll_back(path, state)
        raise
    _finish(path, state)
    return [parent / n for n in new]


def _finish(path: Path, state: dict) -> None:
    """The commit point: the journal goes, then what it kept."""
    journal_path(path).unlink(missing_ok=True)
    _sync(path.parent)
    for name in (state["backup"], state["staging"]):
        shutil.rmtree(path.parent / name, ignore_errors=True)


def _inode(p: Path) -> list[int] | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


def _ours(path: Path, state: dict, name: str) -> bool:
    """Whether the file at `name` next to path is the new file publish_set moved there."""
    return _inode(path.parent / name) == state["ids"][name]


def _roll_back(path: Path, state: dict) -> None:
    parent, backup = path.parent, path.parent / state["backup"]
    for name in state["new"]:
        if _ours(path, state, name):
            (parent / name).unlink()
    for name in state["old"]:
        if (backup / name).exists():
            os.replace(backup / name, parent / name)
    _sync(parent)
    _finish(path, state)


def _roll_forward(path: Path, state: dict) -> bool:
    parent, staging = path.parent, path.parent / state["staging"]
    waiting = [n for n in state["new"] if not _ours(path, state, n) and (staging / n).exists()]
    if any(n not in waiting and not _ours(path, state, n) for n in state["new"]):
        return False   # a new file is lost: the old set goes back
    try:
        for name in waiting:
            place(staging / name, parent / name, state["overwrite"])
    except FileExistsError:   # without overwrite, a file appeared at one of the names: keep it, go back
        return False
    _sync(parent)
    _finish(path, state)
    return True


def recover_set(path: str | os.PathLike) -> str | None:
    """Under the destination's lock: resolve the journal a killed publish_set left (one log line) and remove the
    backups of killed runs that had already committed. Returns "old" or "new" (the set now in place) or None."""
    path = Path(path)
    j = journal_path(path)
    outcome = None
    if j.exists():
        try:
            state = json.loads(j.read_text())
            for key in ("backup", "staging", "old", "new", "ids", "overwrite", "phase"):
                state[key]   # noqa: B018  every field must be there
        except (ValueError, KeyError, TypeError):   # never written by publish_set (those are atomic)
            raise ValueError(f"{j} is not a journal hfq wrote; move it away and rerun.") from None
        if state["phase"] == "install" and _roll_forward(path, state):
            outcome = "new"
        else:
            _roll_back(path, state)
            outcome = "old"
        logger.warning("%s: an interrupted write of %s was found; %s", j.name, path,
                       "its new files were moved into place" if outcome == "new" else
                       "the previous files were put back")
    for p in path.parent.glob(f".{path.name}.backup-*"):
        shutil.rmtree(p, ignore_errors=True)
    return outcome


def settle(path: str | os.PathLike) -> None:
    """For readers: what a killed write to `path` left (a journal, temporaries, a backup, its lock file) is
    resolved and removed under the lock first. While a writer runs (it holds the lock), a journal means the
    files are being replaced, and the reader is told to wait; anything else is that writer's and is left."""
    path = Path(path)
    journal = journal_path(path).exists()
    left = [p for p in path.parent.glob(f".{path.name}.*") if p.name != journal_path(path).name] \
        if path.parent.is_dir() else []
    if not journal and not left:
        return
    try:
        with locked(path):
            recover_set(path)
            recover(path)
    except (OutputLocked, PermissionError):
        if journal:
            raise
