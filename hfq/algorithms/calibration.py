"""Importance from calibration text: the mean squared input activation of every linear layer, per column.

This is what llama.cpp's llama-imatrix collects (sum of x^2 over tokens divided by the token count) and what
its weighted quantizers read. Collect it on the float model, save it, then quantize with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_file

logger = logging.getLogger(__name__)


def token_windows(input_ids: torch.Tensor, ctx: int, bos_id: int | None = None) -> list[torch.Tensor]:
    """Split one long token sequence into full windows of ctx tokens (the tail is dropped), as llama-imatrix
    does; with bos_id the first token of every window is replaced by BOS."""
    ids = input_ids.reshape(-1)
    n = ids.numel() // ctx
    if n == 0:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than one window of ctx={ctx}; "
                         "give more text or a smaller ctx.")
    out = []
    for i in range(n):
        w = ids[i * ctx:(i + 1) * ctx].clone()
        if bos_id is not None:
            w[0] = bos_id
        out.append(w.unsqueeze(0))
    return out


@torch.no_grad()
def collect_importance(model: nn.Module, windows: list[torch.Tensor],
                       modules: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Run the model on each window and return {linear name: mean x^2 per input column} (float32)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (modules is None or name in modules):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    if not hooks:
        raise ValueError("the model has no nn.Linear layer to collect importance for (is it already quantized?).")
    device = next(model.parameters()).device
    try:
        for w in tqdm(windows, desc="importance", unit="window", disable=len(windows) < 2):
            model(input_ids=w.to(device))
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k] / counts[k]).float().cpu() for k in sums}


def save_importance(importance: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write importance vectors as safetensors, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous().float() for k, v in importance.items()}, str(tmp),
                  metadata={"format": "hfq-importance", "statistic": "mean_sq_activation"})
    return path


def load_importance(source) -> dict[str, torch.Tensor]:
    """A dict as given, or the vectors in a safetensors file written by save_importance."""
    if isinstance(source, dict):
        # explicit device: transformers builds the model under a meta-device context
        return {k: torch.as_tensor(v, device="cpu").float().reshape(-1) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"importance file {str(path)!r} does not exist; make one with `hfq importance` or "
                         "hfq.algorithms.calibration.save_importance.")
    try:
        data = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"importance file {str(path)!r} is not a readable safetensors file ({e}).") from e
    bad = [k for k, v in data.items() if not torch.isfinite(v).all() or (v < 0).any()]
    if bad:
        raise ValueError(f"importance file {str(path)!r} has negative or non-finite values for {bad[:3]}.")
    return data


# Calibration windows for GPTQ/AWQ -----------------------------------------------------------------------------

DEFAULT_DATASET = ("hfq built-in: CPython pydoc_data.topics, first half of the topics (Python Software Foundation "
                   "License); held-out evaluation uses the second half")


def _default_texts() -> list[str]:
    from pydoc_data.topics import topics

    names = sorted(topics)   # the same split as hfq.evaluation.pydoc_halves (first half)
    return ["\n\n".join(topics[n] for n in names[: len(names) // 2])]


JSONL_FORM = 'each line of a .jsonl file must be one JSON object with a "text" string, such as {"text": "..."}'


def decode_text(raw: bytes, source: str) -> str:
    """raw as UTF-8 text; a file that is not (or holds NUL bytes: binary) is one error naming it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); pass a UTF-8 text "
                         "file (convert it with iconv, or decode it yourself).") from None
    if "\x00" in text:
        raise ValueError(f"{source} holds NUL bytes (byte {raw.index(0)}), so it is binary, not text; pass a UTF-8 "
                         "text file.")
    return text


def read_dataset_file(path: str | os.PathLike, source: str | None = None) -> tuple[list[str], str]:
    """(texts, description) of a calibration .txt or .jsonl file, or one ValueError naming `source` (the file,
    or the CLI flag and file) for each fault. `hfq quantize --dataset` runs this before it loads a model."""
    path = Path(path)
    source = source or f"calibration dataset {path}"
    if not path.is_file():
        raise ValueError(f"{source}: no such file; pass an existing .txt or .jsonl file, a list of strings, or a "
                         "datasets.Dataset.")
    kind = path.suffix.lower()
    if kind not in (".txt", ".jsonl"):
        raise ValueError(f"{source}: the name must end in .txt (plain text) or .jsonl (a \"text\" field a line); "
                         "rename or convert the file.")
    raw = path.read_bytes()
    text = decode_text(raw, source)
    digest = hashlib.sha256(raw).hexdigest()[:12]
    if kind == ".jsonl":
        items = jsonl_texts(text, source)
        return _nonempty(items, source), f"local .jsonl file (\"text\" field, {len(items)} records, sha256 {digest})"
    return _nonempty([text], source), f"local .txt file (sha256 {digest})"


def jsonl_texts(text: str, source: str) -> list[str]:
    """The "text" of every non-blank line of a .jsonl file; source names the file (and flag) in errors.

    The one parser for calibration .jsonl: `hfq quantize --dataset` checks a file with it before loading a model,
    and dataset_texts reads it with it, so both give the same error for the same line."""
    items = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} line {i} is not JSON ({e.msg} at column {e.colno}); {JSONL_FORM}: fix or "
                             "remove that line.") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            found = (f"keys {sorted(row)[:5]}" if isinstance(row, dict) and "text" not in row else
                     f'"text" is {type(row["text"]).__name__}' if isinstance(row, dict) else
                     f"a JSON {type(row).__name__}")
            raise ValueError(f'{source} line {i} has no "text" string ({found}); {JSONL_FORM}: fix or remove '
                             "that line.")
        items.append(row["text"])
    return items


