"""`hfq quantize` and `hfq importance`: quantize a model at load time and save it; collect importance."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from ..checkpoint import NO_REMOTE_CODE, SAFE_LOAD
from . import checks
from ..config import CODEBOOK_BLOCK_SIZES, EMBEDDINGS, GGUF_QUANT_TYPES, METHODS, RTN_BITS, RTN_GROUP_SIZES

logger = logging.getLogger("hfq")


def add_parsers(sub) -> None:
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
    q.add_argument("--n-samples", type=int, help="gptq/awq: calibration windows (default: all of the data, at most 128)")
    q.add_argument("--seq-len", type=int, help="gptq/awq: tokens per window (default: at most 512, shrunk so a short text is used whole)")
    q.add_argument("--seed", type=int, help="gptq/awq: seed that picks the windows (default 0)")
    q.add_argument("--desc-act", action="store_true", default=None, help="gptq: act-order (stores g_idx)")
    q.add_argument("--static-groups", action="store_true", default=None, help="gptq: act-order with fixed groups")
    q.add_argument("--act-group-aware", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: group-aware column order (GAR), no g_idx (default: on where the grid allows it)")
    q.add_argument("--damp-percent", type=float, help="gptq: dampening, fraction of mean diag(H) (default: 0.1 below 64 calibration tokens per "
                   "input column of a layer, else 0.01)")
    q.add_argument("--embeddings", metavar="STORAGE",
                   help=f"input embedding and output head: one of {', '.join(EMBEDDINGS)} (default: llama.cpp's "
                   "types for gguf, float otherwise; a tied head shares the embedding's table)")
    q.add_argument("--skip", nargs="+", metavar="MODULE",
                   help="modules kept in float (replaces the defaults: lm_head and tied embeddings)")
    q.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    q.add_argument("--max-shard-size", default="5GB")
    q.add_argument("--out", required=True, help="output folder (written atomically)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    q.set_defaults(handler=_cmd_quantize)

    m = sub.add_parser("importance", help="collect importance (llama.cpp's imatrix) from calibration text")
    m.add_argument("model", help="local folder, Hub id, or an embedded model name (gemma-3-270m)")
    m.add_argument("--text", required=True, help="calibration text file (UTF-8)")
    m.add_argument("--ctx", type=int, default=512, help="window in tokens (default 512)")
    m.add_argument("--chunks", type=int, help="use at most this many windows")
    m.add_argument("--out", required=True, help="output .safetensors (written atomically)")
    m.set_defaults(handler=_cmd_importance)


def _cmd_quantize(args) -> int:
    import torch

    from ..atomic import publish, refuse_existing
    from ..checkpoint import canonicalize_metadata, describe
    from ..config import HfqConfig
    from ..embedded import resolve
    from ..publish.cards import render_card
    from ..publish.push import base_card_info

    if (args.importance or args.calibration) and args.method != "gguf":
        raise ValueError("--importance and --calibration apply to --method gguf only.")
    if args.importance and args.calibration:
        raise ValueError("give --importance or --calibration, not both.")
    cal = {k: getattr(args, k) for k in ("grid", "dataset", "n_samples", "seq_len", "seed", "desc_act",
                                         "static_groups", "act_group_aware", "damp_percent")
           if getattr(args, k) is not None}
    if cal and args.method not in ("gptq", "awq"):
        raise ValueError(f"--{next(iter(cal)).replace('_', '-')} applies to --method gptq or awq only.")
    checks.at_least(args.n_samples, "--n-samples")
    checks.at_least(args.bits, "--bits")
    checks.shard_size(args.max_shard_size)
    checks.dataset_file(args.dataset)
    checks.text_file(args.calibration, "--calibration")
    if args.importance and not Path(args.importance).is_file():
        raise ValueError(f"--importance {args.importance}: no such file; pass the .safetensors that "
                         "`hfq importance` wrote.")
    if args.damp_percent is not None and not 0 < args.damp_percent <= 1:
        raise ValueError(f"--damp-percent {args.damp_percent} is not allowed; give a fraction in (0, 1].")
    cfg = HfqConfig(method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
                    double_quant=args.double_quant, modules_to_not_convert=args.skip, quant_type=args.quant_type,
                    importance=args.importance, embeddings=args.embeddings, **cal)
    out = Path(args.out)
    refuse_existing(out, args.overwrite)   # before any model loads; publish checks again under its lock
    checks.output_path(args.out)
    src = resolve(args.model)
    checks.context(args.ctx if args.calibration else None, src)
    checks.context(args.seq_len, src, "--seq-len")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    with publish(out, args.overwrite) as tmp:
        if args.calibration:
            cfg.importance = _importance(src, args.calibration, args.ctx, None)
        print(f"quantizing {args.model} with {cfg.short_name()} ...", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=dtype, **SAFE_LOAD)
        model.save_pretrained(tmp, max_shard_size=args.max_shard_size)
        canonicalize_metadata(tmp)   # same content, same bytes: the card's sha256s can be reproduced
        try:
            AutoTokenizer.from_pretrained(src, **NO_REMOTE_CODE).save_pretrained(tmp)
        except (OSError, ValueError) as e:
            logger.warning("no tokenizer saved: %s", e)
        info = describe(tmp)
        info["path"] = str(tmp)
        command = _card_command(args)
        base_id, lic, name = base_card_info(args.model)   # a local folder is no Hub id: no base_model
        (tmp / "README.md").write_text(render_card(info, base_id, command, str(out), license=lic, base_name=name))
    info = describe(out)
    print(f"saved {out}: {info['layers_quantized']} layers, {info['quantized_bpw']:.3f} bpw in quantized layers, "
          f"{info['bytes_on_disk'] / 1e6:.1f} MB")
    return 0


def _card_command(args) -> str:
    """The command as given (also through hfq.cli.main), local paths by their names only: a card is public."""
    argv = [a for a in args.argv if a not in ("-v", "--verbose", "--debug")]
    local = [Path(a.rstrip("/")).name if os.sep in a and (a == args.out or Path(a).exists()) else a for a in argv]
    return "hfq " + " ".join(shlex.quote(a) for a in local)


def _importance(src: str, text_file: str, ctx: int, chunks: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..algorithms.calibration import collect_importance, token_windows

    text = checks.text_file(text_file, "--text" if chunks is not None else "--calibration")
    tok = AutoTokenizer.from_pretrained(src, **NO_REMOTE_CODE)
    windows = token_windows(tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"], ctx,
                            tok.bos_token_id)[:chunks or None]
    print(f"collecting importance on {len(windows)} windows of {ctx} tokens ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **SAFE_LOAD)
    return collect_importance(model, windows)


def _cmd_importance(args) -> int:
    from ..algorithms.calibration import save_importance
    from ..embedded import resolve

    out = Path(args.out)
    checks.at_least(args.chunks, "--chunks")
    checks.text_file(args.text, "--text")
    checks.writable_file(args.out, "--out")
    src = resolve(args.model)
    checks.context(args.ctx, src)
    imp = _importance(src, args.text, args.ctx, args.chunks if args.chunks is not None else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_importance(imp, out)
    print(f"saved {out}: importance for {len(imp)} linear layers")
    return 0
