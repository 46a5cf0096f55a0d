"""The wheel carries extensions/ and model_cards/, and the layers import only downward."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Which hfq modules may import transformers, and which hfq packages each layer may import.
TRANSFORMERS_ALLOWED = {"config", "integration", "quantizer", "models", "cli", "cli_gguf"}
LAYER = {"_version": 1, "config": 1, "formats": 1, "_resources": 1, "kernels": 2, "nn": 3, "algorithms": 3, "checkpoint": 4,
         "integration": 4, "gguf": 4, "evaluation": 4, "models": 4, "cards": 4, "quantizer": 5, "cli": 5, "cli_gguf": 5,
         "__init__": 6}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT / "hfq").with_suffix("")
    pkg_parts = list(rel.parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(["hfq", *base] + ([node.module] if node.module else []))
                if not node.module:
                    yield from (f"{mod}.{a.name}" for a in node.names)
                    continue
                yield mod
            else:
                yield node.module


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(ROOT / "hfq")
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted((ROOT / "hfq").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path):
    me = _top(path)
    for mod in _imports(path):
        if mod.split(".")[0] == "transformers":
            assert me in TRANSFORMERS_ALLOWED, f"{path.name} imports transformers; only {TRANSFORMERS_ALLOWED} may"
        if mod.startswith("hfq.") and mod != "hfq.__version__":
            other = mod.split(".")[1]
            if other == "__version__":
                continue
            assert LAYER[other] <= LAYER[me], f"{me} (layer {LAYER[me]}) imports {other} (layer {LAYER[other]})"


def test_formats_and_algorithms_never_import_transformers():
    for sub in ("formats", "algorithms", "kernels", "nn"):
        for p in (ROOT / "hfq" / sub).rglob("*.py"):
            assert not any(m.split(".")[0] == "transformers" for m in _imports(p)), p


def test_wheel_ships_extensions_and_model_cards(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("hfq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hfq/_extensions/README.md" in names
    assert "hfq/_model_cards/quantized.md.j2" in names
    assert "hfq/quantizer.py" in names and "hfq/kernels/ops.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: transformers<6,>=5.23" in text
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hfq = hfq.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    cmds = [ln.strip() for ln in readme.split("```bash", 1)[1].split("```", 1)[0].splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert len(cmds) == 2 and "hfq quantize gemma-3-270m" in cmds[0]
    assert cmds[1] in (ROOT / ".ci" / "run").read_text().splitlines()
