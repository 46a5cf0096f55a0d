"""Naive references written from the format definitions, one element at a time. Slow on purpose: they are
the oracle for the vectorized code, so they share none of it."""

import numpy as np
import torch

f32 = np.float32


def naive_rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool):
    """Per-element RTN: returns (codes [out][in] ints, scales [out][G] floats, zeros [out][G] ints, deq [out][in])."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    maxq = 2**bits - 1
    rows = w.tolist()
    codes, scales, zeros, deq = [], [], [], []
    for row in rows:
        cr, sr, zr, dr = [], [], [], []
        for start in range(0, in_f, g):
            grp = row[start : start + g]
            # arithmetic in float32, as the spec says
            if sym:
                amax = max(abs(f32(v)) for v in grp)
                scale = f32(2) * amax / f32(maxq)
            else:
                lo, hi = min(f32(min(grp)), f32(0)), max(f32(max(grp)), f32(0))
                scale = (hi - lo) / f32(maxq)
            # the stored scale is float16; quantize against exactly that value
            scale = f32(np.float16(min(scale, f32(65504.0))))
            if scale == 0:
                scale = f32(1.0)
            if sym:
                zero = 2 ** (bits - 1)
            else:
                zero = min(max(round(float(-lo / scale)), 0), maxq)
            for v in grp:
                q = min(max(round(float(f32(v) / scale)) + zero, 0), maxq)
                cr.append(q)
                dr.append(float(scale) * (q - zero))
            sr.append(float(scale))
            zr.append(zero)
        codes.append(cr)
        scales.append(sr)
        zeros.append(zr)
        deq.append(dr)
    return codes, scales, zeros, deq


def naive_unpack_bitstream(row_words: list[int], bits: int, n: int, word_bits: int = 8) -> list[int]:
    """Value i is bits [i*b, (i+1)*b) of the concatenated words (bytes by default; signed ints are read as their
    word_bits-bit two's complement), bit 0 = LSB of word 0."""
    mask = (1 << word_bits) - 1
    out = []
    for i in range(n):
        v = 0
        for b in range(bits):
            pos = i * bits + b
            v |= (((row_words[pos // word_bits] & mask) >> (pos % word_bits)) & 1) << b
        out.append(v)
    return out


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.double(), approx.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


# Original prose written for this test (public domain), so nothing is downloaded.
PARAGRAPH = (
    "The harbour town woke slowly on winter mornings. Fishermen carried their nets down the stone steps while the "
    "baker opened his shutters and set the first loaves on the window ledge. Children ran along the sea wall on "
    "their way to school, and the old ferry sounded its horn as it left for the island across the bay. By noon the "
    "market square was full of voices: farmers selling apples and cheese, a teacher arguing about the price of "
    "potatoes, and tourists asking for directions to the lighthouse. In the evening the wind turned cold, the lamps "
    "were lit one by one, and the smell of wood smoke drifted over the rooftops as families gathered for supper."
)


WORDS = "a b c d e f x y z 1 2 3 4 5 6 7 8 9".split()


def save_tiny_word_base(d, card: str):
    """A tiny untied llama with a word-level tokenizer over WORDS (plus [UNK], <bos>) and the base card `card`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
                                 tie_word_embeddings=False)).eval().save_pretrained(d)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<bos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="[UNK]").save_pretrained(d)
    (d / "README.md").write_text(card)
    return d


# hfq's CPU kernels round activations to int16 per 64 columns (at most 2^-16 of each chunk's largest value, see the
# README's kernel section), and prompts longer than 16 tokens run bfloat16 tiles. Through the few layers of the tiny
# test models that stays below 3e-4 of the largest logit for short prompts; a wrong layout or scale is off by more
# than 1e-2. Tests comparing an hfq model with another implementation of the same weights allow this much.
KERNEL_LOGIT_TOL = 1e-3
# Prompts of more than 16 rows run bfloat16 tiles (float32 accumulation): each weight and activation is rounded to
# 8 significant bits, and a sum of K such products carries about 2^-9 * sqrt(K) of its terms' size. On the tiny
# random test models that measured up to 1.4e-2 of the largest logit.
PREFILL_LOGIT_TOL = 3e-2


def assert_logits_close(a: torch.Tensor, b: torch.Tensor, tol: float = KERNEL_LOGIT_TOL, atol: float = 0.0):
    """max |a - b| <= tol * max |b| + atol."""
    a, b = a.float(), b.float()
    worst = (a - b).abs().max().item()
    assert worst <= tol * b.abs().max().item() + atol, f"max diff {worst:.3g}, largest logit {b.abs().max().item():.3g}"
