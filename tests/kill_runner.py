"""The real `hfq` CLI (hfq.cli.main), killed with SIGKILL by itself at an exact step of publishing its output:
    python kill_runner.py N DIR hfq-arguments...
Every os.replace and os.unlink of a path in DIR (the journal, each file moved aside or in, the journal's and the
lock's removal) is a step; the process kills itself just before step N (N=0: never), so a test can stop a
publish between any two of its steps, which polling from outside cannot hit. Prints the steps it saw."""
import os
import signal
import sys

n, folder, argv = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3:]
steps = []


def _counted(fn, kind):
    def wrapper(src, *args, **kwargs):
        name = os.path.basename(os.fsdecode(src)) if isinstance(src, (str, bytes, os.PathLike)) else ""
        if name and not name.startswith(".hfq-write-test") and "dir_fd" not in kwargs and \
                os.path.dirname(os.path.realpath(os.fsdecode(src))).startswith(folder):
            steps.append(f"{kind} {name}")
            if len(steps) == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(src, *args, **kwargs)
    return wrapper


os.replace = _counted(os.replace, "replace")
os.unlink = _counted(os.unlink, "unlink")

from hfq.cli import main  # noqa: E402

rc = main(argv)
print("steps:", " | ".join(steps))
sys.exit(rc)
