"""Shared test settings: deterministic fp32 math on the CPU, small shapes everywhere."""

import logging
import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data_dir(monkeypatch):
    """Point SEQMODEL_DATA_DIR at ../shared/data; skip when the shared corpus is absent."""
    if not (SHARED_DATA / "tinyshakespeare.txt").exists():
        pytest.skip(f"tinyshakespeare.txt not found in {SHARED_DATA} (shared data folder absent)")
    monkeypatch.setenv("SEQMODEL_DATA_DIR", str(SHARED_DATA))
    return SHARED_DATA


@pytest.fixture(autouse=True)
def library_logging_restored():
    """The command line configures the library's logger (a stderr handler, no propagation): put
    it back after each test, so that no test sees what an earlier one set up."""
    library = logging.getLogger("seqmodel")
    saved = (list(library.handlers), library.propagate, library.level)
    yield
    library.handlers[:] = saved[0]
    library.propagate, library.level = saved[1], saved[2]
