"""Load GGUF files in llama-cpp-python one after another in this process and print one JSON line per file:
    python gguf_load_runner.py FILES.json START
A file is loaded as `hfq eval` / `hfq generate` use it: the model (ggml's extra buffer types off, see
shared/notes/llama-cpp-python.md), a context, a tokenized prompt and one decode. outcome: "ok" (logits finite),
"nonfinite" (loads, logits NaN/Inf), "load-error" (llama-cpp-python raised). An abort (GGML_ASSERT, an uncaught C++
exception) ends the process; the parent counts the file it was on as a crash and starts a new process after it.
Imports only llama_cpp and numpy, so a restart after a crash is quick."""
import json
import os
import sys

import numpy as np

import llama_cpp

_orig = llama_cpp.llama_cpp.llama_model_default_params


def _params():
    p = _orig()
    if hasattr(p, "use_extra_bufts"):
        p.use_extra_bufts = False   # AMX repack crashes on clean files on some CPUs
    return p


llama_cpp.llama_cpp.llama_model_default_params = _params
llama_cpp.llama_model_default_params = _params


def load(path: str) -> str:
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=1, n_threads_batch=1,
                          verbose=False)
    try:
        ids = llm.tokenize(b"The harbour town woke slowly.", add_bos=True)[:16]
        llm.eval(ids)
        return "ok" if np.isfinite(np.asarray(llm.scores[len(ids) - 1])).all() else "nonfinite"
    finally:
        llm.close()


def main():
    files, start = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])
    for i, path in enumerate(files):
        if i < start:
            continue
        print(json.dumps({"i": i, "started": True}), flush=True)
        try:
            rec = {"i": i, "outcome": load(path)}
        except Exception as e:   # noqa: BLE001  (what it is, is the result)
            rec = {"i": i, "outcome": "load-error", "error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(json.dumps(rec), flush=True)
    sys.stdout.flush()
    os._exit(0)   # skip interpreter teardown: llama.cpp's static destructors are not what is tested


if __name__ == "__main__":
    main()
