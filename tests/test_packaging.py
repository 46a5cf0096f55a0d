"""The wheel carries extensions/ and model_cards/, the layers import only downward, and `import hfq` stays light."""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The rooms of hfq/ that may import transformers (docs/architecture.md lists the same), and the layer of each: a
# room imports only from its layer and below. embedded, publish and space load models through integration.
TRANSFORMERS_ALLOWED = {"config", "integration", "evaluation", "quantizer", "cli"}
LAYER = {
    # 1: the user's config, bit layouts, the architecture registry, atomic writes
    "_version": 1, "_resources": 1, "config": 1, "formats": 1, "architectures": 1, "atomic": 1, "atomic_set": 1,
    "kernels": 2,                                   # torch.ops.hfq.* schemas, reference bodies, native builds
    "nn": 3, "algorithms": 3,                       # HfqLinear; what chooses codes and scales
    # 4: model surgery, checkpoints, GGUF export, standard formats, evaluation, the embedded model, peft's LoRA layer
    "integration": 4, "checkpoint": 4, "verify": 4, "gguf": 4, "standard": 4, "evaluation": 4, "embedded": 4,
    "lora": 4,
    "quantizer": 5, "publish": 5,                   # transformers' hooks; variants, cards, Hub, demo
    "cli": 6, "space": 6,                           # the command line; the comparison page's logic
    "__init__": 7,
}
UNIX_ONLY = {"resource", "fcntl", "pwd", "grp", "termios"}


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
        if mod.startswith("hfq.") and mod != "hfq.__version__":
            other = mod.split(".")[1]
            if other == "__version__":
                continue
            assert LAYER[other] <= LAYER[me], f"{me} (layer {LAYER[me]}) imports {other} (layer {LAYER[other]})"


def _transformers_imports(source: str):
    """Every import of transformers in source, at module level or inside a function: import statements, and
    importlib.import_module / __import__ calls with a literal name."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        else:
            continue
        yield from (n for n in names if isinstance(n, str) and n.split(".")[0] == "transformers")


@pytest.mark.parametrize("path", sorted((ROOT / "hfq").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_declared_rooms_import_transformers(path):
    found = list(_transformers_imports(path.read_text()))
    assert not found or _top(path) in TRANSFORMERS_ALLOWED, (
        f"{path.relative_to(ROOT)} imports {found}; only {sorted(TRANSFORMERS_ALLOWED)} may. Call a function of "
        "hfq/integration.py instead (load_causal_lm, load_tokenizer, token_streamer).")


def test_the_transformers_check_sees_every_form():
    src = ("import transformers\nfrom transformers.x import y\nimport torch\nfrom . import transformers_like\n"
           "def f():\n    from transformers import AutoTokenizer\n    importlib.import_module('transformers.z')\n"
           "    __import__('transformers')\n")
    assert list(_transformers_imports(src)) == ["transformers", "transformers.x", "transformers",
                                                "transformers.z", "transformers"]
    assert _top(ROOT / "hfq" / "space" / "models.py") not in TRANSFORMERS_ALLOWED


def test_the_transformers_rooms_are_the_documented_ones():
    text = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    sentence = text.split("Only `config`", 1)[1].split("import transformers", 1)[0]
    assert set(re.findall(r"`(\w+)`", "`config`" + sentence)) == TRANSFORMERS_ALLOWED, sentence


def test_every_room_has_a_layer():
    rooms = {p.name.removesuffix(".py") for p in (ROOT / "hfq").iterdir() if p.suffix == ".py" or
             (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms == set(LAYER), rooms ^ set(LAYER)


def _module_level_imports(path: Path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.module


@pytest.mark.parametrize("path", sorted((ROOT / "hfq").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unix_only_module_at_import_time(path):
    assert not set(_module_level_imports(path)) & UNIX_ONLY, f"{path.name}: import it inside the function, guarded"


def test_import_hfq_registers_and_loads_no_publishing_code():
    code = ("import sys, hfq\n"
            "from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING\n"
            "assert AUTO_QUANTIZER_MAPPING['hfq'] is hfq.HfqQuantizer\n"
            "assert AUTO_QUANTIZATION_CONFIG_MAPPING['hfq'] is hfq.HfqConfig\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('hfq.publish', 'hfq.cli', 'hfq.space')))\n"
            "assert not loaded, loaded\n"
            "assert 'resource' not in sys.modules   # Unix only: evaluation imports it when it measures memory\n"
            "assert callable(hfq.push_variants) and callable(hfq.make_card) and 'hfq.publish.push' in sys.modules\n"
            "assert hfq.evaluate is __import__('hfq.evaluation').evaluation.evaluate\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_script_module_shadows_an_optional_package():
    # `python benchmarks/x.py` puts benchmarks/ first on sys.path, and pytest puts tests/ there; transformers then
    # imports optional packages by name (benchmarks/kernels.py once shadowed `kernels`, breaking every model import).
    import importlib.metadata

    import transformers.utils.import_utils as iu

    probed = set(re.findall(r'_is_package_available\(\s*"([A-Za-z0-9_]+)"', Path(iu.__file__).read_text()))
    assert "kernels" in probed and len(probed) > 50, "transformers' probe list moved: read import_utils.py"
    installed = set(importlib.metadata.packages_distributions())
    scripts = {p.stem for d in ("benchmarks", "tests") for p in (ROOT / d).glob("*.py")} - {"conftest"}
    assert not scripts & (probed | installed), sorted(scripts & (probed | installed))


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
    assert "hfq/_spaces/hfq-compare/app.py" in names and "hfq/_spaces/hfq-compare/README.md" in names
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
    assert len(cmds) == 2 and cmds[0] == 'pip install ".[demo]" && hfq demo'
    assert cmds[1] in (ROOT / ".ci" / "run").read_text().splitlines()
