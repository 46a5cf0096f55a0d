"""`hfq verify`: every check hfq runs on load, from the files alone, plus the model card's sha256 of every file."""

from __future__ import annotations

import json
from pathlib import Path


def add_parsers(sub) -> None:
    v = sub.add_parser("verify", help="check a saved hfq checkpoint (or GGUF file): layouts, values, sha256s")
    v.add_argument("path", help="hfq checkpoint folder or .gguf file")
    v.add_argument("--json", action="store_true", help="print what was checked as JSON")
    v.set_defaults(handler=_cmd_verify)


def verify_path(path: str) -> dict:
    """verify_checkpoint for a folder, check_gguf for a .gguf file; raises ValueError naming what is wrong."""
    p = Path(path)
    if p.suffix == ".gguf" and not p.is_dir():   # check_gguf first: a killed export may have moved it aside
        from ..gguf.export import check_gguf
        from ..gguf.split import SHARD, check_export_id, shard_names

        h = check_gguf(p)
        count = h.get("split.count") or 1
        files = [p] if count == 1 else [p.with_name(n) for n in shard_names(SHARD.fullmatch(p.name).group(1), count)]
        export_id = check_export_id(files)   # hfq's own exports: a checksum of every byte
        return {"path": str(p), "files": count, "layers": None, "sha256_checked": len(files) if export_id else 0,
                "export_id": export_id}
    if not p.exists():
        raise ValueError(f"{path} does not exist, so it has no config.json; pass an hfq checkpoint folder or a "
                         ".gguf file.")
    if not p.is_dir():
        raise ValueError(f"{path} is neither a checkpoint folder nor a .gguf file.")
    from ..checkpoint import check_source
    from ..verify import verify_checkpoint

    check_source(str(p))   # what every command checks first: no remote code, a valid quantization_config
    report = verify_checkpoint(p)
    if report.pop("hfq", False):   # the model built from config.json must match the files too, as on load
        from ..quantizer import verify_model_structure

        verify_model_structure(p)
    return report


def _cmd_verify(args) -> int:
    report = verify_path(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    elif "export_id" in report:
        what = (f"hfq.export_id {report['export_id']} matched every byte" if report["export_id"] else
                "not an hfq export, so no checksum to match")
        print(f"{report['path']}: OK ({report['files']} file(s), header and tensors checked, {what})")
    else:
        print(f"{report['path']}: OK ({report['files']} weight file(s), {report['layers'] or 0} quantized layers "
              f"checked, {report['sha256_checked']} sha256 from README.md matched)")
    return 0
