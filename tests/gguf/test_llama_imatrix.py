"""hfq's importance equals llama-imatrix's on the same token windows of Gemma-3-270M.

llama-imatrix comes from the llama-cpp-python sdist (.ci/llama_tools.sh; HFQ_LLAMA_IMATRIX). The test reads the 1 GB
F32 GGUF of the embedded model (the gemma_f32_gguf fixture).
"""

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hfq.algorithms.calibration import collect_importance, token_windows
from hfq.gguf.names import gguf_name

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))


def test_importance_matches_llama_imatrix(gemma_dir, gemma_f32_gguf, tmp_path, llama_imatrix_bin):
    from _gemma_gguf import texts
    from ggml_oracle import llama_tokenize

    src = gemma_f32_gguf
    text = texts()[0][:20000]
    (tmp_path / "calib.txt").write_text(text)
    ctx, chunks = 256, 3
    out = tmp_path / "imatrix.gguf"
    subprocess.run([llama_imatrix_bin, "-m", str(src), "-f", str(tmp_path / "calib.txt"), "-o", str(out), "-c", str(ctx),
                    "--chunks", str(chunks), "-t", "2", "--no-repack", "-b", str(ctx), "-ub", str(ctx)],
                   check=True, capture_output=True)
    ref = {t.name: np.array(t.data, dtype=np.float64).reshape(-1) for t in gguf.GGUFReader(str(out)).tensors}

    # the same token stream llama-imatrix uses: llama.cpp's tokenizer with BOS, windows with BOS first
    ids, bos = llama_tokenize(src, text)
    windows = token_windows(ids, ctx, bos)[:chunks]

    hf = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    imp = collect_importance(hf, windows)
    # Same tokens, two float32 implementations of Gemma (llama.cpp's kernels vs torch): the vectors agree to
    # float tolerance, not bit for bit. Measured: median relative difference about 1e-4, worst element 0.2%.
    rels = []
    for name, vec in imp.items():
        g = gguf_name(name, "gemma3_text", 18, tied=True)
        if g is None or not g.startswith("blk."):
            continue
        want = ref[g + ".in_sum2"] / ref[g + ".counts"][0]
        assert ref[g + ".counts"][0] == ctx * chunks
        np.testing.assert_allclose(vec.double().numpy(), want, rtol=1e-2, atol=1e-6, err_msg=name)
        rels.append(np.abs(vec.double().numpy() - want) / np.maximum(np.abs(want), 1e-6))
    rel = np.concatenate(rels)
    print(f"importance vs llama-imatrix: {len(rels)} layers, median rel diff {np.median(rel):.2e}, "
          f"99.9th pct {np.quantile(rel, 0.999):.2e}, max {rel.max():.2e}")
    assert len(rels) == 18 * 7
    assert np.median(rel) < 1e-3 and np.quantile(rel, 0.999) < 3e-3
