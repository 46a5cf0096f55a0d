"""A transformers tokenizer -> GGUF tokenizer fields, chosen the way llama.cpp's convert_hf_to_gguf.py chooses them
for the supported architectures, so llama.cpp tokenizes as transformers does.

- llama/mistral with a SentencePiece-style byte-fallback BPE: llama.cpp's "llama" (SPM) tokenizer, with tokens,
  scores and types from gguf-py's LlamaHfVocab.
- Everything else (qwen2/qwen3 byte-level BPE, gemma3's tokenizer.json): llama.cpp's "gpt2" BPE tokenizer with
  merges and a pre-tokenizer name read from the tokenizer.json structure.
Special token ids, add_bos/add_eos and the chat template come from gguf-py's SpecialVocab.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf

from ..architectures import architecture

# Split regexes of the byte-level BPE pre-tokenizers llama.cpp implements, and the names its converter writes.
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
             r"\s+(?!\S)|\s+")
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTE_LEVEL_PRE = {_QWEN2_RE: "qwen2", _LLAMA3_RE: "llama-bpe"}
# Gemma's tokenizer.json (split on spaces, merged with the previous piece, spaces escaped as U+2581): llama.cpp's
# converter identifies it by hash as "granite-embed-multi-311m", which llama.cpp runs as its gemma4 pre-tokenizer.
_SPACE_SPLIT_PRE = "granite-embed-multi-311m"


def _looks_special(text: str) -> bool:
    """Added tokens llama.cpp treats as control tokens even when not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _is_spm_style(tj: dict) -> bool:
    m = tj.get("model") or {}
    return (m.get("type") == "BPE" and bool(m.get("byte_fallback"))
            and (tj.get("decoder") or {}).get("type") == "Sequence")


def _steps(node: dict | None) -> list[dict]:
    if not node:
        return []
    return list(node.get("pretokenizers") or node.get("normalizers") or []) if node.get("type") == "Sequence" \
        else [node]


def pre_tokenizer_name(tj: dict) -> str:
    """llama.cpp's tokenizer.ggml.pre for a BPE tokenizer.json, from its pre-tokenizer and normalizer."""
    pre = _steps(tj.get("pre_tokenizer"))
    norm = _steps(tj.get("normalizer"))
    splits = [p for p in pre if p.get("type") == "Split"]
    if any(p.get("type") == "ByteLevel" for p in pre):
        if not splits and all(p.get("use_regex", True) for p in pre if p.get("type") == "ByteLevel"):
            return "gpt2"
        regex = splits[0].get("pattern", {}).get("Regex") if len(splits) == 1 else None
        if regex in _BYTE_LEVEL_PRE:
            return _BYTE_LEVEL_PRE[regex]
    elif (len(splits) == 1 and splits[0].get("pattern") == {"String": " "}
          and splits[0].get("behavior") == "MergedWithPrevious"
          and any(n.get("type") == "Replace" and n.get("content") == "\u2581" for n in norm)):
        return _SPACE_SPLIT_PRE
    raise ValueError(
        f"this tokenizer's pre-tokenizer ({json.dumps(tj.get('pre_tokenizer'))[:200]}) is not one hfq maps onto "
        "llama.cpp's; supported: GPT-2 byte-level, Llama-3 and Qwen2 regex splits, Gemma's space split, and "
        "SentencePiece-style byte-fallback BPE for llama/mistral. Convert this model with llama.cpp's "
        "convert_hf_to_gguf.py instead."
    )


