"""Model cards from the templates in model_cards/, rendered through huggingface_hub's ModelCard and
ModelCardData. Every value from the model or the user is escaped: front matter goes through huggingface_hub's
YAML writer, body text through HTML escaping (and '|' for table cells), code through backtick removal.

The table's numbers are the evaluation results' numbers at fixed precision (ROUND), so a reader can check them
against the evaluation JSON shipped next to the weights."""

from __future__ import annotations

import html
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .._resources import resource_dir
from .._version import __version__
from ..checkpoint import describe
from .hub import sha256_file

# Decimal places of each number in the card's table.
ROUND = {"size_mb": 1, "bpw": 3, "ppl": 3, "kl": 4, "top1": 3, "prefill": 0, "decode": 1}
NO_CALIBRATION = "None: this method sets every scale from the weights alone, without calibration data."


def _text(v) -> str:
    """Markdown text: HTML is live there, a newline could start a block and '|' would split a table cell."""
    return html.escape(" ".join(str(v).split())).replace("|", "&#124;")


def _code(v) -> str:
    """Code blocks and spans: HTML is inert there, but a backtick or a newline would end them."""
    return " ".join(str(v).split()).replace("`", "'")


def _code_lines(v: str) -> str:
    """A code block of several lines: each line escaped like _code, so none can close the block."""
    return "\n".join(_code(x) for x in str(v).splitlines() if x.strip())


def _num(v, key: str) -> str:
    return "—" if v is None else f"{v:.{ROUND[key]}f}"


def table_row(name: str, result: dict) -> dict:
    """One table row from an evaluation result (hfq.evaluate's dict): the numbers as the card prints them."""
    size = result.get("size") or {}
    return {"name": _text(name), "size_mb": _num(size["bytes"] / 1e6 if "bytes" in size else None, "size_mb"),
            "bpw": _num(size.get("bpw"), "bpw"), "ppl": _num(result.get("ppl"), "ppl"),
            "kl": _num(result.get("kl"), "kl"), "top1": _num(result.get("top1"), "top1"),
            "prefill": _num(result.get("prefill_tokens_per_s"), "prefill"),
            "decode": _num(result.get("decode_tokens_per_s"), "decode")}


COLUMNS = ("variant", "size (MB)", "bits per weight", "perplexity", "KL vs base", "top-1 vs base",
           "prefill tokens/s", "decode tokens/s")


