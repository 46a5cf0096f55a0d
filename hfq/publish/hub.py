"""Upload a local folder to a Hub repo as one commit holding only what the Hub does not already have.

The token comes only from huggingface_hub itself (HF_TOKEN or `hf auth login`); hfq never takes, stores or logs
one. Unchanged files are recognised by content: the remote's LFS sha256, or its git blob id for small files.
Nothing to send means no commit. A network or HTTP failure raises PushError; the local folder is untouched, so
running the same push again uploads only what is still missing.

huggingface_hub's shared HTTP client has no timeout (2.x: `timeout=None`; HF_HUB_DOWNLOAD_TIMEOUT and
HF_HUB_ETAG_TIMEOUT cover downloads only), so a Hub that accepts a commit and never answers would hang the push
forever. For the push, the client waits at most HFQ_PUSH_TIMEOUT seconds (default 300) for each connect, send and
answer."""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..verify import sha256_file

logger = logging.getLogger(__name__)


class PushError(RuntimeError):
    """A push that did not complete; the message says what is kept locally and how to resume."""


@dataclass
class UploadPlan:
    repo_id: str
    upload: list[str]       # paths in repo to send
    unchanged: list[str]    # already on the Hub with the same content


def git_blob_id(path: Path) -> str:
    """git's object id of a file: sha1 over 'blob <size>\\0' + content (what the Hub reports for small files)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: Path) -> dict[str, Path]:
    """{path in repo: file} for every file under folder, hidden files and folders (temporary ones) excluded."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = p
    return out


def _same(remote, path: Path) -> bool:
    if remote is None or getattr(remote, "size", None) != path.stat().st_size:
        return False
    if getattr(remote, "lfs", None) is not None:
        return remote.lfs.sha256 == sha256_file(path)
    return remote.blob_id == git_blob_id(path)


def push_timeout() -> float:
    raw = os.environ.get("HFQ_PUSH_TIMEOUT", "").strip() or "300"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"HFQ_PUSH_TIMEOUT={raw!r} is not a number of seconds above 0; unset it (300) or set e.g. "
                         "HFQ_PUSH_TIMEOUT=600.")
    return value


@contextmanager
def _timeout(seconds: float):
    """The shared huggingface_hub client waits at most `seconds` per network step while the block runs."""
    from huggingface_hub.utils import get_session

    session = get_session()
    before = session.timeout
    session.timeout = seconds
    try:
        yield
    finally:
        session.timeout = before


def _timed_out(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or any("Timeout" in c.__name__ for c in type(e).__mro__)


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def plan_upload(repo_id: str, folder: Path, api=None, repo_type: str = "model") -> UploadPlan:
    """Which files of folder the repo lacks or holds with other content (a missing repo lacks them all)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    api = api or _api()
    files = local_files(folder)
    try:
        remote = {f.path: f for f in api.get_paths_info(repo_id, list(files), repo_type=repo_type)}
    except RepositoryNotFoundError:
        remote = {}
    upload = [p for p, f in files.items() if not _same(remote.get(p), f)]
    return UploadPlan(repo_id, upload, [p for p in files if p not in upload])


def upload_folder(folder: Path, repo_id: str, *, private: bool = False, message: str = "Upload with hfq",
                  resume_hint: str = "", repo_type: str = "model", space_sdk: str | None = None) -> str | None:
    """create_repo(exist_ok=True), then one commit with the missing or changed files. Returns the commit URL, or
    None when the repo already had everything. Raises PushError (network, HTTP, auth) with resume_hint.
    repo_type "space" needs space_sdk ("gradio")."""
    from huggingface_hub import CommitOperationAdd

    api, seconds = _api(), push_timeout()
    try:
        with _timeout(seconds):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
            plan = plan_upload(repo_id, folder, api, repo_type)
            if not plan.upload:
                logger.info("hfq: %s is up to date (%d files); no commit", repo_id, len(plan.unchanged))
                return None
            files = local_files(folder)
            logger.info("hfq: %s: uploading %d file(s), %d unchanged", repo_id, len(plan.upload),
                        len(plan.unchanged))
            ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in plan.upload]
            info = api.create_commit(repo_id, operations=ops, commit_message=message, repo_type=repo_type)
            return info.commit_url
    except (TypeError, AttributeError, NameError, KeyError, PushError):
        raise  # bugs, not the network
    except Exception as e:  # noqa: BLE001 (httpx/httpx2, HfHubHTTPError, auth and OS errors end the same way)
        why = (f"the Hub did not answer within {seconds:g} s ({_describe(e)}; HFQ_PUSH_TIMEOUT sets the wait), so "
               "the commit may or may not have been made; running the same push again checks what the Hub has"
               if _timed_out(e) else _describe(e))
        raise PushError(f"pushing {repo_id} failed: {why}. Nothing local was removed: {folder} is "
                        f"intact. {resume_hint}".strip()) from e


def _describe(e: Exception) -> str:
    first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
