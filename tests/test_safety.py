"""No code runs from a checkpoint: a folder with auto_map (whose module writes a marker) and a pickle-only folder
(whose pickle's __reduce__ writes a marker) are refused by every hfq entry point, with the reason, without
prompting; and a missing path is named as one."""

import builtins
import json
import pickle
import shutil

import pytest

import hfq
from hfq.cli import main


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture
def hostile(tiny_llama_dir, tmp_path):
    marker = tmp_path / "MARKER"
    remote = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tok_only = tmp_path / "remote-tokenizer"
    shutil.copytree(tiny_llama_dir, tok_only)
    (tok_only / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    (tok_only / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    pick = tmp_path / "pickle"
    pick.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", pick / "config.json")
    (pick / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(marker)}))
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 200)
    return marker, {"auto_map": remote, "tokenizer auto_map": tok_only, "pickle only": pick}, text


def _entry_points(src, text, tmp):
    return [
        ["quantize", str(src), "--method", "rtn", "--out", str(tmp / "q")],
        ["quantize", str(src), "--method", "gguf", "--quant-type", "Q4_0", "--calibration", str(text), "--ctx", "16",
         "--out", str(tmp / "g")],
        ["export-gguf", str(src), "--out", str(tmp / "x.gguf")],
        ["export", str(src), "--format", "gptq", "--out", str(tmp / "e")],
        ["eval", str(src), "--text", str(text), "--ctx", "16", "--chunks", "1"],
        ["eval", str(tmp / "missing.gguf"), "--base", str(src), "--text", str(text)],
        ["importance", str(src), "--text", str(text), "--ctx", "16", "--out", str(tmp / "i.safetensors")],
        ["push", str(src), "--variants", "nf4", "--repo", "me/x", "--dry-run", "--text", str(text), "--ctx", "16",
         "--chunks", "1", "--out", str(tmp / "p")],
    ]


def test_no_entry_point_runs_checkpoint_code_or_prompts(hostile, tmp_path, capsys, monkeypatch):
    marker, folders, text = hostile
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *a: prompts.append(a) or "y")
    for why, src in folders.items():
        for argv in _entry_points(src, text, tmp_path):
            assert main(argv) == 1, (why, argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("hfq: error: "), (why, argv, err)
            if "missing.gguf" not in argv[1]:
                assert ("auto_map" in err[0] and "never runs code" in err[0]) if "auto_map" in why else \
                    ("only pickle weights" in err[0] and "never pickle" in err[0]), (why, argv, err)
    for why, src in folders.items():   # the Python API
        with pytest.raises(ValueError, match="auto_map|pickle"):
            hfq.evaluate(str(src), text="hello world " * 100, ctx=16, chunks=1)
    assert not marker.exists() and not prompts
    assert not any((tmp_path / n).exists() for n in ("q", "g", "x.gguf", "e", "i.safetensors"))


def test_a_missing_local_path_is_named(tmp_path, capsys):
    for path in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        assert main(["quantize", path, "--method", "rtn", "--out", str(tmp_path / "q")]) == 1
        err = capsys.readouterr().err
        assert f"model path {path} does not exist" in err and "Repo id" not in err
