"""Quantized embeddings on the embedded Gemma-3-270M: folder sizes against the GGUF files, and what the
embedding's storage costs in quality, all in one run against the float model.

Rows: hfq gguf-q4_k_m (llama.cpp's mix, the tied table in its token_embd type) against the shipped Q4_K_M file and
hfq's own export of it; nf4-dq with embeddings="float", "int8" and "Q6_K" (rows of 640 take llama.cpp's
fallback, Q8_0). Quality: perplexity, mean KL from the float model and top-1 on the default held-out text
(docs/evaluation.md), 4 windows of 512 tokens.

    python benchmarks/embeddings.py [--chunks 4] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from hfq.embedded import gguf_path, local_model
from hfq.evaluation import chunks, default_text, score, size
from hfq.nn import HfqEmbedding

ROWS = {
    "gguf-q4_k_m": dict(method="gguf", quant_type="Q4_K_M"),
    "nf4-dq (float embeddings)": dict(method="nf4", double_quant=True, embeddings="float"),
    "nf4-dq (int8 embeddings)": dict(method="nf4", double_quant=True, embeddings="int8"),
    "nf4-dq (Q6_K embeddings)": dict(method="nf4", double_quant=True, embeddings="Q6_K"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    base = local_model()
    tok = AutoTokenizer.from_pretrained(base)
    windows = chunks(tok, default_text()[0], 512, args.chunks)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    shipped = gguf_path()
    rows = {"llama.cpp Q4_K_M file (shipped)": {"bytes": shipped.stat().st_size}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in ROWS.items():
            model = AutoModelForCausalLM.from_pretrained(base, quantization_config=hfq.HfqConfig(**kw),
                                                         dtype=torch.float32).eval()
            out = Path(tmp) / name.split()[0]
            model.save_pretrained(out)
            emb = model.get_input_embeddings()
            r = {"bytes": size(out)["bytes"], "embedding": getattr(emb, "ggml_type", None)
                 or ("int8" if isinstance(emb, HfqEmbedding) else "float")}
            with torch.no_grad():
                r.update(score(model, windows, base=ref, progress=False))
            if name == "gguf-q4_k_m":
                path = hfq.export_gguf(model, tok, Path(tmp) / "hfq-q4_k_m.gguf", progress=False)[0]
                rows["hfq export of gguf-q4_k_m (.gguf)"] = {"bytes": path.stat().st_size}
            rows[name] = r
            del model
    gguf_bytes = rows["llama.cpp Q4_K_M file (shipped)"]["bytes"]
    print(f"{'row':36} {'MB':>8} {'vs Q4_K_M file':>14} {'embedding':>10} {'ppl':>8} {'KL':>8} {'top-1':>6}")
    for name, r in rows.items():
        q = (f"{r['ppl']:8.3f} {r['kl']:8.4f} {r['top1']:6.3f}" if "ppl" in r else "")
        print(f"{name:36} {r['bytes'] / 1e6:8.1f} {r['bytes'] / gguf_bytes:13.3f}x {r.get('embedding', ''):>10} {q}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
