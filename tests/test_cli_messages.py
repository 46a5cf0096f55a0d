"""Messages a user sees: a mistyped local path is named (not retried on the Hub), and loading a folder that is
already quantized does not claim to quantize it."""

import logging

import pytest
from transformers import AutoModelForCausalLM

import hfq
from hfq.cli import main


@pytest.mark.parametrize("typo", ["./tnyi-llama", "/no/such/model", "a/b/c"])
def test_a_mistyped_local_path_is_named(typo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", typo, "--method", "nf4", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err == (f"hfq: error: model path {typo} does not exist; pass an existing folder, a Hub id "
                   "(namespace/name) or an embedded model name.\n")
    assert not (tmp_path / "o").exists()


def test_loading_a_quantized_folder_says_loading(tiny_llama_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hfq"):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"))
        assert "hfq: 14 linear layers will be quantized with nf4-b64" in caplog.messages
        model.save_pretrained(tmp_path)
        caplog.clear()
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "hfq: loading 14 quantized linear layers (nf4-b64)" in caplog.messages
    assert not [m for m in caplog.messages if "will be quantized" in m]
