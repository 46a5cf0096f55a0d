"""check_gguf against llama.cpp itself: every damaged GGUF file (tests/gguf_corruption.py) that check_gguf passes
loads and runs in llama-cpp-python (tests/gguf_load_runner.py, in child processes, so an abort is counted, not
fatal), and every refusal is one ValueError naming the file. HFQ_GGUF_CORPUS_ALL=1 also loads the refused files,
to count what llama.cpp would have done with them (docs/safety.md)."""

import os
import re
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

import hfq
from child_runs import run_each
from gguf_corruption import GGUFCorpus, _part_offsets
from hfq.gguf.check import check_gguf
from hfq.gguf.vocab import LLAMA_CPP_MODELS, LLAMA_CPP_PRE

RUNNER = Path(__file__).parents[1] / "gguf_load_runner.py"
ALL = os.environ.get("HFQ_GGUF_CORPUS_ALL") == "1"
SCALE = int(os.environ.get("HFQ_CORPUS_SCALE", "1"))
EXPORTS = {"llama": "Q8_0", "qwen2": "Q4_K_M", "gemma3": "Q8_0"}   # SPM, byte-level BPE (merges), Gemma's SPM


def run_llama(files: list[Path], work: Path) -> list[dict]:
    """Each file through gguf_load_runner.py; a process that dies on a file records a crash for it."""
    pytest.importorskip("llama_cpp")
    return run_each(RUNNER, [str(f) for f in files], work, "file", timeout=600)


def _check(path: Path) -> tuple[str, str]:
    try:
        check_gguf(path)
        return "pass", ""
    except ValueError as e:
        return "refused", str(e)
    except Exception as e:   # noqa: BLE001  (anything else is a bug the test reports)
        return "other", f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def clean(export_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gguf-clean")
    out = {}
    for arch, qt in EXPORTS.items():
        d = export_dir(arch)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        out[arch] = hfq.export_gguf(model, AutoTokenizer.from_pretrained(d), root / f"{arch}.gguf", quant_type=qt,
                                    progress=False)[0]
    return out


@pytest.fixture(scope="module")
def corpus(clean, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-corpus")
    cases = []
    for seed, (arch, path) in enumerate(clean.items()):
        cases += [(arch, *c) for c in GGUFCorpus(path, root / arch, seed).build(SCALE)]
    checked = [_check(p) for *_, p in cases]
    load = [i for i, (r, _) in enumerate(checked) if r == "pass" or ALL]
    loaded = dict(zip(load, run_llama([cases[i][3] for i in load], root)))
    return cases, checked, loaded


def test_clean_exports_pass_and_run(clean, tmp_path):
    for path in clean.values():
        check_gguf(path)
    assert [r["outcome"] for r in run_llama(list(clean.values()), tmp_path)] == ["ok"] * len(clean)


def test_what_check_gguf_passes_llama_cpp_loads(corpus):
    cases, checked, loaded = corpus
    kinds = Counter(k for _, _, k, _ in cases)
    assert len(cases) >= 600 * min(SCALE, 1) and set(kinds) >= {
        "truncate", "header-flip", "token-bytes", "string-length", "array-length", "hparam", "value-type",
        "tensor-info", "data-flip"}, kinds
    other = [(c[:3], e) for c, (r, e) in zip(cases, checked) if r == "other"]
    assert not other, f"check_gguf raised a foreign exception on {len(other)} cases, e.g. {other[:5]}"
    failed = [(cases[i][:3], rec) for i, rec in loaded.items()
              if checked[i][0] == "pass" and rec["outcome"] not in ("ok", "nonfinite")]
    assert not failed, f"{len(failed)} files pass check_gguf and fail in llama.cpp, e.g.:\n" + "\n".join(
        f"{c}: {r}" for c, r in failed[:12])
    if ALL:   # the numbers docs/safety.md reports
        counts = Counter((checked[i][0], rec["outcome"]) for i, rec in loaded.items())
        print(f"\n{len(cases)} cases; (check, llama.cpp): {dict(counts)}")


def test_each_refusal_is_one_line_naming_the_file(corpus):
    cases, checked, _ = corpus
    refused = [(c, e) for c, (r, e) in zip(cases, checked) if r == "refused"]
    assert len(refused) > 0.6 * len(cases)
    for c, e in refused:
        assert str(c[3]) in e and "\n" not in e and ("re-export or re-download it" in e), (c[:3], e)


def _tokens_field(path):
    import gguf

    return gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_token_string_damage_is_refused_before_llama_cpp(arch, clean, tmp_path):
    """The regressions that passed the old check and then aborted llama.cpp (or failed with no reason)."""
    path = clean[arch]
    data = bytearray(path.read_bytes())
    f = _tokens_field(path)
    offs = _part_offsets(f)
    i = next(j for j in f.data[10:] if len(f.parts[j]) >= 2)   # a token of two bytes or more
    t = f.data.index(i)
    bad = bytearray(data)
    bad[offs[i]] = 0xFF
    (tmp_path / "utf8.gguf").write_bytes(bad)
    with pytest.raises(ValueError, match=rf"utf8\.gguf: tokenizer\.ggml\.tokens\[{t}\] is not UTF-8 text "
                                         r"\(byte 0 of it is 0xff\) \(at byte \d+\)"):
        check_gguf(tmp_path / "utf8.gguf")
    other = next(j for j in f.data if j != i and len(f.parts[j]) == len(f.parts[i]) and
                 bytes(f.parts[j]) != bytes(f.parts[i]))
    dup = bytearray(data)
    dup[offs[i]:offs[i] + len(f.parts[i])] = bytes(f.parts[other])
    (tmp_path / "dup.gguf").write_bytes(dup)
    with pytest.raises(ValueError, match=r"dup\.gguf: tokenizer\.ggml\.tokens\[\d+\] is .*, the same as token \d+"):
        check_gguf(tmp_path / "dup.gguf")
    longer = bytearray(data)
    longer[offs[i - 1]:offs[i - 1] + 8] = struct.pack("<Q", len(f.parts[i]) + 1)
    (tmp_path / "len.gguf").write_bytes(longer)
    with pytest.raises(ValueError, match=r"len\.gguf"):
        check_gguf(tmp_path / "len.gguf")
    huge = bytearray(data)
    n_at = _part_offsets(f)[4]
    huge[n_at:n_at + 8] = struct.pack("<Q", 1 << 33)   # gguf-py would loop over 8 billion items here
    (tmp_path / "count.gguf").write_bytes(huge)
    with pytest.raises(ValueError, match=r"count\.gguf: tokenizer\.ggml\.tokens claims 8589934592 strings"):
        check_gguf(tmp_path / "count.gguf")
    outcomes = [r["outcome"] for r in run_llama([tmp_path / n for n in ("utf8.gguf", "dup.gguf", "len.gguf",
                                                                         "count.gguf")], tmp_path)]
    assert all(o in ("crash", "load-error") for o in outcomes[1:]), outcomes   # what the check keeps away


def test_name_sets_match_llama_cpps_source(llama_cpp_src):
    """The tokenizer models and pre-tokenizers check_gguf accepts are exactly those llama.cpp's loader handles."""
    src = (Path(llama_cpp_src).parent / "src" / "src" / "llama-vocab.cpp").read_text()
    assert set(re.findall(r'tokenizer_pre == "([^"]+)"', src)) == LLAMA_CPP_PRE
    assert set(re.findall(r'tokenizer_model == "([^"]+)"', src)) == LLAMA_CPP_MODELS
