"""hfq push against a Hub on 127.0.0.1 (tests/hub_server.py) with the real huggingface_hub client: what lands
on the Hub is what was made, it loads with from_pretrained, re-pushing makes no commit, failures resume."""

import logging
import os

import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from transformers import AutoModelForCausalLM

import hfq
from hfq.publish.hub import PushError, sha256_file
from helpers import WORDS, save_tiny_word_base
from hub_server import LocalHub, online

TOKEN = "hf_test_secret_token_123"


@pytest.fixture(scope="module")
def local_hub():
    with LocalHub(int(os.environ["HFQ_TEST_HUB_PORT"]), tokens={TOKEN: "me"}) as hub:
        yield hub


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    return online(local_hub, monkeypatch, tmp_path, TOKEN)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny llama with a word-level tokenizer and a base card carrying a license."""
    return save_tiny_word_base(tmp_path_factory.mktemp("base"), "---\nlicense: apache-2.0\n---\n# tiny base\n")


TEXT = " ".join(WORDS[(i * 7) % 18] for i in range(600))


def _push(base_dir, out, variants="nf4,rtn-int4-g128", **kw):
    return hfq.push_variants(str(base_dir), variants, "me/tiny", out=out, text=TEXT, ctx=64, chunks=2, **kw)


def _commits(hub, repo_id):
    return [c for c in hub.repos[repo_id].commits if c["summary"] != "initial commit"]


def test_push_uploads_loadable_variants_with_cards(hub, base_dir, tmp_path):
    records = _push(base_dir, tmp_path / "work")
    assert [r["repo_id"] for r in records] == ["me/tiny-nf4", "me/tiny-rtn-int4-g128"]
    for r, cfg in zip(records, [hfq.HfqConfig(method="nf4"), hfq.HfqConfig(method="rtn", bits=4, group_size=128)]):
        assert len(_commits(hub, r["repo_id"])) == 1
        snap = snapshot_download(r["repo_id"], cache_dir=tmp_path / "dl")
        local = {p.name for p in (tmp_path / "work" / f"tiny-{r['variant']}").iterdir()}
        assert local <= set(os.listdir(snap)) and {"model.safetensors", "README.md", "hfq_eval.json"} <= local
        assert sha256_file(tmp_path / "dl" / snap / "model.safetensors") == \
            sha256_file(tmp_path / "work" / f"tiny-{r['variant']}" / "model.safetensors")
        # What was pushed loads and computes what quantizing the base directly computes.
        pulled = AutoModelForCausalLM.from_pretrained(snap)
        direct = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=cfg)
        ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
        with torch.no_grad():
            assert torch.equal(pulled(ids).logits, direct(ids).logits)
        card = ModelCard.load(r["repo_id"])
        assert card.data.base_model_relation == "quantized" and card.data.license == "apache-2.0"
        assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
        assert "hfq" in card.data.tags and f"hfq-{cfg.method}" in card.data.tags and "4-bit" in card.data.tags
        assert "```python\nimport hfq" in card.text and "hfq quantize" in card.text
        assert sha256_file(tmp_path / "work" / f"tiny-{r['variant']}" / "model.safetensors") in card.text


def test_repush_unchanged_makes_no_commit(hub, base_dir, tmp_path, monkeypatch):
    _push(base_dir, tmp_path / "work")
    before = {k: len(v.commits) for k, v in hub.repos.items()}
    hub.log.clear()
    import hfq.publish.push

    monkeypatch.setattr(hfq.publish.push, "_make_variant", lambda *a, **k: pytest.fail("re-quantized a finished variant"))
    records = _push(base_dir, tmp_path / "work")
    assert all(r["commit_url"] is None for r in records)
    assert {k: len(v.commits) for k, v in hub.repos.items()} == before
    assert not [p for m, p in hub.log if "/commit/" in p or "/preupload/" in p]


def test_network_failure_keeps_artifacts_and_resume_uploads_only_what_is_missing(hub, base_dir, tmp_path, caplog):
    hub.fail = lambda method, path: method == "POST" and "/commit/" in path and "rtn" in path
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PushError) as err:
        _push(base_dir, tmp_path / "work", resume_command="hfq push again")
    msg = str(err.value)
    assert "me/tiny-rtn-int4-g128" in msg and "Resume with: hfq push again" in msg and "me/tiny-nf4" in msg
    assert len(_commits(hub, "me/tiny-nf4")) == 1 and _commits(hub, "me/tiny-rtn-int4-g128") == []
    folder = tmp_path / "work" / "tiny-rtn-int4-g128"
    assert (folder / "model.safetensors").exists() and (folder / "README.md").exists()
    # Part of the content reached the Hub some other way: the resume must send only the rest.
    hub.fail = None
    from huggingface_hub import HfApi

    HfApi().upload_file(path_or_fileobj=str(folder / "model.safetensors"), path_in_repo="model.safetensors",
                        repo_id="me/tiny-rtn-int4-g128")
    records = _push(base_dir, tmp_path / "work")
    assert records[0]["commit_url"] is None and len(_commits(hub, "me/tiny-nf4")) == 1
    last = _commits(hub, "me/tiny-rtn-int4-g128")[-1]["paths"]
    assert "model.safetensors" not in last and {"README.md", "config.json", "hfq_eval.json"} <= set(last)
    assert hub.repos["me/tiny-rtn-int4-g128"].files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert TOKEN not in msg and TOKEN not in caplog.text


def test_lfs_uploads_without_xet(hub, base_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.lfs_threshold = 10_000
    _push(base_dir, tmp_path / "work", variants="nf4")
    repo = hub.repos["me/tiny-nf4"]
    assert "model.safetensors" in repo.lfs and "config.json" not in repo.lfs
    assert sha256_file(tmp_path / "work" / "tiny-nf4" / "model.safetensors") in hub.lfs_objects
    # Unchanged LFS content is recognised by its sha256: no second commit.
    assert _push(base_dir, tmp_path / "work", variants="nf4")[0]["commit_url"] is None
    assert len(_commits(hub, "me/tiny-nf4")) == 1


def test_cli_push_dry_run_and_private(hub, base_dir, tmp_path, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from hfq.cli import main

    text = tmp_path / "eval.txt"
    text.write_text(TEXT)
    args = ["push", str(base_dir), "--variants", "nf4", "--repo", "me/tiny", "--text", str(text), "--ctx", "64",
            "--chunks", "2", "--out", str(tmp_path / "w")]
    assert main([*args, "--dry-run"]) == 0
    assert hub.repos == {} and "dry run, not uploaded" in capsys.readouterr().out
    assert (tmp_path / "w" / "tiny-nf4" / "README.md").exists()
    assert main([*args, "--private"]) == 0
    assert hub.repos["me/tiny-nf4"].private
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("me/tiny-nf4", token=False)
    assert main(["push", str(base_dir), "--variants", "nf4,bogus", "--repo", "me/tiny"]) == 1
    assert "unknown variant 'bogus'" in capsys.readouterr().err


def test_bad_token_fails_clearly_without_echoing_it(hub, base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_456")
    with pytest.raises(PushError) as err:
        _push(base_dir, tmp_path / "work", variants="nf4")
    assert "me/tiny-nf4" in str(err.value) and "hf_wrong_secret_456" not in str(err.value)
    assert (tmp_path / "work" / "tiny-nf4" / "model.safetensors").exists()


def test_model_push_to_hub_writes_hfq_card(hub, base_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=hfq.HfqConfig(method="nf4",
                                                                                             double_quant=True))
    model.push_to_hub("me/direct")
    card = ModelCard.load("me/direct")
    assert card.data.base_model_relation == "quantized" and "hfq-nf4" in card.data.tags
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # a local base: no Hub id
    assert "import hfq" in card.text and "--method nf4 --bits 4 --group-size 64 --double-quant" in card.text
    assert str(base_dir) not in card.text  # no local paths in a public card
    snap = snapshot_download("me/direct", cache_dir=tmp_path / "dl")
    again = AutoModelForCausalLM.from_pretrained(snap)
    ids = torch.tensor([[1, 4, 8, 2]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_gguf_files_share_one_repo_and_load(hub, export_dir, tmp_path):
    """Q4_K_M and Q8_0 files from hfq.export_gguf go together to {repo}-GGUF in one commit, scored by llama.cpp."""
    import json
    import shlex

    from hfq.cli import main

    base = export_dir("llama")
    text = "The quick brown fox jumps over the lazy dog. " * 80
    records = hfq.push_variants(str(base), "nf4,Q4_K_M,Q8_0", "me/small", out=tmp_path / "w", text=text, ctx=64,
                                chunks=2, decode_tokens=0)
    assert [r["repo_id"] for r in records] == ["me/small-nf4", "me/small-GGUF", "me/small-GGUF"]
    assert len(_commits(hub, "me/small-GGUF")) == 1 and set(hub.repos) == {"me/small-nf4", "me/small-GGUF"}
    folder = tmp_path / "w" / "small-GGUF"
    files = sorted(p.name for p in folder.glob("*.gguf"))
    assert files == ["small-Q4_K_M.gguf", "small-Q8_0.gguf"]
    snap = snapshot_download("me/small-GGUF", cache_dir=tmp_path / "dl")
    model = AutoModelForCausalLM.from_pretrained(snap, gguf_file="small-Q8_0.gguf")   # transformers' GGUF loader
    assert model.config.num_hidden_layers == 2
    evals = json.loads((folder / "hfq_eval.json").read_text())
    assert evals["Q8_0"]["kl"] < evals["Q4_K_M"]["kl"]  # 8.5 bits lose less than 4.5
    card = ModelCard.load("me/small-GGUF")
    assert card.data.library_name == "gguf" and {"gguf", "q4_k_m", "q8_0"} <= set(card.data.tags)
    assert "llama-cli -hf me/small-GGUF:Q4_K_M" in card.text and "import hfq" in card.text
    row = next(ln for ln in card.text.splitlines() if ln.startswith("| Q8_0 |"))
    assert f"| {evals['Q8_0']['ppl']:.3f} | {evals['Q8_0']['kl']:.4f} |" in row
    # The card's command remakes the same file.
    command = next(ln for ln in card.text.splitlines() if ln.startswith("hfq export-gguf") and "Q8_0" in ln)
    args = shlex.split(command)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "again.gguf")
    assert main(args) == 0
    assert sha256_file(tmp_path / "again.gguf") == sha256_file(folder / "small-Q8_0.gguf")


def test_push_space_creates_the_compare_space(hub, export_dir, tmp_path, capsys):
    """`hfq push ... --space`: a gradio Space {repo}-compare with the page's app.py, front matter that
    huggingface_hub parses, and space.json naming the pushed variants, which the page then loads from the Hub."""
    import json
    from pathlib import Path

    from huggingface_hub import SpaceCard, hf_hub_download

    from hfq.cli import main
    from hfq.publish.hub import upload_folder

    upload_folder(export_dir("llama"), "me/tiny-base")   # the base, on the Hub as well as local
    out = tmp_path / "w"
    push = ["push", str(export_dir("llama")), "--variants", "rtn-int4-g128,Q8_0", "--repo", "me/tb", "--out", str(out),
            "--ctx", "64", "--chunks", "1", "--space", "--space-base", "me/tiny-base"]
    assert main(push) == 0
    assert "me/tb-compare (Space): http" in capsys.readouterr().out
    space = hub.repos["spaces/me/tb-compare"]
    assert space.sdk == "gradio" and len(_commits(hub, "spaces/me/tb-compare")) == 1
    src = Path(__file__).resolve().parents[1] / "spaces" / "hfq-compare"
    assert space.files["app.py"] == (src / "app.py").read_bytes()
    assert space.files["requirements.txt"] == (src / "requirements.txt").read_bytes()
    card = SpaceCard.load("me/tb-compare", repo_type="space")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.sdk_version
    assert card.data.models == ["me/tiny-base", "me/tb-rtn-int4-g128", "me/tb-GGUF"]
    cfg = json.loads(Path(hf_hub_download("me/tb-compare", "space.json", repo_type="space")).read_text())
    assert cfg == {"models": ["me/tiny-base", "me/tb-rtn-int4-g128", "me/tb-GGUF/tb-Q8_0.gguf"]}
    # the page built from that configuration loads every panel from the Hub and answers
    from hfq.space import comparison

    cmp = comparison(config=Path(hf_hub_download("me/tb-compare", "space.json", repo_type="space")))
    assert [s.kind for s in cmp.specs] == ["transformers", "transformers", "gguf"]
    *_, final = cmp.run("Return the value of", 6)
    texts = final[:3]
    assert all(t and not t.startswith("error") for t in texts[:2]), final
    pytest.importorskip("llama_cpp")
    assert texts[2] and not texts[2].startswith("error"), final
    assert main(push) == 0
    assert "me/tb-compare (Space): up to date, no commit" in capsys.readouterr().out


def test_push_space_refuses_a_local_base_before_making_anything(hub, base_dir, tmp_path, capsys):
    from hfq.cli import main

    assert main(["push", str(base_dir), "--variants", "nf4", "--repo", "me/x", "--out", str(tmp_path / "w"),
                 "--space"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hfq: error: --space: the base") and "--space-base NAMESPACE/NAME" in err
    assert not (tmp_path / "w").exists() and not hub.repos
