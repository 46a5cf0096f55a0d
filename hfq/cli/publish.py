"""`hfq push` and `hfq demo`: make variants, evaluate and card them, upload them; the demo on the embedded Gemma."""

from __future__ import annotations

import shlex
from pathlib import Path


def add_parsers(sub) -> None:
    u = sub.add_parser("push", help="make variants, evaluate them, write their cards and upload them to the Hub")
    u.add_argument("model", help="base model: local folder, Hub id, or an embedded model name (gemma-3-270m)")
    u.add_argument("--variants", required=True, help="comma-separated names, e.g. nf4,rtn-int4-g128 (see docs/publishing.md)")
    u.add_argument("--repo", required=True, help="repo name stem: namespace/name; each variant goes to NAME-VARIANT")
    u.add_argument("--text", help="evaluation text file (default: held-out English shipped with Python)")
    u.add_argument("--ctx", type=int, default=512, help="context per chunk (default 512)")
    u.add_argument("--chunks", type=int, default=4, help="number of chunks (default 4; 0 = the whole text)")
    u.add_argument("--out", help="local working folder (default hfq-push-NAMESPACE--NAME); kept for resuming")
    u.add_argument("--private", action="store_true", help="create the repos private")
    u.add_argument("--dry-run", action="store_true", help="make, evaluate and card everything; upload nothing")
    u.add_argument("--space", action="store_true",
                   help="also create or update the Gradio Space REPO-compare comparing the pushed variants")
    u.add_argument("--space-base", metavar="HUB_ID", help="with --space: the base's Hub id, when MODEL is a local folder")
    u.set_defaults(handler=_cmd_push)

    d = sub.add_parser("demo", help="quantize the embedded Gemma-3-270M to the standard variants and compare them")
    d.add_argument("--quick", action="store_true", help="three variants on one chunk, no decode timing (CI); default: the full demo")
    d.add_argument("--out", default="hfq-demo", help="output folder (default hfq-demo)")
    d.set_defaults(handler=_cmd_demo)


def _cmd_push(args) -> int:
    from ..publish import markdown_table, push_variants

    out = args.out or f"hfq-push-{args.repo.replace('/', '--')}"
    argv = [a for a in args.argv if a not in ("-v", "--verbose", "--debug")]   # the command as given
    command = "hfq " + " ".join(shlex.quote(a) for a in argv)
    resume = command if args.out else f"{command} --out {shlex.quote(out)}"
    from . import checks

    checks.at_least(args.chunks, "--chunks", 0, " (0 = the whole text)")
    checks.at_least(args.ctx, "--ctx", 2)
    text = checks.text_file(args.text, "--text")
    if args.space:   # a base the Space cannot load fails now, before anything is made
        from ..publish.space import space_models

        space_models(args.model, [], args.space_base)
    records = push_variants(args.model, args.variants, args.repo, out=out, text=text, ctx=args.ctx,
                            chunks=args.chunks or None, private=args.private, dry_run=args.dry_run,
                            command=command, resume_command=resume,
                            text_name=Path(args.text).name if args.text else None)
    print(markdown_table([(r["variant"], r["result"]) for r in records]))
    for r in records:
        state = "dry run, not uploaded" if args.dry_run else (r["commit_url"] or "up to date, no commit")
        print(f"{r['repo_id']}: {state}  ({r['folder']})")
    if args.space:
        from ..publish.space import push_space

        space_id, url = push_space(out, args.repo, args.model, records, base_id=args.space_base,
                                   private=args.private, dry_run=args.dry_run, resume_hint=f"Resume with: {resume}")
        state = "dry run, not uploaded" if args.dry_run else (url or "up to date, no commit")
        print(f"{space_id} (Space): {state}")
    return 0


def _cmd_demo(args) -> int:
    from ..publish.demo import run_demo

    res = run_demo(args.out, quick=args.quick)
    print(res["table"])
    print(f"folders, cards and results in {args.out}/; chart {res['chart']}; {res['seconds']:.0f} s")
    return 0
