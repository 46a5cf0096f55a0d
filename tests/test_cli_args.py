"""Invalid arguments are rejected before any model loads, each with one `hfq: error:` line naming the flag or file,
what is allowed and the fix; a foreign exception becomes one line too (--debug shows the traceback)."""

import pytest
import transformers

from hfq.cli import main


@pytest.fixture
def no_load(monkeypatch):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    return calls


@pytest.fixture
def files(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 100)
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"ok \x86\x00\xff binary")
    ro = tmp_path / "a-file"   # a path under a file cannot be written, even by root
    ro.write_text("x")
    return text, binary, ro


def _cases(m, text, binary, ro, tmp):
    out = str(tmp / "o")
    return [
        (["eval", m, "--chunks", "-1"], "--chunks -1 is not allowed; give an integer >= 0"),
        (["eval", m, "--ctx", "100000"], "--ctx 100000 is longer than the model's 128 positions"),
        (["eval", m, "--ctx", "0"], "--ctx 0 is not allowed"),
        (["eval", m, "--json", str(ro / "r.json")], f"--json {ro / 'r.json'} cannot be written"),
        (["eval", m, "--json", str(tmp)], "is a folder; give a file name"),
        (["eval", m, "--text", str(binary)], f"--text {binary} is not UTF-8 text (byte 3 is 0x86)"),
        (["eval", m, "--text", str(tmp / "missing.txt")], "--text " + str(tmp / "missing.txt") + ": no such file"),
        (["eval", m, "--threads", "0"], "--threads 0 is not allowed"),
        (["quantize", m, "--method", "gptq", "--dataset", str(tmp / "missing.txt"), "--out", out],
         "--dataset " + str(tmp / "missing.txt") + ": no such file"),
        (["quantize", m, "--method", "gptq", "--dataset", str(binary), "--out", out], "is not UTF-8 text"),
        (["quantize", m, "--method", "rtn", "--max-shard-size", "bogus", "--out", out],
         "--max-shard-size 'bogus' is not a size"),
        (["quantize", m, "--method", "gptq", "--seq-len", "4096", "--out", out], "--seq-len 4096 is longer"),
        (["quantize", m, "--method", "gptq", "--n-samples", "0", "--out", out], "--n-samples 0 is not allowed"),
        (["quantize", m, "--method", "gguf", "--quant-type", "Q4_0", "--calibration", str(binary), "--out", out],
         "--calibration"),
        (["quantize", m, "--method", "rtn", "--out", str(ro / "q")], "cannot be written"),
        (["importance", m, "--text", str(text), "--chunks", "0", "--out", str(tmp / "i.safetensors")],
         "--chunks 0 is not allowed"),
        (["importance", m, "--text", str(text), "--ctx", "1000", "--out", str(tmp / "i.safetensors")],
         "--ctx 1000 is longer"),
        (["export-gguf", m, "--imatrix-text", str(binary), "--out", str(tmp / "x.gguf")], "--imatrix-text"),
        (["export-gguf", m, "--chunks", "-3", "--out", str(tmp / "x.gguf")], "--chunks -3"),
        (["export-gguf", m, "--split-max-size", "lots", "--out", str(tmp / "x.gguf")], "--split-max-size 'lots'"),
        (["push", m, "--variants", "nf4", "--repo", "me/x", "--chunks", "-1", "--dry-run"], "--chunks -1"),
    ]


def test_bad_arguments_fail_before_loading(tiny_llama_dir, files, tmp_path, capsys, no_load):
    text, binary, ro = files
    for argv, expected in _cases(str(tiny_llama_dir), text, binary, ro, tmp_path):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hfq: error: ") and expected in err[0], (argv, err)
    assert no_load == []


def test_dataset_errors_are_the_calibration_readers_own(tiny_llama_dir, tmp_path, capsys, no_load):
    """`--dataset` is checked before loading by the same reader calibration uses later: one message per fault,
    the same words, only the source named differently (the flag and file instead of 'calibration dataset')."""
    from hfq.algorithms.calibration import dataset_texts

    bad = {"a.jsonl": '{"text": "ok"}\nnot json\n', "b.jsonl": '{"content": "x"}\n', "c.jsonl": "\n\n",
           "d.csv": "x,y\n", "e.jsonl": '{"text": ["a"]}\n'}
    for name, content in bad.items():
        f = tmp_path / name
        f.write_text(content)
        with pytest.raises(ValueError) as e:
            dataset_texts(f)
        api = str(e.value)
        assert api.startswith(f"calibration dataset {f}")
        assert main(["quantize", str(tiny_llama_dir), "--method", "gptq", "--dataset", str(f), "--out",
                     str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["hfq: error: " + api.replace(f"calibration dataset {f}", f"--dataset {f}", 1)], (name, err)
    assert no_load == []


def test_broken_config_json_is_named(tiny_llama_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, bad)
    (bad / "config.json").write_text('{"model_type": "llama",')
    for argv in (["info", str(bad)], ["verify", str(bad)], ["quantize", str(bad), "--method", "rtn", "--out",
                                                             str(tmp_path / "q")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{bad / 'config.json'} is not valid JSON" in err[0], (argv, err)


def test_foreign_exception_is_one_line_and_debug_shows_it(monkeypatch, capsys, tmp_path):
    import hfq.cli.info as info

    def boom(path):
        raise KeyError("weight_map")

    monkeypatch.setattr(info, "_cmd_info", lambda args: boom(args.path))
    monkeypatch.setattr(info, "add_parsers", info.add_parsers)
    from hfq import cli

    parser = cli._build_parser()
    args = parser.parse_args(["info", str(tmp_path)])
    args.handler = lambda a: boom(a.path)
    monkeypatch.setattr(cli, "_build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hfq: error: KeyError: 'weight_map' (rerun with --debug for the traceback)"]
    args.debug = True
    with pytest.raises(KeyError):
        main(["info", str(tmp_path)])
