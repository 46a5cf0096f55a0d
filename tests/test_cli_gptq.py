"""`hfq quantize --method gptq|awq` with a calibration file, on a tiny model with a byte-level tokenizer."""

import json

import pytest

from hfq.cli import main


@pytest.fixture(scope="module")
def llama_with_tokenizer(tiny_llama_dir, tmp_path_factory):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-llama-tok")
    shutil.copytree(tiny_llama_dir, d, dirs_exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", unk_token="<unk>").save_pretrained(d)
    return d


def test_quantize_gptq_with_a_jsonl_dataset(llama_with_tokenizer, tmp_path):
    data = tmp_path / "my-private-notes.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 3})
                              for i in range(20)))
    out = tmp_path / "q"
    assert main(["quantize", str(llama_with_tokenizer), "--method", "gptq", "--group-size", "32", "--desc-act",
                 "--dataset", str(data), "--n-samples", "8", "--seq-len", "64", "--seed", "1", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["method"] == "gptq" and cfg["desc_act"] is True
    cal = cfg["calibration"]
    assert cal["n_samples"] == 8 and cal["seq_len"] == 64 and cal["seed"] == 1
    assert cal["dataset"].startswith("local .jsonl file") and "private" not in json.dumps(cfg)


def test_calibration_flags_need_a_calibrated_method(capsys):
    assert main(["quantize", "m", "--method", "rtn", "--dataset", "x.txt", "--out", "o"]) != 0
    assert "--dataset applies to --method gptq or awq only" in capsys.readouterr().err