def markdown_table(rows: list[tuple[str, dict]]) -> str:
    """The comparison table (card, demo, README): one row per (name, evaluation result)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, result in rows:
        r = table_row(name, result)
        lines.append("| " + " | ".join(r[k] for k in ("name", *ROUND)) + " |")
    return "\n".join(lines)


def _tags(cfg: dict) -> list[str]:
    method = cfg.get("method", "float")
    width = f"{cfg['bits']}-bit" if cfg.get("bits") else (cfg.get("quant_type") or "").lower()
    return [t for t in ("hfq", "quantized", f"hfq-{method}", width) if t]


def make_card(info: dict | str | Path, *, command: str, base_model: str | None = None, base_name: str | None = None,
              license: str | None = None, repo_id: str | None = None, results: dict | None = None,
              rows: list[tuple[str, dict]] = (), calibration: str | None = None, note: str | None = None) -> ModelCard:
    """The card of a quantized folder described by hfq.checkpoint.describe().

    base_model: the base's Hub id for the front matter (None for a local base); base_name: how the body names
    it. results: this variant's evaluation; rows: (name, result) for the base and sibling variants, in table
    order. calibration: a description of the calibration text (None: the method needs none). info may also be
    the folder itself."""
    if not isinstance(info, dict):
        info = describe(info)
    folder = Path(info["path"])
    cfg = info.get("config") or {}
    base_name = base_name or base_model or "a model"
    data = ModelCardData(base_model=base_model, base_model_relation="quantized", library_name="transformers",
                         pipeline_tag="text-generation", license=license, tags=_tags(cfg))
    files = [(_code(n), sha256_file(folder / n)) for n in sorted(p.name for p in folder.iterdir())
             if n != "README.md" and not n.startswith(".") and (folder / n).is_file()]
    first = results or (rows[0][1] if rows else {})
    c = {
        "title": _text(f"{str(base_name).rstrip('/').split('/')[-1]} ({info['method']})"),
        "base_name": _text(base_name), "method": _text(info["method"]),
        "layers_quantized": info["layers_quantized"],
        "quantized_bpw": f"{info['quantized_bpw']:.3f}" if info["quantized_bpw"] else "n/a",
        "model_bpw": f"{info['model_bpw']:.3f}", "weight_mb": f"{info['weight_bytes'] / 1e6:.1f}",
        "table": markdown_table(list(rows)) if rows else "",
        "eval_text": _text(first.get("text", "")), "scored_tokens": first.get("scored_tokens"),
        "n_chunks": first.get("chunks"), "n_ctx": first.get("n_ctx"), "machine": _text(first.get("machine", "CPU")),
        "modules": [{"name": _text(k), "weights": f"{v['weights']:,}", "bpw": _num(v["bpw"], "bpw")}
                    for k, v in (info.get("modules") or {}).items()],
        "embeddings": [{"name": _text(n), "type": _text(e.get("type") or "?"),
                        "stored": f"tied to `{_code(e['tied_to'])}`, stored once" if "tied_to" in e
                        else f"{e.get('bytes', 0) / 1e6:.2f} MB, {_num(e.get('bpw'), 'bpw')} bits per weight"}
                       for n, e in (info.get("embeddings") or {}).items()],
        "repo_literal": _code(json.dumps(repo_id or str(folder))), "command": _code_lines(command),
        "calibration": _text(calibration) if calibration else NO_CALIBRATION, "note": _text(note) if note else "",
        "config_json": _code(json.dumps(cfg, sort_keys=True)), "hfq_version": __version__, "files": files,
    }
    template = (resource_dir("model_cards") / "quantized.md.j2").read_text(encoding="utf-8")
    return ModelCard.from_template(data, template_str=template, c=c)


def make_gguf_card(folder: str | Path, files: list[tuple[str, dict]], *, command: str, base_model: str | None = None,
                   base_name: str | None = None, license: str | None = None, repo_id: str | None = None,
                   rows: list[tuple[str, dict]] = (), calibration: str | None = None,
                   note: str | None = None) -> ModelCard:
    """The card of a {repo}-GGUF folder. files: (file name, hfq.checkpoint.describe_gguf dict) per GGUF type."""
    folder = Path(folder)
    base_name = base_name or base_model or "a model"
    types = [Path(n).stem.rsplit("-", 1)[-1] for n, _ in files]
    data = ModelCardData(base_model=base_model, base_model_relation="quantized", library_name="gguf",
                         pipeline_tag="text-generation", license=license,
                         tags=["hfq", "quantized", "gguf", *[t.lower() for t in types]])
    first = rows[-1][1] if rows else {}
    repo = repo_id or folder.name
    c = {
        "title": _text(f"{str(base_name).rstrip('/').split('/')[-1]} GGUF"), "base_name": _text(base_name),
        "gguf": [{"name": _code(n), "type": _text(t), "size_mb": _num(d["bytes_on_disk"] / 1e6, "size_mb"),
                  "bpw": _num(d["model_bpw"], "bpw")} for (n, d), t in zip(files, types)],
        "table": markdown_table(list(rows)) if rows else "",
        "eval_text": _text(first.get("text", "")), "scored_tokens": first.get("scored_tokens"),
        "n_chunks": first.get("chunks"), "n_ctx": first.get("n_ctx"), "machine": _text(first.get("machine", "CPU")),
        "repo_literal": _code(json.dumps(repo)), "repo_plain": _code(repo).replace('"', ""),
        "first_file": _code(json.dumps(files[0][0])), "first_type": _code(types[0]),
        "command": _code_lines(command),
        "calibration": _text(calibration) if calibration else NO_CALIBRATION, "hfq_version": __version__,
        "note": _text(note) if note else "",
        "files": [(_code(p.name), sha256_file(p)) for p in sorted(folder.iterdir())
                  if p.is_file() and p.name != "README.md" and not p.name.startswith(".")],
    }
    template = (resource_dir("model_cards") / "gguf.md.j2").read_text(encoding="utf-8")
    return ModelCard.from_template(data, template_str=template, c=c)


def render_card(info: dict, base_model: str | None, command: str, repo_or_path: str, license: str | None = None,
                base_name: str | None = None) -> str:
    """The README.md text for a folder written by `hfq quantize` (no evaluation). base_model: a Hub id, or None
    for a local base (then base_name names it)."""
    return str(make_card(info, command=command, base_model=base_model, base_name=base_name, license=license,
                         repo_id=repo_or_path))
