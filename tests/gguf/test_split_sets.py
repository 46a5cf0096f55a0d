"""Split GGUF exports (`--split-max-size`) as one set: one hfq.export_id in every shard (read back with gguf-py),
mixed, incomplete or renamed sets refused by check_gguf / `hfq verify` with one error naming the files, and the
real `hfq export-gguf` CLI killed with SIGKILL between every two steps of replacing a 4-shard set by a 2-shard
one (tests/kill_runner.py): afterwards the folder holds the old set or the new one byte for byte and nothing else,
once a reader (check_gguf) or the next export has resolved the journal, and llama-cpp-python loads it (in child
processes, tests/child_runs.py). Concurrent exports to one target leave one complete set."""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

import hfq
from child_runs import TESTS, run_each
from hfq.cli import main
from hfq.cli.verify import verify_path
from hfq.gguf.check import check_gguf

SPLIT = ["--split-max-size", "500KB"]
KINDS = {"old": ["--type", "Q8_0", *SPLIT], "new": ["--type", "Q4_0", *SPLIT], "single": ["--type", "Q8_0"],
         "other": ["--type", "Q8_0", *SPLIT]}   # "other": old's layout, from a copy of the model under another name


def _files(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.name[0] != "."}


def _hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name[0] == ".")


@pytest.fixture(scope="module")
def refs(export_dir, tmp_path_factory):
    """Each kind exported once, to completion, by the CLI: {kind: {file name: sha256}} and the folders."""
    src = export_dir("llama")
    root = tmp_path_factory.mktemp("split-refs")
    out = {}
    shutil.copytree(src, root / "tiny-other")   # general.name is the folder's name
    for kind, args in KINDS.items():
        model = root / "tiny-other" if kind == "other" else src
        assert main(["export-gguf", str(model), *args, "--out", str(root / kind / "m.gguf")]) == 0
        out[kind] = _files(root / kind)
    assert len(out["old"]) == 4 and len(out["new"]) == 2 and list(out["single"]) == ["m.gguf"]
    return src, root, out


def _first(names) -> str:
    return sorted(names)[0]


def test_every_shard_carries_one_export_id_and_llama_cpp_loads_the_set(refs, tmp_path):
    src, root, out = refs
    ids = {}
    for kind in ("old", "new", "other"):
        readers = [gguf.GGUFReader(root / kind / n) for n in sorted(out[kind])]
        got = {r.fields["hfq.export_id"].contents() for r in readers}
        assert len(got) == 1 and len(next(iter(got))) == 32, got
        ids[kind] = got.pop()
        h = check_gguf(root / kind / _first(out[kind]))
        assert len(h.tensors) == sum(len(r.tensors) for r in readers) == readers[0].fields[
            "split.tensors.count"].contents()
    assert len(set(ids.values())) == 3
    # the id is a hash of the bytes: the same export again is the same file, byte for byte
    assert main(["export-gguf", str(src), *KINDS["old"], "--out", str(tmp_path / "m.gguf")]) == 0
    assert _files(tmp_path) == out["old"]
    loads = run_each(TESTS / "gguf_load_runner.py", [str(root / k / _first(out[k])) for k in ("old", "new")],
                     tmp_path, "GGUF file", timeout=300, alone=("nonfinite",))
    assert [r["outcome"] for r in loads] == ["ok", "ok"], loads


def _copy(root: Path, kind: str, to: Path) -> Path:
    to.mkdir()
    for p in (root / kind).iterdir():
        shutil.copy(p, to / p.name)
    return to


