"""Shared test settings: deterministic fp32 math on the CPU, small shapes everywhere."""

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
