"""The configurations: the names they accept are the ones the library implements, and building a
parser or a config imports no JAX (the command line answers --help and flag errors at once)."""

import subprocess
import sys

from seqmodel import configs
from seqmodel.data import batching, text
from seqmodel.nn import cells, heads, linear, model
from seqmodel.nn import scans as linear_scan


def test_the_names_are_the_registries():
    assert configs.SERIAL_CELLS == tuple(cells.CELLS)
    assert configs.LINEAR_CELLS == tuple(linear.CELLS)
    assert configs.CELL_NAMES == model.CELLS
    assert configs.HEAD_NAMES == heads.HEADS
    assert configs.SCAN_METHODS == linear_scan.METHODS
    assert configs.DEFAULT_CHUNK_SIZE == linear_scan.DEFAULT_CHUNK_SIZE
    assert configs.BATCHINGS == batching.BATCHINGS and configs.TOKENIZERS == text.TOKENIZERS


def test_configs_and_every_parser_import_no_jax():
    code = ("import sys\n"
            "from seqmodel.configs import ModelConfig, TrainConfig\n"
            "ModelConfig(vocab_size=5); TrainConfig(steps=1)\n"
            "from seqmodel.cli import build_parser\n"
            "build_parser('all')\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] in "
            "('jax', 'flax', 'optax', 'orbax')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
