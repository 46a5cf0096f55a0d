"""hfq.atomic.publish: one writer per destination, no clobbering without overwrite, and a kill -9 at any moment
leaves the old or the new folder, complete, with no temporary surviving the next run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfq.atomic import OutputExists, OutputLocked, locked, publish, recover, temp_name

WRITER = Path(__file__).parent / "publish_writer.py"


def _writer(out, ident, n=40, mode=""):
    return subprocess.Popen([sys.executable, str(WRITER), str(out), ident, str(n), *([mode] if mode else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _complete(out: Path) -> str:
    """The ID of the complete folder at out (asserting that it is complete and not mixed)."""
    ident, n = (out / "manifest.txt").read_text().split()
    parts = sorted(out.glob("part-*.txt"))
    assert len(parts) == int(n) and {p.read_text() for p in parts} == {ident * 100}, out
    assert len(list(out.iterdir())) == int(n) + 1
    return ident


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and
                  not p.name.endswith(".lock"))


def test_existing_destination_refused_at_start_and_at_rename(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OutputExists, match=r"--out .*out exists and is not empty; pass --overwrite"):
        with publish(out) as tmp:
            pass
    # something appears at the destination while the output is being written: kept, and the writer fails
    new = tmp_path / "new"
    with pytest.raises(OutputExists, match="pass --overwrite"):
        with publish(new) as tmp:
            (tmp / "model.safetensors").write_text("x")
            new.mkdir()
            (new / "theirs.txt").write_text("appeared meanwhile")
    assert (new / "theirs.txt").read_text() == "appeared meanwhile" and _leftovers(new) == []
    assert (out / "mine.txt").read_text() == "user data"
    # an empty folder holds nothing of the user's; a file destination is not clobbered either
    (tmp_path / "empty").mkdir()
    with publish(tmp_path / "empty") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "empty" / "a").read_text() == "1"
    f = tmp_path / "x.gguf"
    with pytest.raises(OutputExists):
        with publish(f, folder=False) as tmp:
            tmp.write_text("new")
            f.write_text("old")
    assert f.read_text() == "old" and _leftovers(f) == []


def test_overwrite_swaps_whole_folders(tmp_path):
    out = tmp_path / "out"
    for gen in ("a", "b", "c"):
        with publish(out, overwrite=True) as tmp:
            (tmp / "manifest.txt").write_text(f"{gen} 1")
            (tmp / "part-000.txt").write_text(gen * 100)
        assert _complete(out) == gen and _leftovers(out) == []


def test_two_concurrent_writers_one_wins_the_other_fails_clearly(tmp_path):
    out = tmp_path / "out"
    a = _writer(out, "A", n=150, mode="no-overwrite")
    time.sleep(0.15)
    b = _writer(out, "B", n=5, mode="no-overwrite")
    rb, ra = b.wait(30), a.wait(30)
    assert (ra, rb) == (0, 3), (a.stdout.read(), b.stdout.read())
    msg = b.stdout.read()
    assert "being written by another hfq process" in msg and ".out.lock" in msg
    assert _complete(out) == "A" and _leftovers(out) == []
    with pytest.raises(OutputLocked, match="another hfq process"):   # the same lock, in this process
        with locked(out):
            with locked(out):
                pass


@pytest.mark.parametrize("mode", ["", "fallback"])
def test_kill_at_random_moments_leaves_old_or_new(tmp_path, mode):
    out = tmp_path / "out"
    assert _writer(out, "0", n=20, mode=mode).wait(30) == 0
    rng = random.Random(17 + len(mode))
    seen = {"0"}
    for i in range(1, 13):
        p = _writer(out, str(i % 10), n=20, mode=mode)
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        recover(out)   # what the next run does first, under the lock
        ident = _complete(out)
        assert ident in seen | {str(i % 10)}
        seen.add(ident)
    assert _writer(out, "9", n=3, mode=mode).wait(30) == 0
    assert _complete(out) == "9" and _leftovers(out) == []


def test_a_kill_between_the_fallback_renames_is_recovered(tmp_path):
    out = tmp_path / "out"
    old = temp_name(out, "old")
    old.mkdir()
    (old / "manifest.txt").write_text("0 0")
    stale = temp_name(out)
    stale.mkdir()
    (stale / "half").write_text("x")
    recover(out)
    assert (out / "manifest.txt").read_text() == "0 0" and _leftovers(out) == []
