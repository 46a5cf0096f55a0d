"""hfq's CPU kernels against torch (and ggml) on the same weights, every ratio measured in the same run.

GEMV (1 x 4096 x 4096 by default): every hfq storage format against torch float32 and bfloat16 F.linear and
torch's own int4 kernel (aten._weight_int4pack_mm_for_cpu, bfloat16, group 128).
- streamed: each row rotates over enough copies of its weights to exceed the L3 cache, so 4-bit weights are read
  from memory as the float32 baseline is; effective GB/s = bytes of one weight / time, against a measured read
  bandwidth (a float32 sum over 1 GB);
- cached: the same weights every call, as ggml's test-backend-ops does, for the comparison with ggml.
Rounds are interleaved (every row once per round), so noise from the other core hits all rows alike; the median
over rounds is reported.
Prefill (512 x 4096 x 4096): hfq against torch's matmul in bfloat16 and float32.
GGML types also run with the opt-in int8 activations (rows "Q4_K int8-act" ...) on AVX-512, k-quants on AVX2.
ggml: with --ggml-src (benchmarks/ggml_mul_mat.cpp, built against ggml from the llama-cpp-python sdist's llama.cpp
tree), rows "ggml TYPE" run ggml's own matmul on every GGML type at the same shape and thread count, streamed and
cached, in processes whose rounds interleave with hfq's; "x ggml" = ggml's time / hfq's (cached), "x ggml s" the
same streamed. --ggml-bench PATH parses test-backend-ops' MUL_MAT perf instead (cached; Q4_K only at 4096x4096).

    python benchmarks/kernel_speed.py [--threads 1 2] [--shape 4096 4096] [--rounds 7] [--ggml-src [DIR]] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import _ggml_bench
import hfq  # noqa: F401  (registers the ops)
from hfq.algorithms import quantize_layer_weight
from hfq.algorithms.ggml_quant import quantize_rows
from hfq.formats.codebooks import codebook
from hfq.kernels import build

ops = torch.ops.hfq
GGML_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def l3_bytes() -> int:
    try:
        txt = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(txt[:-1]) * {"K": 1 << 10, "M": 1 << 20}[txt[-1]]
    except (OSError, ValueError, KeyError):
        return 64 << 20


def read_bandwidth(threads: int) -> float:
    buf = torch.ones(1 << 28)   # 1 GiB of float32
    buf.sum()
    t = min(_timed(lambda: buf.sum()) for _ in range(5))
    return buf.numel() * 4 / t / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def formats(w: torch.Tensor) -> dict:
    """name -> (bytes of one weight, make(copies) -> list of callables x -> y)."""
    N, K = w.shape
    out = {}

    def add(name, tensors, call):
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        out[name] = (nbytes, lambda n, t=tensors, c=call: [(lambda x, tt={k: v.clone() for k, v in t.items()}: c(x, tt))
                                                          for _ in range(n)])

    for bits, g, sym in [(4, 128, True), (4, 128, False), (4, 32, True), (8, 128, True), (3, 128, True), (2, 64, False),
                         (5, 128, True), (6, 128, True), (7, 128, True)]:
        t = quantize_layer_weight(w, "int", bits, g, sym, False)
        add(f"int{bits} g{g}{'' if sym else ' asym'}", t,
            lambda x, tt, b=bits: ops.linear_int(x, tt["weight"], tt["scales"], tt.get("zeros"), b, None))
    for qt in ("nf4", "fp4"):
        t = quantize_layer_weight(w, qt, 4, 64, True, False)
        cb = codebook(qt)
        add(f"{qt} b64", t, lambda x, tt, cb=cb: ops.linear_4bit(x, tt["weight"], tt["absmax"], cb, [N, K], None))
    for qt in GGML_TYPES:
        add(qt, {"weight": quantize_rows(w, qt, None)},
            lambda x, tt, qt=qt: ops.linear_ggml(x, tt["weight"], qt, K, None))
    isa = build.cpu_isa()   # the opt-in int8 activations (docs/kernels.md); two mode switches per call
    isa = "avx512" if isa == "avx512bf16" else isa   # the same GEMV engines
    if isa in ("avx512", "avx2"):   # AVX2: k-quants only
        for qt in GGML_TYPES if isa == "avx512" else [t for t in GGML_TYPES if t.endswith("_K")]:
            add(f"{qt} int8-act", {"weight": quantize_rows(w, qt, None)},
                lambda x, tt, qt=qt: _int8(lambda: ops.linear_ggml(x, tt["weight"], qt, K, None)))
    return out


def _int8(call):
    torch.ops.hfq_cpu.set_activations("int8")
    try:
        return call()
    finally:
        torch.ops.hfq_cpu.set_activations("int16")


def baselines(w: torch.Tensor) -> dict:
    N, K = w.shape
    out = {"torch fp32": (N * K * 4, lambda n: [(lambda x, ww=w.clone(): F.linear(x, ww)) for _ in range(n)]),
           "torch bf16": (N * K * 2, lambda n: [(lambda x, ww=w.bfloat16(): F.linear(x.bfloat16(), ww))
                                                for _ in range(n)])}
    t = quantize_layer_weight(w, "int", 4, 128, True, False)
    q = torch.ops.hfq.dequantize_int(t["weight"], t["scales"], None, 4, torch.float32)   # the same int4 values
    scale = t["scales"].float()
    codes = torch.round(q / scale.repeat_interleave(128, 1)).to(torch.int32) + 8
    if hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        sz = torch.stack([scale.T, torch.zeros_like(scale.T)], -1).contiguous().bfloat16()   # w = (q - 8) * s
        out["torch int4pack bf16"] = (packed.numel() + sz.numel() * 2,
                                      lambda n: [(lambda x, p=packed.clone(), s=sz.clone():
                                                  torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), p, 128, s))
                                                 for _ in range(n)])
    return out


def gemv(rows: dict, K: int, rounds: int, stream_bytes: int, group: int = 6) -> dict:
    """Median seconds per call, streamed (rotating over stream_bytes of copies) and cached. Streamed rows run in
    groups of `group` formats plus the baselines, so memory stays bounded; each group interleaves its rows."""
    x = torch.randn(1, K)
    base = [n for n in rows if n.startswith("torch")]
    rest = []   # a GGML type's rows (hfq int16, hfq int8-act, ggml) side by side, so one group times them together
    for n in rows:
        if not n.startswith("torch") and n not in rest:
            t = n.removeprefix("ggml ").split()[0]
            rest += [m for m in rows if m == n or (t in GGML_TYPES and m.removeprefix("ggml ").split()[0] == t)]
    res = {"streamed": {}, "cached": {}}
    for mode in ("streamed", "cached"):
        groups = [base + rest[i:i + group] for i in range(0, len(rest), group)] if mode == "streamed" else [list(rows)]
        for names in groups:
            calls = {n: rows[n][1](max(1, -(-stream_bytes // rows[n][0])) if mode == "streamed" else 1)
                     for n in names}
            for fs in calls.values():
                if not isinstance(fs[0], _ggml_bench.Proc):
                    fs[0](x)
            times = {n: [] for n in names}
            for _ in range(rounds):
                for n, fs in calls.items():
                    if isinstance(fs[0], _ggml_bench.Proc):   # ggml times its own ops, in its own process
                        times[n].append(fs[0].measure(mode == "streamed", fs[0].copies if mode == "streamed" else 20))
                        continue
                    reps = len(fs) if mode == "streamed" else 20
                    t0 = time.perf_counter()
                    for i in range(reps):
                        fs[i % len(fs)](x)
                    times[n].append((time.perf_counter() - t0) / reps)
            for fs in calls.values():
                if isinstance(fs[0], _ggml_bench.Proc):
                    fs[0].close()
            for n, v in times.items():   # baselines appear in every group: keep their best median
                m = statistics.median(v)
                res[mode][n] = min(m, res[mode].get(n, m))
            del calls
    return res


def prefill(w: torch.Tensor, M: int, rounds: int) -> dict:
    N, K = w.shape
    q = quantize_rows(w, "Q4_K", None)
    t = quantize_layer_weight(w, "int", 4, 128, True, False)
    nf = quantize_layer_weight(w, "nf4", 4, 64, True, False)
    cb = codebook("nf4")
    out = {}
    for dt in (torch.bfloat16, torch.float32):
        x = torch.randn(M, K).to(dt)
        wd = w.to(dt)
        rows = {"torch matmul": lambda: F.linear(x, wd),
                "hfq Q4_K": lambda: ops.linear_ggml(x, q, "Q4_K", K, None),
                "hfq int4 g128": lambda: ops.linear_int(x, t["weight"], t["scales"], None, 4, None),
                "hfq nf4": lambda: ops.linear_4bit(x, nf["weight"], nf["absmax"], cb, [N, K], None)}
        times = {n: [] for n in rows}
        for f in rows.values():
            f()
        for _ in range(rounds):
            for n, f in rows.items():
                times[n].append(_timed(f))
        out[str(dt).replace("torch.", "")] = {n: statistics.median(v) for n, v in times.items()}
    return out


def ggml_mul_mat(binary: str, N: int, K: int) -> dict:
    """Seconds per MUL_MAT from ggml's test-backend-ops perf mode, per type. It repeats one op on the same
    tensors (cache-resident), and it runs on hardware_concurrency / 2 threads (1 on this 2-core machine).
    Its perf list has every type at m=4096, k=14336 (use --shape 4096 14336) and Q4_K at k=4096."""
    r = subprocess.run([binary, "perf", "-o", "MUL_MAT", "-b", "CPU", "-p", f"type_b=f32,m={N},n=1,k={K},"],
                       capture_output=True, text=True, timeout=3600)
    out = {}
    pat = re.compile(r"MUL_MAT\(type_a=(\w+),type_b=f32,m=(\d+),n=(\d+),k=(\d+).*?([\d.]+) us/run")
    for line in r.stdout.splitlines():
        m = pat.search(line)
        if m and int(m.group(2)) == N and int(m.group(3)) == 1 and int(m.group(4)) == K:
            out[m.group(1).upper()] = float(m.group(5)) * 1e-6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 4096], metavar=("OUT", "IN"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prefill-rows", type=int, default=512)
    ap.add_argument("--ggml-bench", help="path to ggml's test-backend-ops (its perf list: Q4_K at 4096x4096, the "
                    "other types only at k=14336)")
    ap.add_argument("--ggml-src", nargs="?", const="auto", help="llama.cpp tree to build ggml's matmul tool from "
                    "(benchmarks/ggml_mul_mat.cpp): rows 'ggml TYPE' for every GGML type at this shape, streamed and "
                    "cached, interleaved with hfq's; no value: the tree .ci/llama_tools.sh unpacked")
    ap.add_argument("--json")
    args = ap.parse_args()
    assert build.load("cpu"), f"native kernels unavailable: {build.status()}"
    N, K = args.shape
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0))
    rows = {**baselines(w), **formats(w)}
    stream = int(1.25 * l3_bytes())   # each row's copies exceed the L3 cache
    report = {"shape": [N, K], "isa": build.cpu_isa(), "l3_bytes": l3_bytes(), "cpu": torch.backends.cpu.get_cpu_capability()}
    exe = None
    if args.ggml_src:
        src = _ggml_bench.default_src() if args.ggml_src == "auto" else Path(args.ggml_src)
        if src is None:
            raise SystemExit("--ggml-src: no llama.cpp tree in ~/.cache/hfq; run bash .ci/llama_tools.sh or pass one")
        exe = _ggml_bench.build(src, print)
    for th in args.threads:
        torch.set_num_threads(th)
        bw = read_bandwidth(th)
        ggml_rows = _ggml_bench.rows(exe, N, K, th, {t: rows[t][0] for t in GGML_TYPES}) if exe else {}
        g = gemv({**rows, **ggml_rows}, K, args.rounds, stream)
        ggml_threads = max(1, (os.cpu_count() or 2) // 2)
        gg = ggml_mul_mat(args.ggml_bench, N, K) if args.ggml_bench and th == ggml_threads else {}
        fp32 = g["streamed"]["torch fp32"]
        i4 = g["streamed"].get("torch int4pack bf16")
        print(f"\n== GEMV 1x{K}x{N}, {th} thread(s), hfq ISA {build.cpu_isa()}, read bandwidth {bw:.1f} GB/s ==")
        print(f"{'row':22} {'streamed ms':>11} {'x fp32':>7} {'x int4pk':>8} {'GB/s':>6} {'% bw':>5} "
              f"{'cached ms':>9} {'ggml ms':>8} {'x ggml':>6} {'x ggml s':>7}")
        table = {}
        for n, (nbytes, _) in {**rows, **ggml_rows}.items():
            ts, tc = g["streamed"][n], g["cached"][n]
            gb = nbytes / ts / 1e9
            own = f"ggml {n.split()[0]}"   # ggml's own row for this GGML type, from --ggml-src
            if own in g["cached"] and not n.startswith("ggml"):
                tg, tgs = g["cached"][own], g["streamed"][own]
            else:
                key = n.split()[0].upper()
                tg, tgs = (gg.get(key), None) if key in gg and not n.startswith("ggml") else (None, None)
            table[n] = {"streamed_s": ts, "cached_s": tc, "x_fp32": fp32 / ts, "x_int4pack": (i4 / ts) if i4 else None,
                        "gbps": gb, "pct_bw": 100 * gb / bw, "ggml_s": tg, "x_ggml": (tg / tc) if tg else None,
                        "ggml_streamed_s": tgs, "x_ggml_streamed": (tgs / ts) if tgs else None}
            print(f"{n:22} {ts*1e3:11.3f} {fp32/ts:7.2f} {(i4/ts if i4 else float('nan')):8.2f} {gb:6.1f} "
                  f"{100*gb/bw:5.0f} {tc*1e3:9.3f} {(tg*1e3 if tg else float('nan')):8.3f} "
                  f"{(tg/tc if tg else float('nan')):6.2f} {(tgs/ts if tgs else float('nan')):7.2f}")
        p = prefill(w, args.prefill_rows, max(3, args.rounds // 2))
        print(f"\n== prefill {args.prefill_rows}x{K}x{N}, {th} thread(s) ==")
        for dt, rr in p.items():
            base = rr["torch matmul"]
            print("  " + dt + ": " + ", ".join(f"{n} {v*1e3:.1f} ms ({base/v:.2f}x)" for n, v in rr.items()))
        report[f"threads_{th}"] = {"read_gbps": bw, "gemv": table, "prefill": p}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
