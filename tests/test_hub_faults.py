"""`hfq push` under network faults and with a secret token, against the local Hub (tests/hub_server.py) and the
real huggingface_hub client: a dropped connection mid-upload or an HTTP error gives one `hfq: error:` line, every
local file stays byte for byte, and the same command afterwards uploads everything in one commit; a fake token
appears in no log line (DEBUG), stdout, stderr, exception, traceback, card or written file."""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from huggingface_hub import constants

from helpers import WORDS, save_tiny_word_base
from hfq.cli import main
from hub_server import LocalHub, online

TOKEN = "hf_FAKEtok3nN3verLogMe0123456789abcdef"
TEXT = " ".join(WORDS[(i * 7) % 18] for i in range(600))
REPO = "me/tiny-nf4"


@pytest.fixture(scope="module")
def local_hub():
    with LocalHub(int(os.environ["HFQ_TEST_HUB_PORT"]), tokens={TOKEN: "me"}) as hub:
        yield hub


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    yield online(local_hub, monkeypatch, tmp_path, TOKEN)
    local_hub.fail = None


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A base and the working folder of a dry-run push (variant made, evaluated and carded; nothing uploaded)."""
    root = tmp_path_factory.mktemp("faults")
    base = save_tiny_word_base(root / "base", "---\nlicense: apache-2.0\n---\n# tiny base\n")
    (root / "eval.txt").write_text(TEXT)
    assert main(_args(base, root / "eval.txt", root / "work") + ["--dry-run"]) == 0
    return base, root / "eval.txt", root / "work"


def _args(base, text, work):
    return ["push", str(base), "--variants", "nf4", "--repo", "me/tiny", "--text", str(text), "--ctx", "64",
            "--chunks", "2", "--out", str(work)]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _commits(hub, repo_id=REPO):
    repo = hub.repos.get(repo_id)
    return [] if repo is None else [c for c in repo.commits if c["summary"] != "initial commit"]


@pytest.fixture
def work(made, tmp_path):
    base, text, work = made
    shutil.copytree(work, tmp_path / "work")
    return base, text, tmp_path / "work"


COMMIT = "/api/models/me/tiny-nf4/commit/"


@pytest.mark.parametrize("fault", ["mid-body", 500, 429, 401])   # 401: the token expired mid-push
def test_fault_mid_upload_fails_clearly_keeps_files_and_retry_succeeds(hub, work, capsys, fault):
    base, text, folder = work
    before = _snapshot(folder)
    hub.fail = lambda method, path: fault if method == "POST" and path.startswith(COMMIT) else None
    assert main(_args(base, text, folder)) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hfq: error: pushing {REPO} failed: "), err
    assert f"Nothing local was removed: {folder / 'tiny-nf4'} is intact" in lines[0]
    assert "Resume with: hfq push" in lines[0] and "Already pushed: none" in lines[0]
    if fault != "mid-body":
        assert str(fault) in lines[0]
    after = _snapshot(folder)   # the card and results.json name the command that made them: this one, not the dry run
    assert {k for k in before if after[k] != before[k]} <= {"tiny-nf4/README.md", "results.json"}
    assert after["tiny-nf4/model.safetensors"] == before["tiny-nf4/model.safetensors"] and _commits(hub) == []
    # after the fault: the same command uploads everything, in one commit, and nothing local changed
    hub.fail = None
    assert main(_args(base, text, folder)) == 0
    assert f"{REPO}: http" in capsys.readouterr().out
    commits = _commits(hub)
    assert len(commits) == 1 and _snapshot(folder) == after
    local = {p: (folder / "tiny-nf4" / p).read_bytes() for p in _snapshot(folder / "tiny-nf4")}
    assert {p: hub.repos[REPO].files[p] for p in local} == local
    assert main(_args(base, text, folder)) == 0 and len(_commits(hub)) == 1   # up to date: no second commit


@pytest.mark.parametrize("fault", ["stall", "stall-after"])
def test_commit_stalled_past_the_timeout_fails_clearly_and_retry_succeeds(hub, work, capsys, monkeypatch, fault):
    """The Hub accepts the commit, then sends nothing for a minute ("stall": the commit is never made;
    "stall-after": it is made but never confirmed). huggingface_hub's client has no timeout of its own; hfq's
    (HFQ_PUSH_TIMEOUT, 2 s here) ends the push with one error line, from the CLI and from push_variants."""
    from hfq.publish import push_variants
    from hfq.publish.hub import PushError

    base, text, folder = work
    monkeypatch.setenv("HFQ_PUSH_TIMEOUT", "2")
    hub.stall = 60.0
    before, asked = _snapshot(folder), []

    def stalled(method, path):
        if method == "POST" and path.startswith(COMMIT):
            asked.append(time.monotonic())
            return fault
        return None
    hub.fail = stalled
    assert main(_args(base, text, folder)) == 1
    waited = time.monotonic() - asked[0]
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hfq: error: pushing {REPO} failed: the Hub did not answer "
                                                   "within 2 s ("), err
    assert "Timeout" in lines[0] and "Traceback" not in err
    assert f"Nothing local was removed: {folder / 'tiny-nf4'} is intact" in lines[0]
    assert "Resume with: hfq push" in lines[0]
    assert 2 <= waited < 20, waited   # the client gave up after its timeout, long before the server's 60 s
    after = _snapshot(folder)
    assert {k for k in before if after[k] != before[k]} <= {"tiny-nf4/README.md", "results.json"}
    assert after["tiny-nf4/model.safetensors"] == before["tiny-nf4/model.safetensors"]
    local = {p: (folder / "tiny-nf4" / p).read_bytes() for p in _snapshot(folder / "tiny-nf4")}
    if fault == "stall":   # never applied: nothing on the Hub; the Python API fails the same way
        assert _commits(hub) == []
        with pytest.raises(PushError, match=r"pushing me/tiny-nf4 failed: the Hub did not answer within 2 s"):
            push_variants(str(base), ["nf4"], "me/tiny", out=folder, text=TEXT, ctx=64, chunks=2)
        assert _commits(hub) == [] and _snapshot(folder / "tiny-nf4").keys() == local.keys()
    else:                  # applied whole: one commit with every file, none partial
        assert len(_commits(hub)) == 1 and {p: hub.repos[REPO].files[p] for p in local} == local
    hub.fail = None
    assert main(_args(base, text, folder)) == 0
    assert f"{REPO}: " in capsys.readouterr().out
    final = {p: (folder / "tiny-nf4" / p).read_bytes() for p in _snapshot(folder / "tiny-nf4")}
    assert len(_commits(hub)) == 1   # stall-after: the retry finds everything there and makes no second commit
    assert {p: hub.repos[REPO].files[p] for p in final} == final
    assert _snapshot(folder)["tiny-nf4/model.safetensors"] == before["tiny-nf4/model.safetensors"]


def test_bad_push_timeout_is_refused_before_anything_is_made(hub, work, capsys, monkeypatch):
    base, text, folder = work
    monkeypatch.setenv("HFQ_PUSH_TIMEOUT", "soon")
    before = _snapshot(folder)
    assert main(_args(base, text, folder)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hfq: error: HFQ_PUSH_TIMEOUT='soon' is not a number of seconds above 0; unset it (300) or set "
                   "e.g. HFQ_PUSH_TIMEOUT=600."]
    assert _snapshot(folder) == before and hub.log == []


def test_transient_faults_are_retried_without_a_duplicate_commit(hub, work, capsys, monkeypatch):
    """One dropped LFS upload and one HTTP 500 on preupload: huggingface_hub retries both; one commit results."""
    base, text, folder = work
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.lfs_threshold = 10_000
    seen = []

    def once(method, path):
        kind = "lfs" if method == "PUT" and path.startswith("/_lfs/") else "pre" if "/preupload/" in path else None
        if kind and kind not in seen:
            seen.append(kind)
            return "mid-body" if kind == "lfs" else 500
        return None
    hub.fail = once
    assert main(_args(base, text, folder)) == 0, capsys.readouterr().err
    assert sorted(seen) == ["lfs", "pre"] and len(_commits(hub)) == 1
    assert "model.safetensors" in hub.repos[REPO].lfs
    assert hub.repos[REPO].files["model.safetensors"] == (folder / "tiny-nf4" / "model.safetensors").read_bytes()


def _all_text(e: BaseException) -> str:
    return "".join(traceback.format_exception(e)) + repr(e) + repr(getattr(e, "__cause__", None))


def test_token_never_appears_in_logs_output_errors_or_files(hub, work, capsys, caplog, tmp_path):
    import huggingface_hub.utils.logging as hf_logging

    base, text, folder = work
    hf_logging.set_verbosity_debug()
    hf_logging.enable_propagation()
    caplog.set_level(logging.DEBUG)
    seen = []
    # a failing push: with -v (DEBUG logging) and --debug the exception and its whole traceback, else one line
    hub.fail = lambda method, path: 500 if method == "POST" and path.startswith(COMMIT) else None
    for flag in ("-v", "--debug"):
        with pytest.raises(Exception) as e:
            main([flag, *_args(base, text, folder)])
        seen.append(_all_text(e.value))
    assert main(_args(base, text, folder)) == 1
    # a successful push at DEBUG level
    hub.fail = None
    assert main(["-v", *_args(base, text, folder)]) == 0
    out, err = capsys.readouterr()
    seen += [out, err, caplog.text]
    assert "pushing me/tiny-nf4 failed" in err and "HTTP 500" in seen[0]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for s in seen:
        assert TOKEN not in s and TOKEN[3:] not in s
    for p in folder.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p
    for repo in hub.repos.values():
        assert not [p for p, data in repo.files.items() if TOKEN.encode() in data]
    # the real CLI in a child process, at DEBUG level, with the server's error and then with a token it refuses
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_VERBOSITY": "debug", "HF_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    hub.fail = lambda method, path: "drop" if method == "POST" and path.startswith(COMMIT) else None
    hub.repos.clear()
    p = subprocess.run([sys.executable, "-m", "hfq.cli", "-v", *_args(base, text, folder)], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode != 0 and "PushError" in p.stderr
    assert TOKEN not in p.stdout + p.stderr and TOKEN[3:] not in p.stdout + p.stderr
    bad = TOKEN.replace("FAKE", "WRONG")
    p = subprocess.run([sys.executable, "-m", "hfq.cli", *_args(base, text, folder)], capture_output=True, text=True,
                       env={**env, "HF_TOKEN": bad}, stdin=subprocess.DEVNULL, timeout=300)
    last = p.stderr.strip().splitlines()[-1]   # under HF_HUB_VERBOSITY=debug the client logs every request first
    assert p.returncode == 1 and last.startswith("hfq: error: pushing me/tiny-nf4 failed") and "401" in last, last
    assert bad not in p.stdout + p.stderr and bad[3:] not in p.stdout + p.stderr
