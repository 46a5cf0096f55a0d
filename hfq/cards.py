"""Model cards from the templates in model_cards/. Every value from the model or the user is escaped:
front matter goes through huggingface_hub's YAML writer, body values through HTML escaping."""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

import jinja2
from huggingface_hub import ModelCardData

from ._version import __version__
from ._resources import resource_dir


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_card(info: dict, base_model: str, command: str, repo_or_path: str, license: str | None = None) -> str:
    """The README.md text for a quantized folder described by hfq.checkpoint.describe()."""
    folder = Path(info["path"])
    cfg = info.get("config") or {}
    data = ModelCardData(
        base_model=base_model, base_model_relation="quantized", library_name="transformers",
        pipeline_tag="text-generation", license=license,
        tags=["hfq", f"hfq-{cfg.get('method', 'float')}", f"{cfg.get('bits', 16)}-bit"],
    )
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(resource_dir("model_cards")), autoescape=False,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    def e(v: str) -> str:  # Markdown text, where HTML is live and a newline could start a block
        return html.escape(" ".join(str(v).split()))

    def code(v: str) -> str:  # code blocks and spans: HTML is inert there, but a backtick or newline would end them
        return " ".join(str(v).split()).replace("`", "'")

    files = [(code(p.name), _sha256(p)) for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")]
    return env.get_template("quantized.md.j2").render(
        card_data=data.to_yaml(),
        title=e(f"{base_model.rstrip('/').split('/')[-1]} ({info['method']})"),
        base_model=e(base_model), method=e(info["method"]), layers_quantized=info["layers_quantized"],
        quantized_bpw=f"{info['quantized_bpw']:.3f}" if info["quantized_bpw"] else "n/a",
        model_bpw=f"{info['model_bpw']:.3f}", weight_mb=f"{info['weight_bytes'] / 1e6:.1f}",
        repo_literal=code(json.dumps(repo_or_path)), command=code(command),
        config_json=code(json.dumps(cfg, sort_keys=True)), hfq_version=__version__, files=files,
    )
