"""Run items through a runner script in child processes, so that a crash (an abort, a segfault) on one item is
counted for that item instead of ending the test. The runner is called as `python RUNNER ITEMS.json START`, skips
the items before START, and prints one JSON line per item: {"i": n, "started": true} before it, then its result
{"i": n, ...}. When a process dies after "started", the item gets {"outcome": "crash"} and a new process starts
after it. `alone` names outcomes that are checked again in a fresh process with that item alone: llama.cpp has
once given NaN logits for every file after the second one loaded in a process (a CI run on an Intel Xeon with AMX,
not reproduced since, the same files ok alone), which says nothing about the file. The record keeps the first
outcome as "first_outcome"."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_each(runner: Path, items: list, work: Path, what: str, timeout: int, alone: tuple = ()) -> list[dict]:
    """Results of every item, in order. `what` names an item in the error raised when a process fails between
    items (a broken runner, not a damaged input)."""
    out = _run(runner, items, work, what, timeout)
    for i, rec in enumerate(out):
        if rec["outcome"] in alone:
            again = _run(runner, [items[i]], work, what, timeout)[0]
            out[i] = {**again, "i": i, "first_outcome": rec["outcome"]}
    return out


def _run(runner: Path, items: list, work: Path, what: str, timeout: int) -> list[dict]:
    spec = work / f"{runner.stem}-items.json"
    spec.write_text(json.dumps(items))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    results: dict[int, dict] = {}
    start = 0
    while start < len(items):
        with open(work / f"{runner.stem}-stderr.txt", "w+") as err:   # a file: llama.cpp may log a line per token
            p = subprocess.run([sys.executable, str(runner), str(spec), str(start)], stdout=subprocess.PIPE,
                               stderr=err, text=True, env=env, stdin=subprocess.DEVNULL, timeout=timeout)
            err.seek(max(0, err.seek(0, 2) - 4000))
            stderr = err.read()
        current = None
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("started"):
                    current = rec["i"]
                else:
                    results[rec["i"]], current = rec, None
        if current is not None:   # the process died on this item
            tail = [ln for ln in stderr.splitlines() if ln.strip()][-1:]
            results[current] = {"i": current, "outcome": "crash", "error": f"exit {p.returncode}: {tail}"}
            start = current + 1
        elif p.returncode != 0:
            raise AssertionError(f"{runner.name} failed outside a {what} (exit {p.returncode}): {stderr[-2000:]}")
        else:
            start = len(items)
    return [results[i] for i in range(len(items))]
