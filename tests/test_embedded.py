"""The embedded model's Python spelling, hfq.local_model, without building the real model (tests/test_models.py
builds it, marked slow)."""

import pytest

import hfq
import hfq.embedded


def test_local_model_is_the_documented_spelling_and_names_the_known_models():
    assert hfq.local_model is hfq.embedded.local_model and "local_model" in hfq.__all__
    with pytest.raises(ValueError, match=r"^'gemma-3-27b' is not an embedded model; known: gemma-3-270m$"):
        hfq.local_model("gemma-3-27b")
