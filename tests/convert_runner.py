"""Run llama.cpp's convert_hf_to_gguf.py (the metadata oracle for GGUF export) as a subprocess:
    python convert_runner.py SRC_DIR OUT.gguf OUTTYPE PRE_FALLBACK LLAMA_CPP_SRC
The tiny test tokenizers are trained in-process, so the converter's hash table cannot know them: an unknown BPE
pre-tokenizer gets PRE_FALLBACK, the name the converter gives real models of that architecture. sentencepiece is
not installed here and the test folders hold no tokenizer.model, so a placeholder module satisfies the import the
converter makes before it looks for that file."""
import sys
src, out, outtype, pre = sys.argv[1], sys.argv[2], sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else "")
root = sys.argv[5]
sys.path[:0] = [root, root + "/gguf-py"]
import types
sp = types.ModuleType("sentencepiece")   # only imported before the converter looks for tokenizer.model
sp.SentencePieceProcessor = None
import importlib.machinery
sp.__spec__ = importlib.machinery.ModuleSpec("sentencepiece", None)
sys.modules.setdefault("sentencepiece", sp)
import conversion.base as base
orig = base.TextModel.get_vocab_base_pre
def patched(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        if not pre:
            raise
        return pre
base.TextModel.get_vocab_base_pre = patched
import convert_hf_to_gguf as c
sys.argv = ["convert_hf_to_gguf.py", src, "--outtype", outtype, "--outfile", out]
c.main()
