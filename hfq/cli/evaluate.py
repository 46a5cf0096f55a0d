"""`hfq eval`: perplexity, KL and top-1 against a base model, size and speed (hfq.evaluate)."""

from __future__ import annotations

from pathlib import Path

from . import checks
from ..atomic import write_json


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="perplexity, KL and top-1 against a base model, size and speed")
    e.add_argument("model", help="hfq/transformers folder, embedded model name, or a .gguf file")
    e.add_argument("--base", help="base model (folder or embedded name) for KL and top-1")
    e.add_argument("--text", help="UTF-8 text file (default: held-out English shipped with Python, see docs/evaluation.md)")
    e.add_argument("--ctx", type=int, default=512, help="context per chunk (default 512)")
    e.add_argument("--chunks", type=int, default=4, help="number of chunks (default 4; 0 = the whole text)")
    e.add_argument("--threads", type=int, help="threads for GGUF files in llama.cpp")
    e.add_argument("--no-speed", action="store_true", help="skip the decode timing (32 greedy tokens)")
    e.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    e.set_defaults(handler=_cmd_eval)


def _cmd_eval(args) -> int:
    from ..evaluation import evaluate

    from ..embedded import resolve

    if str(args.model).endswith(".gguf") and args.base is None:
        raise ValueError("a .gguf file needs --base (the folder or embedded name whose tokenizer and logits to use).")
    checks.at_least(args.chunks, "--chunks", 0, " (0 = the whole text)")
    checks.at_least(args.threads, "--threads")
    checks.writable_file(args.json, "--json")
    text = checks.text_file(args.text, "--text")
    checks.context(args.ctx, resolve(args.base if str(args.model).endswith(".gguf") and args.base else args.model))
    result = evaluate(args.model, args.base, text=text, ctx=args.ctx, chunks=args.chunks or None, threads=args.threads,
                      speed=not args.no_speed)
    if args.text:
        result["text"] = args.text
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
    rss = result["peak_rss_mb"]
    print(speed + (f"; peak RSS {rss:.0f} MB" if rss is not None else ""))
    if args.json:   # after the printout, so a failing write never loses the numbers
        write_json(args.json, result, indent=2)
    return 0
