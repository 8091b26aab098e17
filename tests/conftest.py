"""Shared fixtures and test settings; the builders themselves live in `builders.py`."""

import os

import pytest
import torch
from builders import build_tokenizer
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers_logging.set_verbosity_error()
# The test models are tiny: a second thread only adds synchronisation, and on a shared 2-core machine spinning OpenMP
# threads slowed whole tests tenfold.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer (word level, 40 tokens) built in code."""
    return build_tokenizer()
