"""hfq's F32 export equals llama.cpp's own convert_hf_to_gguf.py output (keys, values, tokenizer arrays, tensor
names, shapes, F32 bytes), apart from provenance fields such as general.name.

The converter is the one in the llama-cpp-python sdist's llama.cpp tree (.ci/llama_tools.sh; HFQ_LLAMA_CPP_SRC)."""

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import hfq

# Names the converter's hash table gives the real tokenizers of these architectures.
PRE = {"qwen2": "qwen2", "qwen3": "qwen2", "gemma3": "granite-embed-multi-311m"}
PROVENANCE = ("general.name", "general.basename", "general.size_label", "general.license", "general.tags",
              "general.finetune", "general.base_model", "general.organization", "general.version")


def _read(path):
    r = gguf.GGUFReader(path)
    fields = {k: ([t.name for t in f.types], f.contents()) for k, f in r.fields.items()
              if not k.startswith("GGUF.") and not k.startswith(PROVENANCE)}
    tensors = {t.name: (t.tensor_type.name, [int(x) for x in t.shape], np.array(t.data).tobytes()) for t in r.tensors}
    return fields, tensors


def _compare(src_dir, tmp_path, llama_src, pre=""):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    theirs = tmp_path / "converter.gguf"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "convert_runner.py"), str(src_dir), str(theirs),
                    "f32", pre, llama_src], check=True, capture_output=True, timeout=900)
    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    ours = hfq.export_gguf(model, AutoTokenizer.from_pretrained(src_dir), tmp_path / "hfq.gguf", quant_type="F32",
                           progress=False)[0]
    (f1, t1), (f2, t2) = _read(theirs), _read(ours)
    assert "hfq.export_id" not in f1   # hfq's one addition: its export checksum (docs/safety.md)
    assert f2.pop("hfq.export_id")[0] == ["STRING"]
    assert f2.keys() == f1.keys()
    for k in f1:
        assert f2[k] == f1[k], k
    assert t2.keys() == t1.keys()
    for n in t1:
        assert t2[n][:2] == t1[n][:2], n
        assert t2[n][2] == t1[n][2], n
    return f1


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3"])
def test_tiny_models_match_the_converter(arch, export_dir, tmp_path, llama_cpp_src):
    _compare(export_dir(arch), tmp_path, llama_cpp_src, PRE.get(arch, ""))


@pytest.mark.slow
def test_gemma_3_270m_matches_the_converter(gemma_dir, tmp_path, llama_cpp_src):
    fields = _compare(gemma_dir, tmp_path, llama_cpp_src)       # the real tokenizer: no fallback name needed
    assert len(fields["tokenizer.ggml.tokens"][1]) == 262144
