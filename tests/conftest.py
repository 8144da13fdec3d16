"""Shared test settings: deterministic fp32 math on the CPU, small shapes everywhere."""

import logging
import os
import pathlib
import tempfile

# One compilation cache for the whole run, the test processes and the workers they start (they
# inherit the environment): many tests compile the same small programs, and on 2 cores the
# suite's time is mostly compiling. Set before jax is imported; a user's own setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "seqmodel-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

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


# The library logger as it is before any test: the state every test starts and ends with.
_LIBRARY = logging.getLogger("seqmodel")
_PRISTINE_LOGGING = (list(_LIBRARY.handlers), _LIBRARY.propagate, _LIBRARY.level)


def _restore_library_logging():
    _LIBRARY.handlers[:] = _PRISTINE_LOGGING[0]
    _LIBRARY.propagate, _LIBRARY.level = _PRISTINE_LOGGING[1], _PRISTINE_LOGGING[2]


@pytest.fixture(autouse=True)
def library_logging_restored():
    """The command line configures the library's logger (a stderr handler, no propagation): put
    it back before and after each test. Before, too: a module-scoped fixture that runs the
    command line is set up ahead of this fixture, so what it configured would otherwise be taken
    for the starting state and outlive its module."""
    _restore_library_logging()
    yield
    _restore_library_logging()


def pytest_collection_modifyitems(config, items):
    """The slow tests first (the order within each group kept): with two xdist workers the
    run then ends on short tests, not with one worker idle while the other finishes a long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
