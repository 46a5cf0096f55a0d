"""hfq.evaluation.score on GGUF files equals llama.cpp's llama-perplexity (--kl-divergence) within 1%.

llama-perplexity comes from the llama-cpp-python sdist (.ci/llama_tools.sh; HFQ_LLAMA_PERPLEXITY). The base is the
1 GB F32 GGUF of Gemma-3-270M (the gemma_f32_gguf fixture). llama-perplexity runs with -fa off: llama-cpp-python's
default, and flash attention alone moves the quantized file's numbers by about 1%.
"""

import re
import subprocess

import pytest

from hfq.algorithms.calibration import token_windows
from hfq.evaluation import default_text, score
from hfq.embedded import gguf_path

pytestmark = pytest.mark.slow


def test_score_equals_llama_perplexity(tmp_path, gemma_f32_gguf, llama_perplexity_bin):
    from ggml_oracle import llama_tokenize

    base = gemma_f32_gguf
    quant = gguf_path()
    text = default_text()[0][:40000]
    (tmp_path / "eval.txt").write_text(text)
    common = ["-f", str(tmp_path / "eval.txt"), "-c", "512", "-b", "512", "--chunks", "2", "-t", "2",
              "--no-repack", "-fa", "off", "--kl-divergence-base", str(tmp_path / "base.kld")]
    subprocess.run([llama_perplexity_bin, "-m", str(base)] + common, check=True, capture_output=True)
    out = subprocess.run([llama_perplexity_bin, "-m", str(quant)] + common + ["--kl-divergence"], check=True,
                         capture_output=True, text=True)
    log = out.stdout + out.stderr
    ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log).group(1))
    kld = float(re.search(r"Mean\s+KLD:\s*([\d.]+)", log).group(1))
    same = float(re.search(r"Same top p:\s*([\d.]+)", log).group(1)) / 100

    ids, bos = llama_tokenize(base, text)
    r = score(str(quant), token_windows(ids, 512, bos)[:2], base=str(base), threads=2, progress=False)
    print(f"hfq: ppl {r['ppl']:.4f} KL {r['kl']:.6f} top-1 {r['top1']:.4f}; "
          f"llama-perplexity: ppl {ppl:.4f} KL {kld:.6f} top-1 {same:.4f}")
    assert r["ppl"] == pytest.approx(ppl, rel=0.01)
    assert r["kl"] == pytest.approx(kld, rel=0.01)
    assert r["top1"] == pytest.approx(same, rel=0.01)
