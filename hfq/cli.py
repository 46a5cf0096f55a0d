"""The `hfq` command line: quantize, info, importance, eval, export-gguf, export, push, demo, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from . import cli_gguf
from .config import CODEBOOK_BLOCK_SIZES, GGUF_QUANT_TYPES, METHODS, RTN_BITS, RTN_GROUP_SIZES

logger = logging.getLogger("hfq")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"hfq: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hfq", description="Quantize Hugging Face causal LMs with hfq.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a model at load time and save it")
    q.add_argument("model", help="local folder, Hub id, or an embedded model name (gemma-3-270m)")
    q.add_argument("--method", required=True, choices=METHODS)
    q.add_argument("--bits", type=int, help=f"rtn: one of {list(RTN_BITS)} (default 4); nf4/fp4: 4")
    q.add_argument("--group-size", type=int,
                   help=f"rtn group {list(RTN_GROUP_SIZES)} (default 128); nf4/fp4 block {list(CODEBOOK_BLOCK_SIZES)} (default 64)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--sym", dest="sym", action="store_true", default=None, help="rtn: symmetric grid (default)")
    g.add_argument("--asym", dest="sym", action="store_false", help="rtn: asymmetric grid with zero points")
    q.add_argument("--double-quant", action="store_true", default=None, help="nf4/fp4: quantize the absmax constants")
    q.add_argument("--quant-type", help=f"gguf: llama.cpp file type, one of {', '.join(GGUF_QUANT_TYPES)}")
    q.add_argument("--importance", metavar="FILE", help="gguf: importance vectors from `hfq importance`")
    q.add_argument("--calibration", metavar="TEXT", help="gguf: a text file; importance is collected from it first")
    q.add_argument("--ctx", type=int, default=512, help="calibration window in tokens (default 512)")
    q.add_argument("--grid", choices=["int", "nf4", "fp4", "gguf"],
                   help="gptq/awq: grid to round onto (default int; gguf when --quant-type is given)")
    q.add_argument("--dataset", metavar="FILE", help="gptq/awq: calibration .txt or .jsonl (\"text\" field); "
                   "default: hfq's built-in text (first half of CPython's pydoc topics)")
    q.add_argument("--n-samples", type=int, help="gptq/awq: calibration windows (default 128)")
    q.add_argument("--seq-len", type=int, help="gptq/awq: tokens per window (default 512)")
    q.add_argument("--seed", type=int, help="gptq/awq: seed that picks the windows (default 0)")
    q.add_argument("--desc-act", action="store_true", default=None, help="gptq: act-order (stores g_idx)")
    q.add_argument("--static-groups", action="store_true", default=None, help="gptq: act-order with fixed groups")
    q.add_argument("--act-group-aware", action="store_true", default=None,
                   help="gptq: group-aware column order (GAR), no g_idx")
    q.add_argument("--damp-percent", type=float, help="gptq: dampening, fraction of mean diag(H) (default 0.01)")
    q.add_argument("--skip", nargs="+", metavar="MODULE",
                   help="modules kept in float (replaces the defaults: lm_head and tied embeddings)")
    q.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    q.add_argument("--max-shard-size", default="5GB")
    q.add_argument("--out", required=True, help="output folder (written atomically)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")

    i = sub.add_parser("info", help="describe a saved hfq checkpoint")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--layers", action="store_true", help="list every quantized layer")

    m = sub.add_parser("importance", help="collect importance (llama.cpp's imatrix) from calibration text")
    m.add_argument("model", help="local folder, Hub id, or an embedded model name (gemma-3-270m)")
    m.add_argument("--text", required=True, help="calibration text file (UTF-8)")
    m.add_argument("--ctx", type=int, default=512, help="window in tokens (default 512)")
    m.add_argument("--chunks", type=int, help="use at most this many windows")
    m.add_argument("--out", required=True, help="output .safetensors (written atomically)")

    e = sub.add_parser("eval", help="perplexity, KL and top-1 against a base model, size and speed")
    e.add_argument("model", help="hfq/transformers folder, embedded model name, or a .gguf file")
    e.add_argument("--base", help="base model (folder or embedded name) for KL and top-1")
    e.add_argument("--text", help="UTF-8 text file (default: held-out English shipped with Python, see README)")
    e.add_argument("--ctx", type=int, default=512, help="context per chunk (default 512)")
    e.add_argument("--chunks", type=int, default=4, help="number of chunks (default 4; 0 = the whole text)")
    e.add_argument("--threads", type=int, help="threads for GGUF files in llama.cpp")
    e.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    u = sub.add_parser("push", help="make variants, evaluate them, write their cards and upload them to the Hub")
    u.add_argument("model", help="base model: local folder, Hub id, or an embedded model name (gemma-3-270m)")
    u.add_argument("--variants", required=True, help="comma-separated names, e.g. nf4,rtn-int4-g128 (see README)")
    u.add_argument("--repo", required=True, help="repo name stem: namespace/name; each variant goes to NAME-VARIANT")
    u.add_argument("--text", help="evaluation text file (default: held-out English shipped with Python)")
    u.add_argument("--ctx", type=int, default=512, help="context per chunk (default 512)")
    u.add_argument("--chunks", type=int, default=4, help="number of chunks (default 4; 0 = the whole text)")
    u.add_argument("--out", help="local working folder (default hfq-push-NAMESPACE--NAME); kept for resuming")
    u.add_argument("--private", action="store_true", help="create the repos private")
    u.add_argument("--dry-run", action="store_true", help="make, evaluate and card everything; upload nothing")

    d = sub.add_parser("demo", help="quantize the embedded Gemma-3-270M to the standard variants and compare them")
    d.add_argument("--quick", action="store_true", help="three variants on one chunk, no decode timing (CI); default: the full demo")
    d.add_argument("--out", default="hfq-demo", help="output folder (default hfq-demo)")

    x = sub.add_parser("export", help="write an hfq int checkpoint as a standard GPTQ or AWQ checkpoint")
    x.add_argument("model", help="hfq checkpoint folder with integer-grid layers (rtn, gptq, awq)")
    x.add_argument("--format", required=True, choices=["gptq", "awq"], help="gptq: GPTQ v1; awq: AutoAWQ GEMM")
    x.add_argument("--out", required=True, help="output folder (written atomically)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")

    sub.add_parser("doctor", help="report the environment hfq runs in and which kernels each op uses")
    cli_gguf.add_parser(sub)
    return p


def _cmd_quantize(args) -> int:
    import torch

    from .config import HfqConfig
    from .cards import render_card
    from .checkpoint import canonicalize_metadata, describe, replace_dir
    from .models import resolve

    if (args.importance or args.calibration) and args.method != "gguf":
        raise ValueError("--importance and --calibration apply to --method gguf only.")
    if args.importance and args.calibration:
        raise ValueError("give --importance or --calibration, not both.")
    cal = {k: getattr(args, k) for k in ("grid", "dataset", "n_samples", "seq_len", "seed", "desc_act",
                                         "static_groups", "act_group_aware", "damp_percent")
           if getattr(args, k) is not None}
    if cal and args.method not in ("gptq", "awq"):
        raise ValueError(f"--{next(iter(cal)).replace('_', '-')} applies to --method gptq or awq only.")
    cfg = HfqConfig(method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
                    double_quant=args.double_quant, modules_to_not_convert=args.skip, quant_type=args.quant_type,
                    importance=args.importance, **cal)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} exists and is not empty; pass --overwrite or choose another folder.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve(args.model)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.calibration:
        cfg.importance = _importance(src, args.calibration, args.ctx, None)
    print(f"quantizing {args.model} with {cfg.short_name()} ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=args.max_shard_size)
        canonicalize_metadata(tmp)   # same content, same bytes: the card's sha256s can be reproduced
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        except (OSError, ValueError) as e:
            logger.warning("no tokenizer saved: %s", e)
        info = describe(tmp)
        info["path"] = str(tmp)
        command = "hfq " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "hfq quantize"
        (tmp / "README.md").write_text(render_card(info, args.model, command, str(out)))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = describe(out)
    print(f"saved {out}: {info['layers_quantized']} layers, {info['quantized_bpw']:.3f} bpw in quantized layers, "
          f"{info['bytes_on_disk'] / 1e6:.1f} MB")
    return 0


def _importance(src: str, text_file: str, ctx: int, chunks: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .algorithms.calibration import collect_importance, token_windows

    text = Path(text_file).read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(src)
    windows = token_windows(tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"], ctx,
                            tok.bos_token_id)[:chunks]
    print(f"collecting importance on {len(windows)} windows of {ctx} tokens ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    return collect_importance(model, windows)


def _cmd_importance(args) -> int:
    from .algorithms.calibration import save_importance
    from .models import resolve

    out = Path(args.out)
    imp = _importance(resolve(args.model), args.text, args.ctx, args.chunks)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_importance(imp, out)
    print(f"saved {out}: importance for {len(imp)} linear layers")
    return 0


def _cmd_eval(args) -> int:
    from .publish import evaluate

    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    result = evaluate(args.model, args.base, text=text, ctx=args.ctx, chunks=args.chunks or None, threads=args.threads)
    if args.text:
        result["text"] = args.text
    if args.json:
        tmp = Path(args.json).with_name(Path(args.json).name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.json)
    print(f"{args.model}: ppl {result['ppl']:.3f} over {result['scored_tokens']} tokens "
          f"({result['chunks']} chunks of {result['n_ctx']})")
    if "kl" in result:
        print(f"  vs {args.base}: KL {result['kl']:.4f}, top-1 agreement {result['top1']:.3f}")
    size = result["size"]
    print(f"  size {size['bytes'] / 1e6:.1f} MB" + (f", {size['bpw']:.3f} bpw" if size.get("bpw") else ""))
    for kind, m in size["modules"].items():
        print(f"    {kind:28} {m['weights']:>13,} weights  {m['bpw']:.3f} bpw")
    speed = f"  prefill {result['prefill_tokens_per_s']:.0f} tokens/s"
    if "decode_tokens_per_s" in result:
        speed += f", decode {result['decode_tokens_per_s']:.1f} tokens/s"
    print(speed + f"; peak RSS {result['peak_rss_mb']:.0f} MB")
    return 0


def _cmd_push(args) -> int:
    from .cards import markdown_table
    from .publish import push_variants

    out = args.out or f"hfq-push-{args.repo.replace('/', '--')}"
    argv = sys.argv[1:] if sys.argv[1:2] == ["push"] else ["push", args.model, "--variants", args.variants,
                                                           "--repo", args.repo]
    command = "hfq " + " ".join(shlex.quote(a) for a in argv)
    resume = command if args.out else f"{command} --out {shlex.quote(out)}"
    text = Path(args.text).read_text(encoding="utf-8") if args.text else None
    records = push_variants(args.model, args.variants, args.repo, out=out, text=text, ctx=args.ctx,
                            chunks=args.chunks or None, private=args.private, dry_run=args.dry_run,
                            command=command, resume_command=resume,
                            text_name=Path(args.text).name if args.text else None)
    print(markdown_table([(r["variant"], r["result"]) for r in records]))
    for r in records:
        state = "dry run, not uploaded" if args.dry_run else (r["commit_url"] or "up to date, no commit")
        print(f"{r['repo_id']}: {state}  ({r['folder']})")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    res = run_demo(args.out, quick=args.quick)
    print(res["table"])
    print(f"folders, cards and results in {args.out}/; chart {res['chart']}; {res['seconds']:.0f} s")
    return 0


def _cmd_export(args) -> int:
    from transformers import AutoModelForCausalLM

    from .models import resolve
    from .standard import save_standard

    src = resolve(args.model)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} exists and is not empty; pass --overwrite or choose another folder.")
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    if getattr(model.config, "quantization_config", None) is None:
        raise ValueError(f"{args.model} is not an hfq checkpoint (no quantization_config); run `hfq quantize "
                         "--method rtn` first.")
    save_standard(model, out, args.format, source_dir=src, overwrite=args.overwrite)
    print(f"saved {out}: {args.format.upper()} checkpoint")
    return 0


def _cmd_info(args) -> int:
    from .checkpoint import describe

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
    if args.layers:
        for name, layer in info["layers"].items():
            kind = f"  {layer['type']}" if "type" in layer else ""
            print(f"  {name:60} {layer['shape'][0]}x{layer['shape'][1]}{kind}  {layer['bpw']:.3f} bpw")
    return 0


def _cmd_doctor(args) -> int:
    import torch

    from ._version import __version__
    from .kernels.ops import SCHEMAS, op

    print(f"hfq {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"cuda available: {torch.cuda.is_available()} (torch built with CUDA {torch.version.cuda})")
    print(f"c++ compiler: {shutil.which(os.environ.get('CXX', 'c++')) or 'not found'}; "
          f"ninja: {shutil.which('ninja') or 'not found'}")
    from .algorithms import ggml_quant  # noqa: F401  (registers hfq::quantize_ggml's reference)
    from .kernels import build

    for ext in build.EXTENSIONS:   # builds (or finds in the cache) each native kernel, reporting failures
        build.load(ext)
    for ext, st in build.status().items():
        print(f"extension {ext}: {st} (cache {build.cache_root()})")
    caps = torch.backends.cpu.get_cpu_capability()
    print(f"cpu instruction set: {build.cpu_isa() or 'none (reference only)'} (torch reports {caps}; "
          "HFQ_CPU_ISA=avx2|scalar caps it)")
    for name in SCHEMAS:
        keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(op(name).default.name(), k)]
        print(f"  hfq::{name:28} native: {', '.join(keys) or 'none'}; fallback: pure-torch reference")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    handler = {"quantize": _cmd_quantize, "info": _cmd_info, "doctor": _cmd_doctor,
               "importance": _cmd_importance, "eval": _cmd_eval, "export-gguf": cli_gguf.run, "push": _cmd_push,
               "demo": _cmd_demo, "export": _cmd_export}[args.command]
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError) as e:
        if args.verbose:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"hfq: error: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
