"""Train-step speed of seqmodel against PyTorch and a plain Flax RNN (see seqmodel.benchmarking).

    python benchmarks/bench_speed.py [--quick] [--json results.json]
"""

import sys

from seqmodel.benchmarking import main

if __name__ == "__main__":
    sys.exit(main())
