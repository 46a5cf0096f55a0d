"""`hfq export-gguf` and `hfq export`: any model hfq can load (float, or an hfq checkpoint) to a GGUF file llama.cpp
runs; an hfq integer checkpoint to a standard GPTQ or AWQ checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

from . import checks
from ..checkpoint import NO_REMOTE_CODE, SAFE_LOAD
from ..config import GGUF_QUANT_TYPES


def add_parsers(sub) -> None:
    x = sub.add_parser("export-gguf", help="write a model as a GGUF file for llama.cpp")
    x.add_argument("model", help="float or hfq folder, Hub id, or an embedded model name (gemma-3-270m)")
    x.add_argument("--type", dest="quant_type",
                   help=f"F32, F16 or a llama.cpp file type ({', '.join(GGUF_QUANT_TYPES)}); default: the "
                        "model's own GGUF type, the closest type for other hfq methods, F16 for float models")
    x.add_argument("--imatrix-text", metavar="FILE", help="collect importance on this text first (float models)")
    x.add_argument("--ctx", type=int, default=512, help="importance window in tokens (default 512)")
    x.add_argument("--chunks", type=int, help="use at most this many importance windows")
    x.add_argument("--split-max-size", help="split into gguf-split shards of at most this size (e.g. 2G)")
    x.add_argument("--out", required=True, help="output .gguf (written under a temporary name, then renamed)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    x.set_defaults(handler=_cmd_export_gguf)

    x = sub.add_parser("export", help="write an hfq int checkpoint as a standard GPTQ or AWQ checkpoint")
    x.add_argument("model", help="hfq checkpoint folder with integer-grid layers (rtn, gptq, awq)")
    x.add_argument("--format", required=True, choices=["gptq", "awq"], help="gptq: GPTQ v1; awq: AutoAWQ GEMM")
    x.add_argument("--out", required=True, help="output folder (written atomically)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    x.set_defaults(handler=_cmd_export)


def _cmd_export_gguf(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..algorithms.calibration import collect_importance, token_windows
    from ..checkpoint import describe
    from ..embedded import resolve
    from ..gguf.export import export_gguf
    from ..gguf.split import refuse_existing_set

    out = Path(args.out)
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out} must end in .gguf.")
    refuse_existing_set(out, args.overwrite)   # before any model loads; export_gguf checks again under its lock
    checks.writable_file(args.out, "--out")
    checks.at_least(args.chunks, "--chunks")
    checks.text_file(args.imatrix_text, "--imatrix-text")
    if args.split_max_size is not None:
        checks.shard_size(args.split_max_size, "--split-max-size")
    src = resolve(args.model)
    if Path(src).is_dir():
        describe(src)            # names a truncated or corrupt safetensors file before transformers reads it
    if args.imatrix_text:
        checks.context(args.ctx, src)
    tok = AutoTokenizer.from_pretrained(src, **NO_REMOTE_CODE)
    print(f"loading {args.model} ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **SAFE_LOAD)
    importance = None
    if args.imatrix_text:
        if getattr(model.config, "quantization_config", None) is not None:
            raise ValueError("--imatrix-text needs a float model; this one is already quantized.")
        text = checks.text_file(args.imatrix_text, "--imatrix-text")
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        windows = token_windows(ids, args.ctx, tok.bos_token_id)[:args.chunks]
        print(f"collecting importance on {len(windows)} windows of {args.ctx} tokens ...", file=sys.stderr)
        importance = collect_importance(model, windows)
    files = export_gguf(model, tok, out, quant_type=args.quant_type, importance=importance,
                        split_max_size=args.split_max_size, name=Path(str(args.model).rstrip("/")).name,
                        overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in files)
    print(f"saved {', '.join(str(f) for f in files)}: {size / 1e6:.1f} MB")
    return 0


def _cmd_export(args) -> int:
    from transformers import AutoModelForCausalLM

    from ..embedded import resolve
    from ..standard import save_standard

    from ..atomic import refuse_existing

    out = Path(args.out)
    refuse_existing(out, args.overwrite)   # before any model loads; save_standard checks again under its lock
    checks.output_path(args.out)
    src = resolve(args.model)
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto", **SAFE_LOAD)
    if getattr(model.config, "quantization_config", None) is None:
        raise ValueError(f"{args.model} is not an hfq checkpoint (no quantization_config); run `hfq quantize "
                         "--method rtn` first.")
    save_standard(model, out, args.format, source_dir=src, overwrite=args.overwrite)
    print(f"saved {out}: {args.format.upper()} checkpoint")
    return 0
