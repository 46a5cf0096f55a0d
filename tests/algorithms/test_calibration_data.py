"""Calibration sources and windows for GPTQ/AWQ: formats, determinism, the default, and errors."""

import json
import logging
import re

import pytest
import torch

from hfq.algorithms.calibration import DEFAULT_DATASET, calibration_windows, dataset_texts


class _Tok:
    """Whitespace-free toy tokenizer: one id per character (ord % 500), BOS = 1."""
    bos_token_id = 1

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        return {"input_ids": torch.tensor([[ord(c) % 500 + 2 for c in text]])}


def test_sources_and_descriptions_hold_no_text_or_path(tmp_path):
    txt = tmp_path / "secret-name.txt"
    txt.write_text("hello world " * 100)
    jl = tmp_path / "private.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i} " * 20, "id": i}) for i in range(5)) + "\n\n")
    items, d = dataset_texts(str(txt))
    assert items == ["hello world " * 100] and "secret" not in d and str(tmp_path) not in d and ".txt" in d
    items, d = dataset_texts(jl)
    assert len(items) == 5 and items[2] == "line 2 " * 20 and "5 records" in d and "private" not in d
    items, d = dataset_texts(["a text", "another"])
    assert items == ["a text", "another"] and d == "2 texts given in Python"

    class FakeDataset:   # duck-typed datasets.Dataset
        column_names = ["text", "label"]
        split = "train"

        class info:
            dataset_name = "toyset"

        def __getitem__(self, key):
            return ["first row", "second row"] if key == "text" else None

        def __len__(self):
            return 2

    items, d = dataset_texts(FakeDataset())
    assert items == ["first row", "second row"] and d == "datasets.Dataset toyset split train (2 rows)"


def test_default_is_the_first_pydoc_half_and_is_logged(caplog):
    from hfq.evaluation import pydoc_halves

    with caplog.at_level(logging.INFO, logger="hfq.algorithms.calibration"):
        items, d = dataset_texts(None)
    assert items == [pydoc_halves()[0]] and d == DEFAULT_DATASET
    assert any("built-in default" in r.getMessage() for r in caplog.records)


def test_windows_are_deterministic_disjoint_and_bos_first():
    g = torch.Generator().manual_seed(0)
    text = "".join(chr(65 + int(i)) for i in torch.randint(0, 26, (5000,), generator=g))
    a = calibration_windows([text], 8, 100, seed=3, tokenizer=_Tok())
    b = calibration_windows([text], 8, 100, seed=3, tokenizer=_Tok())
    c = calibration_windows([text], 8, 100, seed=4, tokenizer=_Tok())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    ids = _Tok()(text)["input_ids"][0]
    starts = []
    for w in a:
        assert w.shape == (1, 100) and w[0, 0] == 1
        s = next(s for s in range(0, 5000, 100) if torch.equal(ids[s + 1:s + 100], w[0, 1:]))
        starts.append(s)
    assert len(set(starts)) == 8             # non-overlapping windows


def test_pretokenized_items_need_no_tokenizer():
    items = [list(range(10, 60)), torch.arange(100, 150)]
    w = calibration_windows(items, 2, 50, seed=0)
    assert torch.equal(torch.cat(w, 1)[0], torch.cat([torch.arange(10, 60), torch.arange(100, 150)]))


def test_errors_name_the_numbers_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        dataset_texts(["", "  \n"])
    with pytest.raises(ValueError, match="empty"):
        dataset_texts([])
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        dataset_texts(empty)
    with pytest.raises(ValueError, match=r"missing\.txt: no such file; pass an existing \.txt or \.jsonl file"):
        dataset_texts(tmp_path / "missing.txt")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match=r'b\.jsonl line 1 has no "text" string \(keys \[\'content\'\]\)'):
        dataset_texts(bad)
    with pytest.raises(ValueError, match=r"has 300 tokens: 2 windows of seq_len=128, but n_samples=4 .*lower "
                                         r"n_samples or seq_len"):
        calibration_windows(["x" * 300], 4, 128, seed=0, tokenizer=_Tok())
    with pytest.raises(ValueError, match="not a calibration source"):
        dataset_texts(42)


