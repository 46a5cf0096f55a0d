"""Cards written by prepare()/push: the table's numbers are the evaluation JSON's, the size by module type matches
safetensors' own reader, the reproduce command makes the same bytes, and metadata is escaped."""

import json
import re
import shlex

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from hfq.publish.cards import ROUND, make_card
from hfq.checkpoint import describe
from hfq.cli import main
from hfq.publish.hub import sha256_file
from hfq.publish import prepare
from helpers import WORDS, save_tiny_word_base

TEXT = " ".join(WORDS[(i * 5) % 18] for i in range(500))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = save_tiny_word_base(tmp_path_factory.mktemp("base"), "---\nlicense: mit\n---\n")
    out = tmp_path_factory.mktemp("work")
    records = prepare(str(base), "rtn-int4-g128,nf4-dq", out, repo="me/tiny", text=TEXT, ctx=64, chunks=2,
                      decode_tokens=4)
    return base, out, records


def _table(card_text: str) -> dict:
    """{row name: {column: cell}} of the card's measured table."""
    lines = [ln for ln in card_text.splitlines() if ln.startswith("| ")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| variant |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for ln in lines[start + 1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(head):
            break
        rows[cells[0]] = dict(zip(head, cells))
    return rows


COLUMN_OF = {"size (MB)": ("size_mb", lambda r: r["size"]["bytes"] / 1e6), "bits per weight": ("bpw", lambda r: r["size"]["bpw"]),
             "perplexity": ("ppl", lambda r: r["ppl"]), "KL vs base": ("kl", lambda r: r.get("kl")),
             "top-1 vs base": ("top1", lambda r: r.get("top1")),
             "decode tokens/s": ("decode", lambda r: r.get("decode_tokens_per_s"))}


def test_table_numbers_are_the_evaluation_json(made):
    base, out, records = made
    base_json = json.loads((out / "base.json").read_text())
    for r in records:
        card = ModelCard.load(f"{r['folder']}/README.md")
        table = _table(card.text)
        results = {"rtn-int4-g128": json.loads((out / "tiny-rtn-int4-g128" / "hfq_eval.json").read_text()),
                   "nf4-dq": json.loads((out / "tiny-nf4-dq" / "hfq_eval.json").read_text()),
                   f"{base.name} (float32)": base_json}
        assert set(table) == set(results)
        for name, res in results.items():
            for col, (key, get) in COLUMN_OF.items():
                value = get(res)
                if value is None:
                    assert table[name][col] == "—", (name, col)
                else:
                    assert float(table[name][col]) == round(value, ROUND[key]), (name, col)
        assert results["nf4-dq"]["kl"] > 0 and 0 < results["nf4-dq"]["top1"] <= 1
        assert f"{results['rtn-int4-g128']['scored_tokens']} scored tokens in 2 chunk(s) of 64" in card.text


def test_front_matter_and_sections(made):
    base, out, records = made
    card = ModelCard.load(f"{records[1]['folder']}/README.md")
    d = card.data
    assert d.base_model is None and d.base_model_relation == "quantized" and d.license == "mit"
    assert d.library_name == "transformers" and d.pipeline_tag == "text-generation"
    assert d.tags == ["hfq", "quantized", "hfq-nf4", "4-bit"]
    usage = card.text.split("## Usage", 1)[1]
    assert usage.split("```python\n", 1)[1].startswith("import hfq")
    assert 'from_pretrained("me/tiny-nf4-dq")' in usage
    assert "## Calibration data" in card.text and "without calibration data" in card.text
    from hfq import __version__

    assert f"hfq {__version__}." in card.text
    for f in ("model.safetensors", "config.json", "hfq_eval.json", "tokenizer.json"):
        assert f"`{f}` sha256 `{sha256_file(out / 'tiny-nf4-dq' / f)}`" in card.text


def test_size_by_module_type_matches_safetensors(made):
    base, out, records = made
    folder = out / "tiny-rtn-int4-g128"
    info = describe(folder)
    want: dict[str, int] = {}
    with safe_open(folder / "model.safetensors", "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            kind = k.split(".")[-2] if k.count(".") else k
            want[kind] = want.get(kind, 0) + t.numel() * t.element_size()
    assert {k: v["bytes"] for k, v in info["modules"].items()} == want
    # int4, g128 symmetric: 4 bits + one fp16 scale per 128 weights = 4.125 bpw in every projection
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert info["modules"][kind]["bpw"] == pytest.approx(4.125)
    assert info["modules"]["lm_head"]["bpw"] == 32 and info["modules"]["q_proj"]["weights"] == 2 * 128 * 128
    card = (folder / "README.md").read_text()
    assert "| q_proj | 32,768 | 4.125 |" in card and "| embed_tokens | 8,192 | 32.000 |" in card


def test_reproduce_command_makes_the_same_file(made, tmp_path):
    base, out, records = made
    card = (out / "tiny-nf4-dq" / "README.md").read_text()
    command = re.search(r"```bash\n(hfq quantize [^\n]+)\n", card)[1]
    args = shlex.split(command)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    assert main(args) == 0
    assert sha256_file(tmp_path / "again" / "model.safetensors") == sha256_file(out / "tiny-nf4-dq" / "model.safetensors")


def test_make_card_escapes_everything(made):
    base, out, records = made
    evil = 'x" | <img src=x onerror=alert(1)>\n---\nlicense: evil'
    res = json.loads((out / "tiny-nf4-dq" / "hfq_eval.json").read_text())
    res["text"] = "<b>bold</b> | pipe"
    card = make_card(describe(out / "tiny-nf4-dq"), command="hfq push `rm -rf /`\n```", base_model=evil,
                     base_name=evil, license="mit", repo_id='a"b`c', results=res, rows=[(evil, res)],
                     calibration="<script>x</script>")
    parsed = ModelCard(str(card))
    assert parsed.data.base_model == evil and parsed.data.license == "mit"
    body = str(card).split("\n---\n", 1)[1]
    assert "<img" not in body and "<script>" not in body and "<b>" not in body and "\n---\n" not in body
    assert "`rm" not in body and 'from_pretrained("a\\"b\'c")' in body
    row = next(ln for ln in body.splitlines() if ln.startswith("| x&quot;"))
    assert row.count("|") == 9  # eight cells: the '|' in the name did not split the row


@pytest.mark.parametrize("tied", [False, True])
def test_card_names_the_embedding_and_head_storage(tmp_path, tied):
    """The card's embedding section against the safetensors file itself: each table's size is the bytes of its
    stored tensors, and a tied head has no tensor of its own."""
    import hfq
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=96, tie_word_embeddings=tied)).save_pretrained(
        tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=hfq.HfqConfig(method="nf4", double_quant=True, embeddings="int8"))
    model.save_pretrained(tmp_path / "q")
    card = make_card(tmp_path / "q", command="hfq quantize base --method nf4 --double-quant --embeddings int8").text
    section = card.split("## Embedding and output head", 1)[1].split("## ", 1)[0]
    with safe_open(tmp_path / "q" / "model.safetensors", "pt") as f:
        size = {m: sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                       if k.startswith(m + ".")) for m in ("model.embed_tokens", "lm_head")}
    # int8 per row: 96 x 64 bytes of codes plus one float16 scale per row = 8.25 bits per weight
    assert f"| model.embed_tokens | int8 | {size['model.embed_tokens'] / 1e6:.2f} MB, 8.250 bits per weight |" in section
    if tied:
        assert size["lm_head"] == 0
        assert "| lm_head | int8 | tied to `model.embed_tokens`, stored once |" in section
    else:
        assert f"| lm_head | int8 | {size['lm_head'] / 1e6:.2f} MB, 8.250 bits per weight |" in section


def test_card_says_when_embeddings_stay_float(made):
    base, out, records = made
    card = (out / "tiny-nf4-dq" / "README.md").read_text()
    section = card.split("## Embedding and output head", 1)[1].split("## ", 1)[0]
    assert "Not quantized" in section and "|" not in section
