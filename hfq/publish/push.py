"""Make named variants of a model, evaluate them against the base, write their cards, and push them.

Local layout of a push (or demo) folder `out/`:
    base.json                    the base model's evaluation
    {name}-{variant}/            one repo's content: weights, tokenizer, hfq_eval.json, README.md
    results.json                 every variant's evaluation, in order
A variant folder that already holds hfq_eval.json made with the same settings and text is reused, so running
the same command again after a failure only redoes what is missing (and uploads only what the Hub lacks)."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from pathlib import Path

from ..atomic import atomic_dir, write_json, write_text
from ..checkpoint import canonicalize_metadata, describe, describe_gguf
from ..embedded import resolve
from ..evaluation import chunks as token_chunks, default_text, load as _load, machine, measure, pydoc_halves, size
from ..integration import load_causal_lm, load_tokenizer
from . import variants as registry
from .cards import make_card, make_gguf_card
from .hub import PushError, push_timeout, upload_folder

logger = logging.getLogger(__name__)

# The Hub model the embedded GGUF was made from (GGUF general.name "Gemma 3 270m", general.license "gemma").
EMBEDDED_BASE = {"gemma-3-270m": ("google/gemma-3-270m", "gemma")}
EVAL_FILE = "hfq_eval.json"
EMBEDDED_NOTE = ("the embedded base's float weights are the dequantized values of a Q4_K_M GGUF, so a Q4_K variant of "
                 "it (Q4_K_M, Q4_K_S, gguf-q4_k_m) puts most weights back on their own grid: near-lossless by "
                 "construction, not evidence of quality.")


def quantize_command(base: str, settings: dict, out: str) -> str:
    """The `hfq quantize` command that makes the same weights as these HfqConfig settings."""
    flags = {"bits": "--bits", "group_size": "--group-size", "quant_type": "--quant-type",
             "damp_percent": "--damp-percent"}
    args = ["hfq", "quantize", base, "--method", settings["method"]]
    for k, flag in flags.items():
        if settings.get(k) is not None:
            args += [flag, str(settings[k])]
    if settings.get("sym") is not None:
        args.append("--sym" if settings["sym"] else "--asym")
    if settings.get("double_quant"):
        args.append("--double-quant")
    if settings.get("grid") not in (None, "int") and settings.get("quant_type") is None:
        args += ["--grid", settings["grid"]]
    if settings.get("desc_act"):
        args.append("--desc-act")
    if settings.get("act_group_aware"):
        args.append("--act-group-aware")
    elif (settings.get("act_group_aware") is False and settings["method"] == "gptq" and not settings.get("desc_act")
          and settings.get("quant_type") is None):
        args.append("--no-act-group-aware")   # on by default where the grid allows it
    if "dataset" in settings or settings.get("calibration"):
        if "dataset" in settings:   # the calibration text, saved as a file (the card says which text it is)
            args += ["--dataset", "calibration.txt"]
        for k in ("n_samples", "seq_len", "seed"):
            if settings.get(k) is not None:
                args += ["--" + k.replace("_", "-"), str(settings[k])]
    return " ".join(shlex.quote(a) for a in [*args, "--out", out])


def base_card_info(base: str) -> tuple[str | None, str | None, str]:
    """(Hub id for the card's base_model or None, the base card's license, a display name)."""
    marker = Path(base) / "hfq-embedded.json"   # the float folder hfq.embedded built for an embedded name
    if marker.exists() and Path(base).name in EMBEDDED_BASE:
        base = Path(base).name
    if base in EMBEDDED_BASE:
        hub_id, lic = EMBEDDED_BASE[base]
        return hub_id, lic, base
    from huggingface_hub import ModelCard

    local = Path(base)
    try:
        if local.exists():
            readme = local / "README.md"
            lic = ModelCard.load(readme).data.license if readme.exists() else None
            return None, lic, local.name
        return base, ModelCard.load(base).data.license, base
    except Exception as e:  # noqa: BLE001 (no card, offline, bad YAML: the license is then unknown)
        logger.info("hfq: no license from the base card of %s (%s)", base, type(e).__name__)
        return (None if local.exists() else base), None, local.name if local.exists() else base


def write_push_card(folder: str | Path, repo_id: str, base: str, cfg) -> None:
    """model.push_to_hub's card: replaces transformers' default card (or an earlier hfq card) in the folder
    about to be uploaded; a card the repo's owner wrote is kept."""
    from huggingface_hub import ModelCard

    canonicalize_metadata(folder)
    readme = Path(folder) / "README.md"
    if readme.exists():
        card = ModelCard.load(readme)
        if "hfq" not in (card.data.tags or []) and "automatically generated" not in card.text:
            logger.info("hfq: %s has its own model card; keeping it", repo_id)
            return
    base_id, lic, name = base_card_info(str(base))
    embedded = (Path(str(base)) / "hfq-embedded.json").exists()
    shown = Path(str(base)).name if embedded or not base_id else base_id   # never a local path in a public card
    card = make_card(describe(folder), command=quantize_command(shown, cfg.to_dict(), repo_id.split("/")[-1]),
                     base_model=base_id, base_name=name, license=lic, repo_id=repo_id)
    write_text(readme, str(card))


