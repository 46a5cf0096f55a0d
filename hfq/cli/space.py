"""`hfq space`: open the comparison page (spaces/hfq-compare/app.py, shipped inside the wheel) locally."""

from __future__ import annotations

import importlib.util


def add_parsers(sub) -> None:
    s = sub.add_parser("space", help="a local page comparing the base and quantized variants side by side")
    s.add_argument("--variants", help="a folder that `hfq demo` or `hfq push --dry-run` wrote")
    s.add_argument("--models", nargs="+", metavar="MODEL",
                   help="the base first, then up to three variants: folders, .gguf files, Hub ids, "
                        "namespace/name/file.gguf, or gemma-3-270m (default: gemma-3-270m and nf4-dq, "
                        "gptq-int4-g128, Q4_K_M, made once into $HFQ_CACHE)")
    s.add_argument("--show", help="with --variants: comma-separated variant names to show (up to three)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 7860)")
    s.set_defaults(handler=_cmd_space)


def load_app():
    """The Space's app.py as a module (it imports gradio)."""
    from .._resources import resource_dir

    path = resource_dir("spaces") / "hfq-compare" / "app.py"
    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError("`hfq space` needs gradio; install it with `pip install 'hfq[spaces]'`.")
    spec = importlib.util.spec_from_file_location("hfq_compare_app", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cmd_space(args) -> int:
    app = load_app()
    cmp = app.comparison_from(args)
    print(f"hfq space: {', '.join(cmp.names)}")
    app.serve(cmp, args.host, args.port)
    return 0
