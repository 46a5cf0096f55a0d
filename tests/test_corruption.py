"""The corruption corpus (tests/corruption.py): every damaged hfq checkpoint either loads exactly as the clean one
or fails with one of hfq's own ValueErrors, never garbage, a crash or a foreign exception, and `hfq info` /
`hfq verify` (hfq.verify.verify_checkpoint) never passes a checkpoint whose load fails.

Cases load in subprocesses (tests/corpus_runner.py), so a crash is counted; a crashed process is restarted after
the case it was on. The default run builds over 1,000 cases (scale 3); HFQ_CORPUS_SCALE=70 builds 10,460 (docs/safety.md)."""

import os
from collections import Counter
from pathlib import Path

import pytest

from child_runs import run_each
from corruption import Corpus
from hfq.cli import main

HERE = Path(__file__).parent
VARIANTS = {
    "rtn-asym-g32": ("tiny", ["--method", "rtn", "--bits", "4", "--group-size", "32", "--asym"]),
    "nf4-dq": ("tiny", ["--method", "nf4", "--double-quant"]),
    "fp4": ("tiny", ["--method", "fp4"]),
    "gguf-q4_0": ("tiny", ["--method", "gguf", "--quant-type", "Q4_0"]),
    "rtn-tied-int8": ("tied", ["--method", "rtn", "--group-size", "32", "--embeddings", "int8"]),
    "rtn-int8-pc": ("tiny", ["--method", "rtn", "--bits", "8", "--group-size", "-1"]),
}
SCALE = int(os.environ.get("HFQ_CORPUS_SCALE", "3"))   # 3: over a thousand cases in every run


def run_cases(cases: list[tuple[str, str]], work: Path) -> list[dict]:
    """Run every case through corpus_runner.py; a process that dies mid-case records a crash for it."""
    return run_each(HERE / "corpus_runner.py", cases, work, "case", timeout=900)


@pytest.fixture(scope="module")
def corpus(tiny_llama_dir, tiny_llama_tied_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = {"tiny": tiny_llama_dir, "tied": tiny_llama_tied_dir}
    cases, meta = [], []
    for seed, (name, (model, flags)) in enumerate(VARIANTS.items()):
        clean = root / f"clean-{name}"
        assert main(["quantize", str(src[model]), *flags, "--out", str(clean)]) == 0
        for label, kind, folder in Corpus(clean, root / name, seed).build(SCALE):
            cases.append((str(clean), str(folder)))
            meta.append((name, kind, label))
    return cases, meta, run_cases(cases, root)


def test_no_damaged_checkpoint_loads_as_garbage(corpus):
    cases, meta, results = corpus
    assert len(cases) >= (1000 if SCALE >= 3 else 600)
    bad = [(m, r) for m, r in zip(meta, results) if r["outcome"] not in ("same", "hfq-error")]
    counts = Counter(r["outcome"] for r in results)
    assert not bad, f"{len(bad)} of {len(results)} cases ({dict(counts)}), e.g.:\n" + "\n".join(
        f"{m}: {r}" for m, r in bad[:12])
    # every kind of damage is exercised, and most are refused
    kinds = Counter(k for _, k, _ in meta)
    assert set(kinds) >= {"truncate", "header-flip", "rename", "retype", "reshape", "offsets", "metadata",
                          "config", "bad-scale", "data-flip"}, kinds
    assert counts["hfq-error"] > 0.8 * len(results)


def test_verify_never_passes_what_the_load_refuses(corpus):
    cases, meta, results = corpus
    bad = [(m, r) for m, r in zip(meta, results)
           if r["verify"] == "other-error" or (r["outcome"] == "hfq-error" and r["verify"] == "ok")]
    assert not bad, f"{len(bad)} cases, e.g.:\n" + "\n".join(f"{m}: {r}" for m, r in bad[:12])
    # random data flips load as the clean model would only if they hit nothing; the card's sha256 refuses them
    flips = [r for (_, k, _), r in zip(meta, results) if k == "data-flip"]
    assert flips and all(r["outcome"] == "hfq-error" and "sha256" in r["error"] for r in flips), flips[:3]