def _fingerprint(**kw) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data) -> None:
    write_json(path, data, indent=2, sort_keys=True)


def prepare(base: str, variant_names, out: str | Path, *, repo: str | None = None, text: str | None = None,
            ctx: int = 512, chunks: int | None = 4, progress: bool = True, command: str = "",
            calibration: tuple[str, str] | None = None, decode_tokens: int = 16,
            text_name: str | None = None) -> list[dict]:
    """Quantize, evaluate and card every variant into out/ (see the module doc). Returns one record per variant:
    {variant, folder, repo_id, result}. Reuses finished variant folders with the same fingerprint.
    decode_tokens: greedy tokens timed for decode speed (0 skips it)."""
    vs = registry.parse(variant_names)
    calibration = calibration or default_calibration()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (repo or Path(str(base)).name).rstrip("/").split("/")[-1]
    src = resolve(str(base))
    tok = load_tokenizer(src)
    source = f"Text from {text_name}" if text_name else "The given text"
    if text is None:
        text, source = default_text()
    key = dict(base=str(base), text=hashlib.sha256(text.encode()).hexdigest(), ctx=ctx, chunks=chunks,
               decode_tokens=decode_tokens)
    windows = token_chunks(tok, text, ctx, chunks)
    base_model = None
    base_json = out / "base.json"
    base_result = _read_json(base_json)
    if not base_result or base_result.get("fingerprint") != _fingerprint(**key):
        base_model = _load(src)
        base_result = {"model": str(base), "text": source, "fingerprint": _fingerprint(**key),
                       **measure(base_model, None, tok, windows, progress=progress, decode_tokens=decode_tokens),
                       "size": size(src)}
        _write_json(base_json, base_result)
    records = []
    for v in vs:
        folder = out / f"{stem}-{v.repo_suffix()}"
        fp = _fingerprint(**key, variant=v.name, settings=v.settings,
                          calibration=hashlib.sha256(calibration[0].encode()).hexdigest() if v.calibrated else None,
                          **({"scored_by": gguf_scorer()} if v.kind == "gguf" else {}))
        gguf_file = folder / f"{stem}-{v.name}.gguf" if v.kind == "gguf" else None
        stored = _read_json(folder / EVAL_FILE) or {}
        result = stored.get(v.name) if gguf_file else stored
        if not result or result.get("fingerprint") != fp or (gguf_file and not gguf_file.exists()):
            base_model = base_model if base_model is not None else _load(src)
            make = _make_gguf if gguf_file else _make_variant
            result = make(v, src, tok, base_model, windows, folder, source, fp, progress, calibration,
                          decode_tokens, str(base), gguf_file)
        else:
            logger.info("hfq: reusing %s in %s (same settings and text)", v.name, folder)
        repo_id = f"{repo}-{v.repo_suffix()}" if repo else None
        records.append({"variant": v.name, "kind": v.kind, "folder": str(folder), "repo_id": repo_id,
                        "result": result, **({"file": str(gguf_file)} if gguf_file else {})})
    base_id, lic, base_name = base_card_info(str(base))
    note = EMBEDDED_NOTE if str(base) in EMBEDDED_BASE and any("Q4_K" in v.name.upper() for v in vs) else None
    rows = [(f"{base_name} (float32)", base_result)] + [(r["variant"], r["result"]) for r in records]
    cards = {}
    for r, v in zip(records, vs):
        if v.kind == "gguf":
            continue
        cards[r["folder"]] = make_card(
            describe(r["folder"]), command=_reproduce(base, v, r, command), base_model=base_id, base_name=base_name,
            license=lic, repo_id=r["repo_id"] or r["folder"], results=r["result"], rows=rows,
            calibration=calibration[1] if v.calibrated else None, note=note)
    for folder in dict.fromkeys(r["folder"] for r in records if r["kind"] == "gguf"):
        mine = [r for r in records if r["folder"] == folder]
        lines = [f"hfq export-gguf {shlex.quote(str(base))} --type {r['variant']} --out {Path(r['file']).name}"
                 for r in mine] + ([f"# made and evaluated by: {command}"] if command else [])
        cards[folder] = make_gguf_card(folder, [(Path(r["file"]).name, describe_gguf(r["file"])) for r in mine],
                                       command="\n".join(lines), base_model=base_id, base_name=base_name,
                                       license=lic, repo_id=mine[0]["repo_id"], rows=rows, note=note)
    for folder, card in cards.items():
        write_text(Path(folder) / "README.md", str(card))
    _write_json(out / "results.json", {"base": base_result, "variants": records})
    return records


def _reproduce(base, v, record, command: str) -> str:
    lines = [quantize_command(str(base), v.settings, Path(record["folder"]).name)]
    if command:
        lines.append(f"# made and evaluated by: {command}")
    return "\n".join(lines)


