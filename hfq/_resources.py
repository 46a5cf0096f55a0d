"""Paths to the top-level extensions/, model_cards/ and spaces/ folders, in a source checkout or inside the wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """'extensions', 'model_cards' or 'spaces': hfq/_<name> in an installed wheel, <repo>/<name> in a checkout."""
    for cand in (_PKG / f"_{name}", _PKG.parent / name):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"hfq's {name}/ folder is missing from {_PKG}; reinstall hfq (`pip install --force-reinstall hfq`).")
