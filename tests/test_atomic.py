"""hfq.atomic: a destination is replaced whole or left as it was, and no temporary is left behind."""

import os
import stat

import pytest

from hfq.atomic import atomic_dir, atomic_file, write_json, write_text


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_file_replaced_whole_or_kept(tmp_path):
    dst = tmp_path / "r.json"
    write_json(dst, {"a": 1})
    assert dst.read_text() == '{"a": 1}'
    with pytest.raises(RuntimeError):
        with atomic_file(dst) as tmp:
            tmp.write_text("half")
            assert tmp.parent == dst.parent and tmp.name.startswith(".") and tmp.suffix == ".json"
            raise RuntimeError("interrupted")
    assert dst.read_text() == '{"a": 1}' and _listing(tmp_path) == ["r.json"]
    write_text(tmp_path / "sub" / "new.txt", "x")       # parents are created
    assert (tmp_path / "sub" / "new.txt").read_text() == "x"
    # an ordinary file, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask


def test_dir_replaced_whole_or_kept(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert _listing(out) == ["a.txt"]
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError("failed half way")
    assert _listing(out) == ["a.txt"] and _listing(tmp_path) == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert _listing(out) == ["b.txt"] and _listing(tmp_path) == ["out"]


def test_dir_keeps_what_another_process_finished_first(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out, keep_existing=lambda: out.exists()) as tmp:
        (tmp / "mine").write_text("late")
        out.mkdir()
        (out / "theirs").write_text("first")
    assert _listing(out) == ["theirs"] and _listing(tmp_path) == ["model"]
