import json
import os
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hfq.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hfq.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_quantize_then_info(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "--method", "rtn", "--bits", "4", "--group-size", "32",
                 "--asym", "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.quantization_config.to_dict()["sym"] is False
    # same bytes as the Python API
    import hfq

    api = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(
        method="rtn", bits=4, group_size=32, sym=False))
    sd_api, sd_cli = api.state_dict(), model.state_dict()
    assert list(sd_api) == list(sd_cli) and len(sd_cli) > 14
    for k in sd_api:
        assert sd_api[k].dtype == sd_cli[k].dtype and torch.equal(sd_api[k], sd_cli[k]), k
    card = ModelCard.load(out / "README.md")
    # a local base is no Hub id: no base_model in the front matter, the body names the folder
    assert card.data.base_model is None and card.data.base_model_relation == "quantized"
    assert str(tiny_llama_dir) not in card.content and tiny_llama_dir.name in card.text
    assert "import hfq" in card.text and "rtn-int4-g32-asym" in card.text
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers_quantized"] == 14
    # int4 g32 asym: 4 bits + 16-bit scale/32 + 8-bit zero/32 = 4.75 bpw
    assert info["quantized_bpw"] == pytest.approx(4.75)
    assert main(["info", str(out)]) == 0
    assert "4.750 (quantized layers)" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_existing_output_is_kept(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _run("quantize", str(tiny_llama_dir), "--method", "nf4", "--out", str(out))
    assert r.returncode == 1 and "exists and is not empty; pass --overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_run_leaves_nothing(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    r = _run("quantize", str(tiny_llama_dir), "--method", "rtn", "--group-size", "128", "--out", str(out))
    assert r.returncode == 1  # hidden size 64 is not a multiple of 128
    assert "not a multiple of group_size=128" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,msg", [
    (["quantize", "m", "--method", "int3", "--out", "x"], "invalid choice: 'int3'"),
    (["quantize", "m", "--method", "rtn", "--bits", "9", "--out", "x"], "bits=9 is not supported by rtn"),
    (["quantize", "m", "--method", "nf4", "--bits", "four", "--out", "x"], "invalid int value: 'four'"),
    (["quantize", "m", "--method", "rtn", "--double-quant", "--out", "x"], "double_quant=True does not apply"),
    (["info", "/nonexistent/dir"], "has no config.json"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_one_line_no_traceback(args, msg):
    r = _run(*args)
    assert r.returncode != 0
    # torch 2.14's own import-time log lines (glog format, e.g. torchao's pytree notices) are not hfq's output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not re.match(r"[WI]\d{4} \d\d:\d\d:\d\d", ln)]
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("hfq: error:"), r.stderr


def _doctor_native_column(env):
    r = subprocess.run([sys.executable, "-m", "hfq.cli", "doctor"], capture_output=True, text=True,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    rows = dict(re.findall(r"^  hfq::(\w+)\s+native: ([^;]+); fallback: pure-torch reference$", r.stdout, re.M))
    return rows, r.stdout


def test_doctor_lists_every_op_and_where_it_runs_natively():
    from hfq.kernels import build
    from hfq.kernels.ops import SCHEMAS

    off, _ = _doctor_native_column({"HFQ_NO_EXTENSIONS": "1"})
    assert set(off) == set(SCHEMAS) and len(off) == len(SCHEMAS) >= 8
    assert set(off.values()) == {"none"}, off       # extensions off: every op runs the reference
    on, out = _doctor_native_column({"HFQ_NO_EXTENSIONS": ""})
    assert set(on) == set(SCHEMAS)
    # what each extension declares it registers, for the extensions the doctor reports as loaded
    native = {op: device.upper() for ext, (_, ops, device) in build.EXTENSIONS.items()
              if re.search(rf"extension {ext}: loaded", out) for op in ops}
    assert native, out                              # this machine has a compiler: the CPU kernel builds
    assert on == {op: native.get(op, "none") for op in SCHEMAS}, on
    assert "cpu decode activations: int16 " in out
    _, out8 = _doctor_native_column({"HFQ_NO_EXTENSIONS": "", "HFQ_CPU_ACTIVATIONS": "int8"})
    assert "cpu decode activations: int8 " in out8


def test_card_escapes_metadata(tiny_llama_dir, tmp_path):
    from hfq.publish.cards import render_card
    from hfq.checkpoint import describe

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "--method", "nf4", "--out", str(out)]) == 0
    evil = 'me/<script>alert(1)</script>"\n---\nlicense: evil'
    card = render_card(describe(out), evil, "hfq quantize x --out ```rm -rf /```", 'a"b`c')
    parsed = ModelCard(card)
    assert parsed.data.base_model == evil  # YAML-quoted, not injected
    assert parsed.data.license is None
    body = card.split("\n---\n", 1)[1]  # after the front matter
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert "\n---\n" not in body
    assert "```rm" not in card and 'from_pretrained("a\\"b\'c")' in card
