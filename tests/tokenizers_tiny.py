"""Small real tokenizers trained in-process with the `tokenizers` library, in the three styles GGUF export
handles: SentencePiece-style byte-fallback BPE (llama, mistral), Gemma's space-split BPE, and byte-level BPE with
Qwen2's split regex. Trained on CPython's pydoc topics, so nothing is downloaded."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from hfq.evaluation import pydoc_halves

SPACE = "\u2581"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    text = pydoc_halves()[0][:200_000]
    return [line for line in text.splitlines() if line.strip()]


def _byte_fallback_bpe(n_vocab: int, specials: list[str], normalizer, pre) -> Tokenizer:
    """Train a BPE, then rebuild it with specials and the 256 <0xXX> byte pieces first, as SentencePiece does."""
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    t = Tokenizer(models.BPE())
    t.normalizer, t.pre_tokenizer = normalizer, pre
    t.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=n_vocab - len(specials) - 256,
                                                         show_progress=False, limit_alphabet=200))
    learned = sorted(t.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {tok: i for i, tok in enumerate(specials + bytes_)}
    for tok, _ in learned:
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in __import__("json").loads(t.to_str())["model"]["merges"]]
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=specials[0] if
                               specials[0] == "<unk>" else "<unk>", fuse_unk=True))
    out.normalizer, out.pre_tokenizer = normalizer, pre
    return out


def spm_style(n_vocab: int = 512):
    """Llama-2-style tokenizer.json: prepend and escape spaces, no pre-tokenizer, byte fallback."""
    from transformers import PreTrainedTokenizerFast

    t = _byte_fallback_bpe(n_vocab, ["<unk>", "<s>", "</s>"],
                           normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]), None)
    t.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True)


def gemma_style(n_vocab: int = 512):
    """Gemma-3's tokenizer.json structure: split on spaces (merged with the previous piece), escape spaces."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    t = _byte_fallback_bpe(n_vocab, specials, normalizers.Replace(" ", SPACE),
                           pre_tokenizers.Split(" ", behavior="merged_with_previous"))
    t.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                     special_tokens=[("<bos>", 2)])
    t.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", add_bos_token=True)


def byte_level(n_vocab: int = 512):
    """Qwen2-style byte-level BPE with Qwen2's split regex and ChatML specials."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=n_vocab, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                                 "{{ m['content'] }}<|im_end|>\n{% endfor %}")
