"""The one registry of the model architectures hfq knows, by transformers `model_type`, and what each supports.

- mixes: llama.cpp's per-tensor type rules (hfq.gguf.mixes) are defined for it, so method="gguf" with an _S/_M/_L
  file type and GPTQ/AWQ into k-quants work;
- gguf_arch: gguf-py's MODEL_ARCH name, which names its GGUF tensors (hfq.gguf.names);
- export: hfq.export_gguf writes it (checked against llama.cpp's converter);
- awq: the decoder block's norms as AWQ folds scales into them (None: AWQ is refused).

Every supported architecture is a dense decoder with q/k/v/o and gate/up/down projections under
model.layers.N; the other capabilities differ because each was checked against its own oracle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AwqNorms:
    mlp_norm: str                   # the norm whose output feeds gate_proj and up_proj
    norm_offset: float              # the RMSNorm multiplies by (norm_offset + weight)
    # Norms applied to the attention and MLP outputs (Gemma 3): they normalize each token, so AWQ's clip weighs
    # each token's error as the norm does; its scale search scores the raw output (awq_block's post_norm).
    post_norms: tuple[str, str] | None = None


@dataclass(frozen=True)
class Architecture:
    model_type: str
    gguf_arch: str
    mixes: bool = True
    export: bool = False
    awq: AwqNorms | None = None
    rotary_permute: bool = False    # the converter permutes q/k rows into llama.cpp's rotary order
    spm_vocab: bool = False         # a SentencePiece-style tokenizer.json becomes llama.cpp's "llama" vocab
    norm_plus_one: bool = False     # Gemma's RMSNorm scales by (1 + weight); GGUF stores 1 + weight


_PLAIN = AwqNorms("post_attention_layernorm", 0.0)
_GEMMA3 = AwqNorms("pre_feedforward_layernorm", 1.0, ("post_attention_layernorm", "post_feedforward_layernorm"))

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", "LLAMA", export=True, awq=_PLAIN, rotary_permute=True, spm_vocab=True),
    Architecture("mistral", "LLAMA", export=True, awq=_PLAIN, rotary_permute=True, spm_vocab=True),
    Architecture("qwen2", "QWEN2", export=True, awq=_PLAIN),
    Architecture("qwen3", "QWEN3", export=True, awq=_PLAIN),
    Architecture("gemma", "GEMMA"),
    Architecture("gemma2", "GEMMA2"),
    Architecture("gemma3", "GEMMA3", export=True, awq=_GEMMA3, norm_plus_one=True),
    Architecture("gemma3_text", "GEMMA3", export=True, awq=_GEMMA3, norm_plus_one=True),
)}

MIXES = tuple(k for k, a in ARCHITECTURES.items() if a.mixes)
GGUF_EXPORT = tuple(k for k, a in ARCHITECTURES.items() if a.export)
AWQ = tuple(sorted(k for k, a in ARCHITECTURES.items() if a.awq))


def architecture(model_type: str | None) -> Architecture | None:
    return ARCHITECTURES.get(model_type)
