"""Shared fixtures: the shipped corpus prepared once per session, a private cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "wizard_of_oz.txt"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # On-the-fly preparations must never land in the user's ~/.cache during tests.
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path_factory.getbasetemp() / "gptcore-cache"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The shipped corpus, prepared into a session temp folder."""
    from gptcore.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "woz"
    prepare(CORPUS, out, progress=False)
    return out


@pytest.fixture(scope="session")
def data(prepared):
    """TokenData over the prepared shipped corpus."""
    from gptcore.data import TokenData

    return TokenData(prepared)