def test_mixed_missing_and_renamed_sets_are_refused_naming_the_files(refs, tmp_path, capsys):
    src, root, out = refs
    mixed = _copy(root, "old", tmp_path / "mixed")   # shard 2 of another 4-shard export
    shutil.copy(root / "other" / "m-00002-of-00004.gguf", mixed / "m-00002-of-00004.gguf")
    with pytest.raises(ValueError, match=r"m-00001-of-00004.gguf, m-00002-of-00004.gguf, m-00003-of-00004.gguf, "
                       r"m-00004-of-00004.gguf in .* are not one whole export \(hfq.export_id differs: \w+ in "
                       r"m-00001-of-00004.gguf, m-00003-of-00004.gguf, m-00004-of-00004.gguf; \w+ in "
                       r"m-00002-of-00004.gguf\).*re-export to .*m.gguf \(with --overwrite\)"):
        check_gguf(mixed / "m-00001-of-00004.gguf")
    assert main(["verify", str(mixed / "m-00001-of-00004.gguf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hfq: error: ") and "not one whole export" in err[0]
    renamed = _copy(root, "old", tmp_path / "renamed")   # shard 2 of the 2-shard export, renamed into the set
    shutil.copy(root / "new" / "m-00002-of-00002.gguf", renamed / "m-00002-of-00004.gguf")
    with pytest.raises(ValueError, match=r"not one whole export \(m-00002-of-00004.gguf says split 2 of 2; "
                       r"hfq.export_id differs"):
        check_gguf(renamed / "m-00001-of-00004.gguf")
    missing = _copy(root, "old", tmp_path / "missing")
    (missing / "m-00004-of-00004.gguf").unlink()
    with pytest.raises(ValueError, match=r"split set of .*m-00001-of-00004.gguf \(split.count 4\) lacks "
                       r"m-00004-of-00004.gguf in "):
        check_gguf(missing / "m-00001-of-00004.gguf")
    with pytest.raises(ValueError, match=r"m-00002-of-00004.gguf is shard 2 of 4 .* pass the first shard, "
                       r".*m-00001-of-00004.gguf\."):
        check_gguf(root / "old" / "m-00002-of-00004.gguf")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS),
                                                          os.environ.get("PYTHONPATH", "")])}


def _start(src, dest: Path, kind: str, step: int, overwrite=True, runner="kill_runner.py"):
    cmd = [sys.executable, str(TESTS / runner), str(step), str(dest.parent), "export-gguf", str(src), *KINDS[kind],
           "--out", str(dest), *(["--overwrite"] if overwrite else [])]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _place(root: Path, kind: str | None, d: Path) -> Path:
    d.mkdir()
    if kind:
        for p in (root / kind).iterdir():
            shutil.copy(p, d / p.name)
    return d / "m.gguf"


def test_kill_9_at_every_publishing_step_leaves_the_old_or_the_new_set(refs, tmp_path, caplog):
    src, root, out = refs
    # the steps of replacing old by new, as the runner sees them (a run that is not killed)
    probe = _start(src, _place(root, "old", tmp_path / "probe"), "new", 0)
    stdout, stderr = probe.communicate(timeout=300)
    assert probe.returncode == 0, stderr
    steps = stdout.split("steps: ", 1)[1].strip().split(" | ")
    assert _files(tmp_path / "probe") == out["new"] and _hidden(tmp_path / "probe") == []
    # journal, 4 moved aside, journal, 2 moved in, the journal's removal (the commit), 4 backups deleted, the lock
    assert len(steps) == 14 and steps[8] == "unlink .m.gguf.journal", steps
    # killed just before step N: 1-9 up to the commit, then in the middle of deleting the backup and before the
    # lock's removal; to a fresh path and over a single file, between the two shards moving in; and recovered by
    # the next export instead of a reader, with two old shards aside and with one new shard in
    points = [(f"step{i}", "old", i, "reader") for i in range(1, 10)] + [("backup-deleted", "old", 11, "reader"),
              ("lock", "old", 14, "reader"), ("fresh", None, 4, "reader"), ("single", "single", 5, "reader"),
              ("aside", "old", 3, "export"), ("moving-in", "old", 8, "export")]
    runs = [(name, kind, how, tmp_path / name, _start(src, _place(root, kind, tmp_path / name), "new", step,
                                                       overwrite=kind is not None))
            for name, kind, step, how in points]
    for name, kind, how, d, p in runs:
        p.communicate(timeout=600)
        assert p.returncode == -9, (name, p.returncode)
    outcomes, firsts = {}, []
    for name, kind, how, d, p in runs:
        journal = (d / ".m.gguf.journal").exists()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hfq.atomic_set"):
            if how == "reader":   # `hfq verify` on the first shard the user had (or would get)
                first = d / _first(out[kind] if kind else out["new"])
                try:
                    verify_path(str(first))
                except ValueError as e:
                    assert "does not exist" in str(e) and kind is not None, (name, e)
            else:
                assert main(["export-gguf", str(src), *KINDS["new"], "--out", str(d / "m.gguf"), "--overwrite"]) == 0
        said = [r.getMessage() for r in caplog.records if r.name == "hfq.atomic_set"]
        assert len(said) == (1 if journal else 0), (name, said)
        files = _files(d)
        state = "new" if files == out["new"] else "old" if kind and files == out[kind] else \
            "absent" if not files else f"MIXED {sorted(files)}"
        assert state in (("old", "new") if kind else ("absent", "new")), (name, state)
        if how == "export":
            assert state == "new"
        assert _hidden(d) == [], (name, _hidden(d))   # no journal, backup, staging or lock left
        outcomes[name] = (state, journal)
        if files:
            firsts.append(str(d / _first(files)))
            check_gguf(firsts[-1])
    print(f"\nkill -9 during publishing (state after recovery, a journal was left): {outcomes}")
    assert {s for s, _ in outcomes.values()} >= {"old", "new"}
    loads = run_each(TESTS / "gguf_load_runner.py", firsts, tmp_path, "GGUF file", timeout=600, alone=("nonfinite",))
    assert all(r["outcome"] == "ok" for r in loads), loads
    for name, kind, how, d, p in runs:   # the next run on each folder is clean
        assert main(["export-gguf", str(src), *KINDS["new"], "--out", str(d / "m.gguf"), "--overwrite"]) == 0
        assert _files(d) == out["new"] and _hidden(d) == [], name