def dataset_texts(dataset) -> tuple[list, str]:
    """(items, description) for a calibration source. Items are strings or 1-D token-id sequences.

    dataset: None (the built-in default), a list of strings or of token-id lists/tensors, a local .txt file
    (the whole file), a local .jsonl file (one JSON object per line with a "text" field), or a local
    `datasets.Dataset` with a "text" column. The description never holds texts or local paths."""
    if dataset is None:
        logger.info("calibration: no dataset given; using the built-in default (%s)", DEFAULT_DATASET)
        return _default_texts(), DEFAULT_DATASET
    if isinstance(dataset, (str, os.PathLike)):
        return read_dataset_file(dataset)
    if hasattr(dataset, "column_names") and hasattr(dataset, "__getitem__"):   # a datasets.Dataset, duck-typed
        if "text" not in dataset.column_names:
            raise ValueError(f"the datasets.Dataset has columns {dataset.column_names}; it needs a \"text\" column.")
        info = getattr(dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "unnamed"
        split = getattr(dataset, "split", None)
        return (_nonempty(list(dataset["text"])),
                f"datasets.Dataset {name}{f' split {split}' if split else ''} ({len(dataset)} rows)")
    if isinstance(dataset, (list, tuple)):
        items = list(dataset)
        if items and all(isinstance(x, str) for x in items):
            return _nonempty(items), f"{len(items)} texts given in Python"
        if items and all(isinstance(x, (list, tuple, torch.Tensor)) for x in items):
            return items, f"{len(items)} token sequences given in Python"
        if not items:
            _nonempty(items)
    raise ValueError(f"dataset of type {type(dataset).__name__} is not a calibration source; pass a list of "
                     "strings, a .txt/.jsonl path, or a datasets.Dataset.")


def _nonempty(texts: list[str], source: str = "the calibration dataset") -> list[str]:
    if not any(t.strip() for t in texts):
        raise ValueError(f"{source} is empty (no non-blank text); give at least a few thousand "
                         "tokens of text like the model's use, or leave the dataset out (no --dataset, dataset=None) "
                         "for the built-in default.")
    return texts


MAX_WINDOWS = 128          # windows drawn when the data holds more (gptqmodel's and AutoGPTQ's usual count)
WINDOW = 512               # tokens per window unless seq_len is given
MIN_TOKENS = 256           # below this there is too little text to estimate a layer's input statistics


def plan_windows(n_tokens: int, n_samples: int | None, seq_len: int | None) -> tuple[int, int]:
    """(windows, tokens per window) for a stream of n_tokens calibration tokens.

    Unset n_samples: all of the data, cut into at most MAX_WINDOWS windows. With seq_len unset too the windows
    shrink below WINDOW so that no tail is dropped (1,800 tokens: 4 windows of 450). Explicit values are honoured
    exactly (even below MIN_TOKENS), and asking for more than the data holds is an error."""
    length = seq_len or WINDOW
    if n_samples is None:
        if n_tokens < MIN_TOKENS:
            raise ValueError(f"the calibration data has {n_tokens} tokens; GPTQ/AWQ need at least {MIN_TOKENS} "
                             "(a few paragraphs). Give more text, or leave dataset out for the built-in default.")
        if seq_len is None:
            n = min(MAX_WINDOWS, -(-n_tokens // length))
            return n, min(length, n_tokens // n)
        n = min(MAX_WINDOWS, n_tokens // length)
        if n == 0:
            raise ValueError(f"the calibration data has {n_tokens} tokens, fewer than one window of "
                             f"seq_len={seq_len}; give more text, or lower seq_len (or leave it unset).")
        return n, length
    if n_samples * length > n_tokens:
        raise ValueError(f"the calibration data has {n_tokens} tokens: {n_tokens // length} windows of "
                         f"seq_len={length}, but n_samples={n_samples} were asked. Give more text, or lower "
                         f"n_samples or seq_len, or leave n_samples unset to use all of the data.")
    return n_samples, length


def calibration_windows(items: list, n_samples: int | None, seq_len: int | None, seed: int,
                        tokenizer=None, bos_id: int | None = None) -> list[torch.Tensor]:
    """Windows [1, length] drawn without overlap from the token stream of `items`, chosen by `seed`; how many
    and how long: plan_windows.

    A list of strings is one stream (joined by blank lines) cut into windows, as llama-imatrix cuts a file, so
    short paragraphs fill windows instead of each being a padded sample. Token sequences are concatenated. The
    first token of every window is BOS when the tokenizer has one, as in llama.cpp's calibration and evaluation."""
    if (n_samples is not None and n_samples < 1) or (seq_len is not None and seq_len < 2):
        raise ValueError(f"n_samples={n_samples} and seq_len={seq_len} must be at least 1 and 2.")
    if isinstance(items[0], str):
        if tokenizer is None:
            raise ValueError("calibration texts need a tokenizer; the model folder has none. Pass token ids.")
        ids = tokenizer("\n\n".join(items), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        bos_id = getattr(tokenizer, "bos_token_id", None) if bos_id is None else bos_id
    else:
        ids = torch.cat([torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in items])
    n, length = plan_windows(ids.numel(), n_samples, seq_len)
    have = ids.numel() // length
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm(have, generator=g)[:n].sort().values
    windows = []
    for s in slots.tolist():
        w = ids[s * length:(s + 1) * length].clone()
        if bos_id is not None:
            w[0] = bos_id
        windows.append(w.unsqueeze(0))
    logger.info("calibration: %d tokens of data; using %d windows of %d tokens (%d tokens)", ids.numel(), n, length,
                n * length)
    return windows
