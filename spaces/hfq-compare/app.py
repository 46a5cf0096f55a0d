"""hfq-compare: a base model and its quantized variants answer one prompt side by side, with what each answer
cost, the quality table, scores on your own text, and where each variant's greedy tokens leave the base's.

    python spaces/hfq-compare/app.py                         # embedded Gemma-3-270M, nf4-dq, gptq-int4-g128, Q4_K_M
    python spaces/hfq-compare/app.py --variants hfq-demo     # what `hfq demo` / `hfq push --dry-run` wrote
    python spaces/hfq-compare/app.py --models BASE VARIANT.gguf namespace/name ...

The page only lays out components; the work is hfq.space's (importable and tested without a browser)."""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

import hfq.space as space  # noqa: E402
from hfq.space import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MAX_SCORE_TOKENS, QUALITY_COLUMNS, SCORE_COLUMNS  # noqa: E402

HERE = Path(__file__).resolve().parent
CONCURRENCY = 1   # one request at a time: the models share the CPU cores, and timings stay honest


def _refusals_shown(fn):
    """A ValueError (prompt over the limit, bad settings) becomes Gradio's error toast with its message."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args):
            try:
                yield from fn(*args)
            except ValueError as e:
                raise gr.Error(str(e)) from e
        return gen

    @functools.wraps(fn)
    def call(*args):
        try:
            return fn(*args)
        except ValueError as e:
            raise gr.Error(str(e)) from e
    return call


def build(cmp: space.Comparison) -> gr.Blocks:
    chart_dir = tempfile.mkdtemp(prefix="hfq-space-")

    def quality():
        return cmp.quality_table(measure=True), cmp.chart_path(chart_dir)

    def divergence(prompt, n):
        return cmp.divergence_html(cmp.divergence(prompt, int(n)))

    with gr.Blocks(title="hfq: quantized variants side by side") as demo:
        gr.Markdown("# hfq: the base model and its quantized variants, side by side\n"
                    "One prompt, the same token ids, seed and sampling for every panel (greedy at temperature 0). "
                    "Panels run one after another, so each answer's speed is measured alone.")
        with gr.Tab("Side by side"):
            prompt = gr.Textbox(label="Prompt", lines=3, value="The capital of France is",
                                info=f"up to {MAX_PROMPT_TOKENS} tokens", elem_id="prompt")
            with gr.Row():
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=48, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                seed = gr.Number(value=0, precision=0, label="Seed")
            go = gr.Button("Generate", variant="primary")
            texts, costs = [], []
            with gr.Row():
                for i, name in enumerate(cmp.names):
                    with gr.Column():
                        texts.append(gr.Textbox(label=("base: " if i == 0 else "") + name, lines=8,
                                                interactive=False, elem_id=f"panel-{i}"))
                        costs.append(gr.Markdown(elem_id=f"cost-{i}"))
            go.click(_refusals_shown(cmp.run), [prompt, max_new, temperature, top_p, seed], texts + costs,
                     api_name="compare")
        with gr.Tab("Quality"):
            gr.Markdown("Perplexity, KL and top-1 against the base, from the variants' `hfq_eval.json` / "
                        "`results.json` where present, otherwise measured on one 256-token window of the "
                        "default text (the `from` column says which).")
            table = gr.Dataframe(headers=QUALITY_COLUMNS, value=cmp.quality_table(measure=False),
                                 interactive=False, elem_id="quality")
            chart = gr.Image(value=str(cmp.chart) if cmp.chart else None, label="Quality against size",
                             type="filepath", interactive=False, elem_id="chart")
            gr.Button("Measure the missing rows").click(quality, None, [table, chart], api_name="quality")
        with gr.Tab("Your text"):
            gr.Markdown(f"Perplexity of every model, and KL and top-1 against the base, on your text (up to "
                        f"{MAX_SCORE_TOKENS} tokens). As llama-perplexity scores a window: the second half of "
                        "the tokens, with the first half as context.")
            user_text = gr.Textbox(label="Text to score", lines=8)
            scores = gr.Dataframe(headers=SCORE_COLUMNS, interactive=False, elem_id="scores")
            gr.Button("Score").click(_refusals_shown(cmp.score_text), [user_text], [scores], api_name="score")
        with gr.Tab("Divergence"):
            gr.Markdown("The base's greedy answer, once per variant: marked tokens are where the variant's top-1, "
                        "given the same context, disagrees (hover: its top-1); the framed one is where its own "
                        "greedy answer first differs, and that answer follows from there.")
            d_prompt = gr.Textbox(label="Prompt for the divergence view", value="The capital of France is")
            d_n = gr.Slider(1, MAX_NEW_TOKENS, value=32, step=1, label="Greedy tokens")
            view = gr.HTML(elem_id="divergence")
            gr.Button("Show divergence").click(_refusals_shown(divergence), [d_prompt, d_n], view,
                                               api_name="divergence")
    demo.queue(default_concurrency_limit=CONCURRENCY)
    demo.hfq_allowed_paths = [chart_dir, *([str(cmp.chart.parent)] if cmp.chart else [])]
    return demo


def serve(cmp: space.Comparison, host: str | None = None, port: int | None = None, **launch):
    """Build and launch the page (host/port default to Gradio's: GRADIO_SERVER_NAME/PORT, else 127.0.0.1:7860)."""
    demo = build(cmp)
    demo.launch(server_name=host, server_port=port, allowed_paths=demo.hfq_allowed_paths, **launch)
    return demo


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare a base model and its quantized variants side by side.")
    p.add_argument("--variants", help="a folder that `hfq demo` or `hfq push --dry-run` wrote")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="the base first, then up to three variants: folders, .gguf files, Hub ids, "
                        "namespace/name/file.gguf, or gemma-3-270m")
    p.add_argument("--show", help="comma-separated variant names to show, with --variants (up to three)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, help="port (default 7860)")
    return p


def comparison_from(args) -> space.Comparison:
    config = HERE / space.CONFIG_FILE   # written by `hfq push --space`
    show = [s.strip() for s in args.show.split(",") if s.strip()] if args.show else None
    return space.comparison(args.variants, args.models, show, config=config if config.is_file() else None)


def main(argv=None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        cmp = comparison_from(args)
    except (ValueError, OSError) as e:
        p.error(str(e))
    serve(cmp, args.host, args.port)


if __name__ == "__main__":
    main()
