"""A writer for the publish tests: python publish_writer.py OUT ID N_FILES [fallback]
Publishes a folder of N_FILES files, each holding ID, through hfq.atomic.publish(overwrite=True), slowly, so that
a kill can land anywhere. Loads hfq/atomic.py alone (no torch import) to start fast. `fallback` turns off
renameat2 so the set-aside-and-recover path runs."""
import importlib.util
import sys
import time
from pathlib import Path

spec = importlib.util.spec_from_file_location("hfq_atomic", Path(__file__).parents[1] / "hfq" / "atomic.py")
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
out, ident, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if len(sys.argv) > 4 and sys.argv[4] == "fallback":
    atomic._renameat2 = lambda src, dst, flags: False
overwrite = not (len(sys.argv) > 4 and sys.argv[4] == "no-overwrite")
try:
    with atomic.publish(out, overwrite=overwrite) as tmp:
        for i in range(n):
            (tmp / f"part-{i:03d}.txt").write_text(ident * 100)
            time.sleep(0.002)
        (tmp / "manifest.txt").write_text(f"{ident} {n}")
except ValueError as e:
    print(f"refused: {e}")
    sys.exit(3)
print("saved")
