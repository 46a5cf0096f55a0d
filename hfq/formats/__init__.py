"""Bit layouts and the meaning of stored numbers, in pure torch. No transformers, no algorithms."""