# (file content, the line and the fault the one message must name); every message also names the file, the allowed
# form and the fix
BAD_JSONL = [
    ('{"text": "ok"}\n{"text": "two",\n', r'line 2 is not JSON \(Expecting property name enclosed in double quotes '
                                         r'at column 16\)'),
    ('\n\n["a", "b"]\n', r'line 3 has no "text" string \(a JSON list\)'),
    ('{"text": 5}\n', r'line 1 has no "text" string \("text" is int\)'),
    ('{"text": "a"}\n"just a string"\n', r'line 2 has no "text" string \(a JSON str\)'),
    ('{"body": "a", "id": 1}\n', r"line 1 has no \"text\" string \(keys \['body', 'id'\]\)"),
]


@pytest.mark.parametrize("content,fault", BAD_JSONL)
def test_each_jsonl_fault_is_one_message_with_file_line_form_and_fix(tmp_path, content, fault):
    f = tmp_path / "cal.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError) as e:
        dataset_texts(f)
    msg = str(e.value)
    assert msg.startswith(f"calibration dataset {f} line "), msg
    assert re.search(fault, msg), msg
    assert 'such as {"text": "..."}: fix or remove that line.' in msg


def test_file_faults_name_the_file(tmp_path):
    cases = {"x.csv": (b"a,b\n", r"x\.csv: the name must end in \.txt .* or \.jsonl"),
             "bin.txt": (b"ok\x86", r"bin\.txt is not UTF-8 text \(byte 2 is 0x86\)"),
             "nul.jsonl": (b'{"text": "a\x00"}', r"nul\.jsonl holds NUL bytes \(byte 11\)"),
             "blank.jsonl": (b'{"text": "  "}\n\n', r"blank\.jsonl is empty .*no --dataset, dataset=None")}
    for name, (raw, pattern) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=pattern):
            dataset_texts(tmp_path / name)


@pytest.mark.parametrize("n_tokens,n_samples,seq_len,expected", [
    (1801, None, None, (4, 450)),      # all of a short text: ceil(1801/512) windows, shrunk to fit
    (512, None, None, (1, 512)),
    (300, None, None, (1, 300)),
    (100_000, None, None, (128, 512)),  # more than 128 windows' worth: 128 windows of 512
    (2000, None, 512, (3, 512)),       # seq_len given: whole windows of it, tail dropped
    (2000, None, 64, (31, 64)),
    (1000, 4, 128, (4, 128)),          # both given: exactly that
    (2000, 3, None, (3, 512)),
])
def test_plan_windows_uses_what_the_data_holds(n_tokens, n_samples, seq_len, expected):
    from hfq.algorithms.calibration import plan_windows

    assert plan_windows(n_tokens, n_samples, seq_len) == expected


@pytest.mark.parametrize("n_tokens,n_samples,seq_len,match", [
    (255, None, None, "has 255 tokens; GPTQ/AWQ need at least 256"),
    (300, None, 512, "fewer than one window of seq_len=512"),
    (1000, 8, 128, "7 windows of seq_len=128, but n_samples=8 were asked"),
    (1000, 2, None, "1 windows of seq_len=512, but n_samples=2"),
])
def test_plan_windows_refuses_only_what_the_data_cannot_give(n_tokens, n_samples, seq_len, match):
    from hfq.algorithms.calibration import plan_windows

    with pytest.raises(ValueError, match=match):
        plan_windows(n_tokens, n_samples, seq_len)


def test_unset_sizes_take_all_of_a_short_text_and_log_it(caplog):
    text = "short paragraph. " * 106   # 1,802 characters = tokens with _Tok, then "\n\n" joins
    with caplog.at_level(logging.INFO, logger="hfq.algorithms.calibration"):
        w = calibration_windows([text[:900], text[900:]], None, None, seed=0, tokenizer=_Tok())
    # 1,804 tokens: 4 windows of 451, every token but the last used
    assert [x.shape for x in w] == [torch.Size([1, 451])] * 4
    assert any("1804 tokens of data; using 4 windows of 451 tokens" in r.getMessage() for r in caplog.records)
