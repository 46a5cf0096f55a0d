"""`hfq info` and `hfq doctor`: what a saved checkpoint holds, and what this machine runs hfq's ops with."""

from __future__ import annotations

import json
import os
import shutil
import sys


def add_parsers(sub) -> None:
    i = sub.add_parser("info", help="describe a saved hfq checkpoint")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--layers", action="store_true", help="list every quantized layer")
    i.set_defaults(handler=_cmd_info)
    sub.add_parser("doctor", help="report the environment hfq runs in and which kernels each op uses").set_defaults(
        handler=_cmd_doctor)


def _cmd_info(args) -> int:
    from ..checkpoint import describe
    from .verify import verify_path

    verify_path(args.path)   # the same checks as a load: a damaged checkpoint is an error, never "OK"
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    q = info["quantized_bpw"]
    print(f"path              {info['path']}")
    print(f"model type        {info['model_type']}")
    print(f"method            {info['method']}")
    print(f"layers quantized  {info['layers_quantized']}")
    print(f"bits per weight   {q:.3f} (quantized layers)" if q else "bits per weight   n/a")
    print(f"                  {info['model_bpw']:.3f} (whole model, {info['parameters']:,} parameters)")
    print(f"size              {info['bytes_on_disk'] / 1e6:.1f} MB on disk")
    for t, s in info["types"].items():
        print(f"  {t:6} {s['layers']:4} layers  {s['weights']:>13,} weights  {s['bpw']:.3f} bpw")
    for name, e in info.get("embeddings", {}).items():
        where = f"tied to {e['tied_to']} (stored once)" if "tied_to" in e else f"{e['bytes'] / 1e6:.1f} MB"
        print(f"embedding/head    {name}: {e['type']}, {where}")
    if args.layers:
        for name, layer in info["layers"].items():
            kind = f"  {layer['type']}" if "type" in layer else ""
            print(f"  {name:60} {layer['shape'][0]}x{layer['shape'][1]}{kind}  {layer['bpw']:.3f} bpw")
    return 0


def _cmd_doctor(args) -> int:
    import torch

    from .._version import __version__
    from ..kernels.ops import SCHEMAS, op

    print(f"hfq {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"cuda available: {torch.cuda.is_available()} (torch built with CUDA {torch.version.cuda})")
    print(f"c++ compiler: {shutil.which(os.environ.get('CXX', 'c++')) or 'not found'}; "
          f"ninja: {shutil.which('ninja') or 'not found'}")
    from ..algorithms import ggml_quant  # noqa: F401  (registers hfq::quantize_ggml's reference)
    from ..kernels import build

    for ext in build.EXTENSIONS:   # builds (or finds in the cache) each native kernel, reporting failures
        build.load(ext)
    for ext, st in build.status().items():
        print(f"extension {ext}: {st} (cache {build.cache_root()})")
    print(f"cpu instruction set: {build.cpu_isa() or 'none (reference only)'} (torch reports "
          f"{torch.backends.cpu.get_cpu_capability()}; HFQ_CPU_ISA=avx512|avx2|scalar caps it)")
    if build.cpu_activations():
        print(f"cpu decode activations: {build.cpu_activations()} (HFQ_CPU_ACTIVATIONS=int8: llama.cpp's int8 for "
              "GGML types on AVX-512, faster, less exact; docs/kernels.md)")
    for name in SCHEMAS:
        keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(op(name).default.name(), k)]
        print(f"  hfq::{name:28} native: {', '.join(keys) or 'none'}; fallback: pure-torch reference")
    return 0
