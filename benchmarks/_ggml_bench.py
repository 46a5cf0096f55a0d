"""ggml's own CPU matmul as rows of benchmarks/kernel_speed.py (benchmarks/ggml_mul_mat.cpp, one process per type).

The tool is built against ggml from the llama.cpp tree of the llama-cpp-python sdist (the one .ci/llama_tools.sh
unpacks into ~/.cache/hfq/llama.cpp-VERSION/src). ggml builds with -march=native, so the build directory is keyed
on this CPU's instruction-set flags and never reused on another CPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

# hfq's GGML names -> ggml's type names
TYPES = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0", "Q2_K": "q2_K",
         "Q3_K": "q3_K", "Q4_K": "q4_K", "Q5_K": "q5_K", "Q6_K": "q6_K"}
HERE = Path(__file__).parent


def default_src() -> Path | None:
    base = Path(os.environ.get("HFQ_CACHE") or Path.home() / ".cache" / "hfq")
    found = sorted(base.glob("llama.cpp-*/src/ggml/include/ggml.h"))
    return found[-1].parents[2] if found else None


def _key(with_source: bool) -> str:
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line
            break
    text = flags + ((HERE / "ggml_mul_mat.cpp").read_text() if with_source else "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build(src: Path, log) -> Path:
    """Path of the ggml_mul_mat binary for this CPU, building it (a few minutes on 2 cores) if needed."""
    src = Path(src)
    if not (src / "ggml" / "include" / "ggml.h").exists():
        raise SystemExit(f"--ggml-src {src}: no ggml/include/ggml.h there; pass the llama.cpp tree of the "
                         "llama-cpp-python sdist (bash .ci/llama_tools.sh unpacks it into ~/.cache/hfq)")
    out = src.parent / f"ggml-bench-{_key(True)}"
    exe = out / "ggml_mul_mat"
    if exe.exists():
        return exe
    libs_dir = src.parent / f"ggml-libs-{_key(False)}"   # ggml itself: kept, so a new tool source only relinks
    if not (libs_dir / "done").exists():
        log(f"building ggml into {libs_dir} (a few minutes) ...")
        shutil.rmtree(libs_dir, ignore_errors=True)
        subprocess.run(["cmake", "-S", str(src), "-B", str(libs_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF"],
                       check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(libs_dir), "-j", str(os.cpu_count() or 2), "--target", "ggml"],
                       check=True, capture_output=True)
        (libs_dir / "done").write_text("")
    libs = sorted(str(p) for p in libs_dir.rglob("*.a") if p.name.startswith("libggml"))
    cpu = [p for p in libs if "ggml-cpu" in p]
    rest = [p for p in libs if p not in cpu and not p.endswith("libggml.a")]
    core = [p for p in libs if p.endswith("libggml.a")]
    tmp = Path(str(out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{src / 'ggml' / 'include'}", str(HERE / "ggml_mul_mat.cpp"),
                    "-o", str(tmp / "ggml_mul_mat"), "-Wl,--start-group", *core, *cpu, *rest, "-Wl,--end-group",
                    "-lpthread", "-lm", "-ldl"], check=True, capture_output=True)
    os.replace(tmp, out)
    return exe


class Proc:
    """One ggml_mul_mat process holding `copies` weights of one type; measure() runs one timed pass."""

    def __init__(self, exe: Path, qtype: str, N: int, K: int, threads: int, copies: int):
        self.copies = copies
        self.p = subprocess.Popen([str(exe), TYPES[qtype], str(N), str(K), str(threads), str(copies)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"ggml_mul_mat {qtype} did not start")

    def measure(self, streamed: bool, reps: int) -> float:
        self.p.stdin.write(f"{'s' if streamed else 'c'} {reps}\n")
        self.p.stdin.flush()
        return float(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def rows(exe: Path, N: int, K: int, threads: int, bytes_of: dict) -> dict:
    """kernel_speed.py rows "ggml Q4_K" ...: name -> (bytes of one weight, make(copies) -> [Proc])."""
    return {f"ggml {t}": (bytes_of[t], lambda n, t=t: [Proc(exe, t, N, K, threads, n)]) for t in TYPES
            if t in bytes_of}
