"""`hfq push ... --space`: a Gradio Space repo {repo}-compare holding the comparison page (spaces/hfq-compare)
and a space.json naming the pushed variants, so the page compares exactly what was pushed.

The Space's README front matter is the template's (spaces/hfq-compare/README.md) with `models:` set to the
pushed repos, written through huggingface_hub's YAML writer; space.json lists the base (a Hub id or the
embedded name) and up to three variants (Hub ids; GGUF files as namespace/name-GGUF/file.gguf)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .._resources import resource_dir
from ..atomic import atomic_dir
from ..embedded import EMBEDDED
from .hub import upload_folder
from .push import base_card_info

SPACE_FILES = ("app.py", "requirements.txt")
MAX_VARIANTS = 3   # the page shows the base and up to three variants


def space_base(base: str, base_id: str | None = None) -> str:
    """The base as the Space loads it: base_id (its Hub id), the embedded name, or a Hub id given as base."""
    if base_id:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", base_id):
            raise ValueError(f"--space-base {base_id!r} must be a Hub id, namespace/name.")
        return base_id
    embedded = Path(str(base)).name if (Path(str(base)) / "hfq-embedded.json").exists() else str(base)
    if embedded in EMBEDDED:
        return embedded
    first = base_card_info(str(base))[0]
    if not first:
        raise ValueError(f"--space: the base {base!r} is a local folder, which a Space cannot load; pass its Hub id "
                         f"with --space-base NAMESPACE/NAME, or push from an embedded name ({', '.join(EMBEDDED)}).")
    return first


def space_models(base: str, records: list[dict], base_id: str | None = None) -> list[str]:
    """space.json's models: the base as the Space can load it, then the variants' Hub names."""
    first = space_base(base, base_id)
    names = []
    for r in records:
        names.append(f"{r['repo_id']}/{Path(r['file']).name}" if r.get("kind") == "gguf" else r["repo_id"])
    return [first, *names[:MAX_VARIANTS]]


def write_space(out: str | Path, repo: str, base: str, records: list[dict], base_id: str | None = None) -> Path:
    """The Space's folder, out/{name}-compare, written atomically: app.py, requirements.txt, README.md, space.json."""
    from huggingface_hub import SpaceCard

    src = resource_dir("spaces") / "hfq-compare"
    models = space_models(base, records, base_id)
    folder = Path(out) / f"{repo.split('/')[-1]}-compare"
    card = SpaceCard.load(src / "README.md")
    hub_base = models[0] if models[0] not in EMBEDDED else base_card_info(models[0])[0]
    card.data.models = [m for m in dict.fromkeys([hub_base, *(r["repo_id"] for r in records)]) if m]
    with atomic_dir(folder) as tmp:
        for name in SPACE_FILES:
            shutil.copyfile(src / name, tmp / name)
        (tmp / "README.md").write_text(str(card), encoding="utf-8")
        (tmp / "space.json").write_text(json.dumps({"models": models}, indent=2) + "\n", encoding="utf-8")
    return folder


def push_space(out: str | Path, repo: str, base: str, records: list[dict], *, base_id: str | None = None,
               private: bool = False, dry_run: bool = False, resume_hint: str = "") -> tuple[str, str | None]:
    """Write the Space folder and upload it to {repo}-compare (a gradio Space). Returns (space id, commit URL or
    None when nothing changed or dry_run). base_id: the base's Hub id when base is a local folder."""
    folder = write_space(out, repo, base, records, base_id)
    space_id = f"{repo}-compare"
    if dry_run:
        return space_id, None
    return space_id, upload_folder(folder, space_id, private=private, repo_type="space", space_sdk="gradio",
                                   message=f"hfq: compare {', '.join(r['variant'] for r in records)} with {base}",
                                   resume_hint=resume_hint)
