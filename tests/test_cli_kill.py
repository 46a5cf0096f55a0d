"""kill -9 of the real `hfq quantize` and `hfq export-gguf` at moments of their write (the lock taken, the weights
being written into the temporary, the card written, the .gguf half and wholly written, before the rename): the
destination then holds the previous artifact byte for byte or the new one complete, never a mix or a partial one,
and nothing is there where there was nothing before; the next run removes every temporary the kills left.

The killed runs are child processes, all started at once (each on its own destination), so the test pays the
interpreter start-up once; the reference outputs and the next runs go through hfq.cli.main in this process."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfq.cli import main
from hfq.cli.verify import verify_path
from hfq.gguf.check import check_gguf

OLD_Q, NEW_Q = ["--method", "rtn", "--bits", "8"], ["--method", "nf4"]
OLD_G, NEW_G = ["--type", "Q8_0"], ["--type", "Q4_0"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _weights(folder: Path) -> dict:
    return {n: _sha(folder / n) for n in ("model.safetensors", "config.json")}


def _temps(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def _tmp(dest: Path) -> Path | None:
    return next(iter(sorted(dest.parent.glob(f".{dest.name}.tmp-*"))), None)


def _size(p: Path | None) -> int:
    try:
        return p.stat().st_size if p is not None else 0
    except FileNotFoundError:
        return 0


# when to kill: a test on the destination, polled every millisecond
def _locked(dest, full):
    return (dest.parent / f".{dest.name}.lock").exists()


def _in_tmp(name):
    def when(dest, full):
        t = _tmp(dest)
        return t is not None and (t / name).exists()
    return when


def _written(fraction):
    def when(dest, full):   # export_gguf writes into a temporary folder: .out.gguf.tmp-*/out.gguf
        t = _tmp(dest)
        return t is not None and _size(t / dest.name) >= fraction * full
    return when


QUANTIZE = {"lock": _locked, "weights": _in_tmp("model.safetensors"), "card": _in_tmp("README.md")}
EXPORT = {"lock": _locked, "half": _written(0.5), "whole": _written(1.0)}


@pytest.fixture(scope="module")
def refs(export_dir, tmp_path_factory):
    """The old and the new artifact of each command, made once to completion."""
    src = export_dir("llama")
    root = tmp_path_factory.mktemp("kill-refs")
    for name, args in (("old-q", OLD_Q), ("new-q", NEW_Q)):
        assert main(["quantize", str(src), *args, "--out", str(root / name)]) == 0
    for name, args in (("old.gguf", OLD_G), ("new.gguf", NEW_G)):
        assert main(["export-gguf", str(src), *args, "--out", str(root / name)]) == 0
    return src, root


def test_kill_9_leaves_the_old_or_the_new_artifact_and_the_next_run_cleans_up(refs, tmp_path):
    src, root = refs
    cli = [sys.executable, "-m", "hfq.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    runs = []   # (kind, point, destination, had an old one, trigger, process)
    for kind, points in (("quantize", QUANTIZE), ("gguf", EXPORT)):
        fresh = QUANTIZE["weights"] if kind == "quantize" else EXPORT["half"]   # nothing there before
        for point, when in [*points.items(), ("fresh", fresh)]:
            d = tmp_path / f"{kind}-{point}"
            d.mkdir()
            dest = d / ("out.gguf" if kind == "gguf" else "out")
            old = point != "fresh"
            if old and kind == "quantize":
                assert main(["quantize", str(src), *OLD_Q, "--out", str(dest)]) == 0
            elif old:
                dest.write_bytes((root / "old.gguf").read_bytes())
            args = ["quantize", str(src), *NEW_Q] if kind == "quantize" else ["export-gguf", str(src), *NEW_G]
            p = subprocess.Popen([*cli, *args, "--out", str(dest), *(["--overwrite"] if old else [])], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            runs.append((kind, point, dest, old, when, p))
    full = _size(root / "new.gguf")
    killed, deadline = set(), time.monotonic() + 240
    while len(killed) < len(runs) and time.monotonic() < deadline:
        for i, (kind, point, dest, old, when, p) in enumerate(runs):
            if i not in killed and (p.poll() is not None or when(dest, full)):
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                killed.add(i)
        time.sleep(0.001)
    outcomes = {}
    for kind, point, dest, old, when, p in runs:
        rc = p.wait(60)
        if kind == "quantize":
            state = "absent" if not dest.exists() else "old" if _weights(dest) == _weights(root / "old-q") else \
                "new" if _weights(dest) == _weights(root / "new-q") else "MIXED"
            if state == "new":
                verify_path(dest)   # complete: every file the card lists has its sha256
        else:
            state = "absent" if not dest.exists() else "old" if _sha(dest) == _sha(root / "old.gguf") else \
                "new" if _sha(dest) == _sha(root / "new.gguf") else "MIXED"
            if state == "new":
                check_gguf(dest)
        assert state in (("old", "new") if old else ("absent", "new")), (kind, point, state, rc)
        outcomes[(kind, point)] = (state, rc)
    print(f"\nkill -9 outcomes (state, returncode): {outcomes}")
    # most points were reached while the writer was still running (SIGKILL: returncode -9)
    assert sum(rc == -signal.SIGKILL for _, rc in outcomes.values()) >= len(runs) - 2, outcomes
    # the next run on each destination succeeds and leaves no temporary, lock or set-aside folder
    for kind, point, dest, old, when, p in runs:
        args = ["quantize", str(src), *NEW_Q] if kind == "quantize" else ["export-gguf", str(src), *NEW_G]
        assert main([*args, "--out", str(dest), "--overwrite"]) == 0, (kind, point)
        assert _temps(dest) == [], (kind, point, _temps(dest))
        if kind == "quantize":
            assert _weights(dest) == _weights(root / "new-q")
        else:
            assert _sha(dest) == _sha(root / "new.gguf")