def test_concurrent_exports_to_one_target_leave_one_whole_set(refs, tmp_path):
    src, root, out = refs
    dest = _place(root, "old", tmp_path / "d")
    runs = [(kind, _start(root / "tiny-other" if kind == "other" else src, dest, kind, 0))   # as refs made them
            for kind in ("new", "single", "other", "new")]
    results = [(kind, p.communicate(timeout=600), p.returncode) for kind, p in runs]
    for kind, (stdout, stderr), rc in results:
        assert rc == 0 or (rc == 1 and "is being written by another hfq process" in stderr), (kind, rc, stderr)
    assert any(rc == 0 for _, _, rc in results)
    files = _files(dest.parent)
    assert files in [out[kind] for kind, _, rc in results if rc == 0], sorted(files)
    assert _hidden(dest.parent) == []
    check_gguf(dest.with_name(_first(files)))


def _id_hash(files: list[Path]) -> str:
    """sha256 of the files with their hfq.export_id value read as 32 '0's, written here from the format: the id
    is the first key-value, right after the 24-byte header, as u64 key length, key, u32 type 8, u64 length, value."""
    h, key = hashlib.sha256(), b"hfq.export_id"
    at = 24 + 8 + len(key) + 4 + 8
    for f in files:
        b = bytearray(f.read_bytes())
        assert bytes(b[24 + 8:24 + 8 + len(key)]) == key
        b[at:at + 32] = b"0" * 32
        h.update(b)
    return h.hexdigest()[:32]


@pytest.mark.parametrize("kind", ["single", "old"])
def test_verify_matches_the_export_id_against_every_byte(refs, tmp_path, kind, capsys):
    src, root, out = refs
    d = _copy(root, kind, tmp_path / kind)
    files = [d / n for n in sorted(out[kind])]
    first = files[0]
    stored = gguf.GGUFReader(first).fields["hfq.export_id"].contents()
    assert _id_hash(files) == stored   # the id is what the format says it is
    assert verify_path(str(first))["export_id"] == stored
    assert main(["verify", str(first)]) == 0 and f"hfq.export_id {stored} matched" in capsys.readouterr().out
    last = files[-1]   # one flipped bit in the last tensor's data: still a valid GGUF, caught by the checksum
    b = bytearray(last.read_bytes())
    b[-3] ^= 0x10
    last.write_bytes(b)
    check_gguf(first)   # the header checks cannot see it
    assert main(["verify", str(first)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no longer match their hfq.export_id" in err[0] and str(last) in err[0]


def test_verify_of_a_gguf_hfq_did_not_write_says_so(refs, tmp_path, capsys):
    src, root, out = refs
    r = gguf.GGUFReader(root / "single" / "m.gguf")
    w = gguf.GGUFWriter(tmp_path / "plain.gguf", "llama")   # the same tensors, written by gguf-py without the id
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("hfq.export_id", "general.architecture"):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), t, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), t)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(t.data.shape), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert verify_path(str(tmp_path / "plain.gguf"))["export_id"] is None
    assert main(["verify", str(tmp_path / "plain.gguf")]) == 0
    assert "not an hfq export" in capsys.readouterr().out
