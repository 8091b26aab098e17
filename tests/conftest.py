"""Shared fixtures and test settings; the builders themselves live in `builders.py`."""

import os

import pytest
from builders import build_tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer (word level, 40 tokens) built in code."""
    return build_tokenizer()