def _make_variant(v, src, tok, base_model, windows, folder: Path, source: str, fp: str, progress,
                  calibration: tuple[str, str], decode_tokens: int, base_name: str, gguf_file=None) -> dict:
    logger.info("hfq: making %s", v.name)
    model = _load(src, v.config(calibration[0] if v.calibrated else None))
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        canonicalize_metadata(tmp)
        tok.save_pretrained(tmp)
        result = {"model": v.name, "variant": v.name, "text": source, "fingerprint": fp,
                  **measure(model, base_model, tok, windows, progress=progress, decode_tokens=decode_tokens),
                  "size": size(tmp)}
        _write_json(tmp / EVAL_FILE, result)
    return result


def _make_gguf(v, src, tok, base_model, windows, folder: Path, source: str, fp: str, progress,
               calibration: tuple[str, str], decode_tokens: int, base_name: str, gguf_file: Path) -> dict:
    """Export the float base to one GGUF file type (as `hfq export-gguf` does) and evaluate it in llama.cpp."""
    from ..gguf.export import export_gguf

    logger.info("hfq: making %s", gguf_file.name)
    folder.mkdir(parents=True, exist_ok=True)
    if gguf_file.exists():
        gguf_file.unlink()
    export_gguf(base_model, tok, gguf_file, quant_type=v.settings["quant_type"],
                name=Path(base_name.rstrip("/")).name, progress=progress)
    result = {"model": v.name, "variant": v.name, "text": source, "fingerprint": fp, "machine": machine(),
              "scored_by": gguf_scorer()}
    if result["scored_by"] == SCORED_BY_LLAMA_CPP:
        result.update(measure(str(gguf_file), base_model, tok, windows, progress=progress, decode_tokens=0))
    else:
        logger.warning("hfq: llama-cpp-python is not installed, so %s is scored by transformers' GGUF loader "
                       "(its weights dequantized to float32); `pip install llama-cpp-python` to score it in "
                       "llama.cpp.", gguf_file.name)
        model = _load_gguf_weights(gguf_file)
        result.update(measure(model, base_model, tok, windows, progress=progress, decode_tokens=0))
        del model
    result["size"] = size(gguf_file)
    stored = _read_json(folder / EVAL_FILE) or {}
    _write_json(folder / EVAL_FILE, {**stored, v.name: result})
    return result


SCORED_BY_LLAMA_CPP = "llama.cpp (llama-cpp-python)"
SCORED_BY_TRANSFORMERS = "transformers' GGUF loader (weights dequantized to float32; no llama-cpp-python)"


def gguf_scorer() -> str:
    """Who scores GGUF files here: llama.cpp when llama-cpp-python is installed, else transformers' loader."""
    import importlib.util

    return SCORED_BY_LLAMA_CPP if importlib.util.find_spec("llama_cpp") else SCORED_BY_TRANSFORMERS


def _load_gguf_weights(gguf_file: Path):
    return load_causal_lm(gguf_file.parent, gguf_file=gguf_file.name).eval()   # float32


def push_variants(base: str, variant_names, repo: str, *, out: str | Path | None = None, text: str | None = None,
                  ctx: int = 512, chunks: int | None = 4, private: bool = False, dry_run: bool = False,
                  command: str = "", resume_command: str | None = None, decode_tokens: int = 16,
                  text_name: str | None = None) -> list[dict]:
    """Make, evaluate and card each variant (prepare), then upload each repo folder as one commit holding only
    what the Hub lacks. Safetensors variants go to {repo}-{variant}, GGUF files together to {repo}-GGUF. Returns the records, each with
    "commit_url" (None when nothing changed or dry_run). On a failure raises PushError naming what to rerun."""
    if not repo or repo.count("/") > 1 or any(c.isspace() for c in repo):
        raise ValueError(f"repo={repo!r} must be 'name' or 'namespace/name'.")
    if not dry_run:
        push_timeout()   # a bad HFQ_PUSH_TIMEOUT fails before any variant is made
    out = Path(out) if out else Path(f"hfq-push-{repo.replace('/', '--')}")
    records = prepare(base, variant_names, out, repo=repo, text=text, ctx=ctx, chunks=chunks, command=command,
                      decode_tokens=decode_tokens, text_name=text_name)
    hint = f"Resume with: {resume_command}" if resume_command else (
        f"Resume by calling push_variants again with out={str(out)!r}; only what is missing is uploaded.")
    done: list[str] = []
    for r in records:
        r["commit_url"] = None
    for folder in dict.fromkeys(r["folder"] for r in records):
        if dry_run:
            break
        mine = [r for r in records if r["folder"] == folder]
        try:
            url = upload_folder(Path(folder), mine[0]["repo_id"], private=private, resume_hint=hint,
                                message=f"hfq: {', '.join(r['variant'] for r in mine)} of {base}")
        except PushError as e:
            raise PushError(f"{e} Already pushed: {', '.join(done) or 'none'}.") from e.__cause__
        done.append(mine[0]["repo_id"])
        for r in mine:
            r["commit_url"] = url
    return records


# Calibration text for variants that need it: the half of pydoc topics the default evaluation text leaves out.
def default_calibration() -> tuple[str, str]:
    return pydoc_halves()[0], "CPython pydoc_data.topics, first half of the topics (Python Software Foundation License)"


__all__ = ["push_variants", "prepare", "quantize_command", "default_calibration"]