def _bpe_tokens(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and types for llama.cpp's gpt2 tokenizer, padded to the model's vocabulary."""
    T = gguf.TokenType
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if reverse and max(reverse) >= n_vocab:
        raise ValueError(f"the tokenizer has ids up to {max(reverse)} but the model's vocab_size is {n_vocab}; "
                         "pass the tokenizer that belongs to this model.")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        tok = reverse[i]
        if tok in added:
            if not decoder[i].normalized:   # llama.cpp expects added tokens pre-normalized
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            if decoder[i].special or _looks_special(tok):
                types.append(T.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types.append(T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
        tokens.append(tok)
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, arch: str, n_vocab: int) -> int:
    """Write the tokenizer fields; returns the number of real (non-padding) entries, for embedding trimming."""
    if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"tokenizer={type(tokenizer).__name__} is not a transformers tokenizer; pass "
                         "AutoTokenizer.from_pretrained(<the model's folder>).")
    with tempfile.TemporaryDirectory(prefix="hfq-tok-") as d:
        tokenizer.save_pretrained(d)
        path = Path(d)
        if not (path / "tokenizer.json").is_file():
            raise ValueError("the tokenizer has no tokenizer.json (a slow tokenizer); load it with use_fast=True.")
        tj = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        tc = path / "tokenizer_config.json"
        tcfg = json.loads(tc.read_text(encoding="utf-8")) if tc.is_file() else {}
        n_real = len(tj["model"].get("vocab") or {}) + len(tj.get("added_tokens") or [])
        if getattr(architecture(arch), "spm_vocab", False) and _is_spm_style(tj):
            if tcfg.get("add_prefix_space") is not None:
                writer.add_add_space_prefix(tcfg["add_prefix_space"])
            vocab = gguf.LlamaHfVocab(path)
            tokens, scores, types = zip(*vocab.all_tokens()) if vocab.vocab_size else ((), (), ())
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(list(tokens))
            writer.add_token_scores(list(scores))
            writer.add_token_types(list(types))
            special = gguf.SpecialVocab(path, n_vocab=len(tokens))
        else:
            if (tj.get("model") or {}).get("type") != "BPE":
                raise ValueError(f"tokenizer model {tj.get('model', {}).get('type')!r} is not supported for GGUF "
                                 "export; supported: BPE (byte-level or SentencePiece-style byte fallback).")
            pre = pre_tokenizer_name(tj)
            tokens, types = _bpe_tokens(tokenizer, n_vocab)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            special = gguf.SpecialVocab(path, load_merges=True)
        special.add_to_gguf(writer, quiet=True)
    return n_real


# What llama.cpp 0.3.36 (the pinned llama-cpp-python) loads: any other tokenizer.ggml.model, or for a BPE vocabulary
# any other tokenizer.ggml.pre, fails the load ("unknown tokenizer" / "unknown pre-tokenizer type"), so check_gguf
# refuses it first. tests/gguf/test_check.py compares both sets with llama.cpp's source.
LLAMA_CPP_MODELS = frozenset("no_vocab none llama bert gpt2 hybriddna whitespace t5 rwkv test plamo2 gemma4".split())
LLAMA_CPP_PRE = frozenset("""
    a.x-4.0 afmoe bailingmoe bailingmoe2 bloom chameleon chatglm-bpe codeshell cohere2moe command-r dbrx
    deepseek-coder deepseek-llm deepseek-r1-qwen deepseek-v3 default exaone exaone-moe exaone4 f2llmv2 falcon
    falcon-h1 falcon3 gemma4 gigachat glm4 glm5 gpt-2 gpt-4o gpt3-finnish granite-docling
    granite-embed-multi-311m granite-embed-multi-97m grok-2 hunyuan hunyuan-dense hy_v4 jais jais-2 jina-de
    jina-es jina-v1-en jina-v2-code jina-v2-de jina-v2-es jina-v5-nano joyai-llm kanana2 kimi-k2 kormo laguna
    lfm2 llada-moe llama-bpe llama-v3 llama3 llama4 megrez mellum mellum2 midm-2.0 minerva-7b minicpm5
    minimax-m2 modern-bert mpt olmo phi-2 pixtral poro-chat qwen2 qwen35 refact roberta-bpe sarvam-moe
    seed-coder smaug-bpe smollm solar-open spark2_5 stablelm2 starcoder superbpe talkie tekken tiny_aya trillion
    ufakzeka viking whitespace youtu
""".split())
