"""GGUF: llama.cpp naming, per-tensor type mixes (and, later, file export)."""
