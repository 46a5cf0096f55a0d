"""tests/ggml_oracle.llama_tool: a missing llama.cpp tool fails its test under CI (.ci/run sets CI and builds the
tools first) and skips it elsewhere, naming the one command that builds it."""

from pathlib import Path

import pytest
from ggml_oracle import BUILD, llama_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
@pytest.mark.parametrize("tool,var", [("llama-perplexity", "HFQ_LLAMA_PERPLEXITY"),
                                      ("convert_hf_to_gguf.py", "HFQ_LLAMA_CPP_SRC")])
def test_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome, tool, var):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv(var, str(tmp_path / "absent"))
    with pytest.raises(outcome, match=f"{tool} is missing") as e:
        llama_tool(tool)
    assert BUILD in str(e.value) and var in str(e.value)


def test_a_present_tool_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    (tmp_path / "llama-imatrix").write_text("")
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    monkeypatch.setenv("HFQ_LLAMA_IMATRIX", str(tmp_path / "llama-imatrix"))
    monkeypatch.setenv("HFQ_LLAMA_CPP_SRC", str(tmp_path))
    assert llama_tool("llama-imatrix") == str(tmp_path / "llama-imatrix")
    assert llama_tool("convert_hf_to_gguf.py") == str(tmp_path)


def test_ci_builds_the_tools_before_the_tests():
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    build = next(i for i, ln in enumerate(run) if "bash .ci/llama_tools.sh" in ln)
    tests = next(i for i, ln in enumerate(run) if "python -m pytest" in ln)
    assert any(ln.startswith("export CI=") for ln in run[:build]) and build < tests
    assert BUILD == 'eval "$(bash .ci/llama_tools.sh)"'
    tools = (ROOT / ".ci" / "llama_tools.sh").read_text()
    assert "TOOLS=(llama-quantize llama-imatrix llama-perplexity)" in tools
