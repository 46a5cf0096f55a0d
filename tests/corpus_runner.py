"""Load corruption-corpus cases (through hfq.evaluation.load) one after another in this process and print one JSON line per case:
    python corpus_runner.py CASES.json START
CASES.json: [[clean checkpoint folder, case folder], ...]; cases before START are skipped.
outcome: "same" (loads, logits equal the clean checkpoint's), "garbage" (loads, logits differ or are not finite),
"hfq-error" (a ValueError raised by hfq's own code), "other-error" (anything else). `verify` is the outcome of
hfq.cli.verify.verify_path (what `hfq info` and `hfq verify` run) on the same folder. A crash ends the process;
the parent counts the case it was on and starts a new process after it."""
import json
import logging
import sys
import traceback
from pathlib import Path

import torch
import transformers

import hfq  # noqa: F401  (registers the quantizer)
from hfq.evaluation import load
from hfq.cli.verify import verify_path

transformers.logging.set_verbosity_error()
logging.disable(logging.WARNING)
HFQ = str(Path(hfq.__file__).parent)
IDS = torch.arange(24).reshape(1, -1) % 500


def classify(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if isinstance(e, ValueError) and frames and frames[-1].filename.startswith(HFQ):
        return "hfq-error"
    return "other-error"


def logits(folder):
    m = load(folder)   # hfq.evaluate's loader: the path every CLI command takes (check_source, then from_pretrained)
    with torch.no_grad():
        return m(IDS).logits


def main():
    cases, start = json.loads(Path(sys.argv[1]).read_text()), int(sys.argv[2])
    refs = {}
    for i, (clean, case) in enumerate(cases):
        if i < start:
            continue
        if clean not in refs:
            refs[clean] = logits(clean)
        ref = refs[clean]
        print(json.dumps({"i": i, "started": True}), flush=True)
        rec = {"i": i}
        try:
            out = logits(case)
            same = bool(torch.isfinite(out).all()) and out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
            rec["outcome"] = "same" if same else "garbage"
        except Exception as e:   # noqa: BLE001  (what it is, is the result)
            rec["outcome"] = classify(e)
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            if rec["outcome"] == "other-error":
                rec["where"] = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in
                                           traceback.extract_tb(e.__traceback__)[-3:])
        try:
            verify_path(case)
            rec["verify"] = "ok"
        except Exception as e:   # noqa: BLE001
            rec["verify"] = classify(e)
            rec["verify_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
