"""`hfq quantize --method gguf`, `hfq importance` and `hfq info` on a tiny model."""

import json

import pytest
from hfq.cli import main


@pytest.fixture(scope="module")
def model_with_tokenizer(llama256_dir):
    """A word-level tokenizer with ids < 512, the tiny model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<bos>": 1, **{w: i + 2 for i, w in enumerate("abcdefxyz123456789")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="[UNK]").save_pretrained(llama256_dir)
    return llama256_dir


def test_importance_then_quantize_then_info(model_with_tokenizer, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text(" ".join("a b c d e f 1 2 3" for _ in range(200)))
    assert main(["importance", str(model_with_tokenizer), "--text", str(text), "--ctx", "64", "--chunks", "3",
                 "--out", str(tmp_path / "imp.safetensors")]) == 0
    assert "importance for 15 linear layers" in capsys.readouterr().out
    out = tmp_path / "q"
    assert main(["quantize", str(model_with_tokenizer), "--method", "gguf", "--quant-type", "q3_k_m",
                 "--importance", str(tmp_path / "imp.safetensors"), "--out", str(out)]) == 0
    assert main(["info", str(out), "--layers"]) == 0
    text_out = capsys.readouterr().out
    assert "gguf-q3_k_m-imat" in text_out
    assert "Q5_K" in text_out and "Q3_K" in text_out and "model.layers.0.self_attn.v_proj" in text_out
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    t = info["types"]
    assert t["Q3_K"]["bpw"] == pytest.approx(3.4375) and t["Q5_K"]["bpw"] == pytest.approx(5.5)
    assert sum(v["layers"] for v in t.values()) == 16   # 14 linears, the embedding, the untied head


def test_calibration_flag_and_errors(model_with_tokenizer, tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text(" ".join("x y z 7 8 9" for _ in range(100)))
    assert main(["quantize", str(model_with_tokenizer), "--method", "gguf", "--quant-type", "Q4_0", "--calibration",
                 str(text), "--ctx", "32", "--out", str(tmp_path / "q")]) == 0
    assert main(["quantize", str(model_with_tokenizer), "--method", "nf4", "--calibration", str(text),
                 "--out", str(tmp_path / "q2")]) == 1
    assert "apply to --method gguf only" in capsys.readouterr().err
    assert main(["quantize", str(model_with_tokenizer), "--method", "gguf", "--out", str(tmp_path / "q3")]) == 1
    assert "needs quant_type" in capsys.readouterr().err


def test_eval_reports_quality_size_and_speed(model_with_tokenizer, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text(" ".join("a b c d e f x y z 1 2 3 4 5 6 7 8 9".split()[i % 18] for i in range(3000)))
    out = tmp_path / "q"
    assert main(["quantize", str(model_with_tokenizer), "--method", "gguf", "--quant-type", "Q2_K",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--base", str(model_with_tokenizer), "--text", str(text), "--ctx", "64",
                 "--chunks", "3", "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["chunks"] == 3 and r["scored_tokens"] == 3 * 31
    assert 0 < r["kl"] and 0 < r["top1"] < 1 and r["ppl"] > 1
    assert f"KL {r['kl']:.4f}, top-1 agreement {r['top1']:.3f}" in printed
    assert r["size"]["types"]["Q3_K"]["layers"] > 0 and r["decode_tokens_per_s"] > 0
    assert main(["eval", str(out), "--base", str(model_with_tokenizer), "--text", str(text), "--ctx", "64",
                 "--chunks", "2"]) == 0
    assert main(["eval", str(tmp_path / "m.gguf")]) == 1
    assert "needs --base" in capsys.readouterr().err
