"""seqmodel's benchmark suite: timing and quality scripts with their PyTorch and Flax baselines.

It ships with the source checkout, apart from the library (``import seqmodel`` never loads it).
Run the scripts from the checkout, by path or as modules::

    python benchmarks/bench_speed.py --quick        # or: python -m benchmarks.bench_speed --quick
    python benchmarks/bench_generate.py --hidden 128 --batch 1 --steps 200
    seqmodel bench --quick                          # bench_speed, from a source checkout

The speed suite (``bench_speed``) is split by concern:

- :mod:`benchmarks.workload`: the shapes, batch and optimizer every candidate runs, and the
  reference model whose weights the PyTorch baselines copy;
- :mod:`benchmarks.torch_copy`: that copy (through :func:`seqmodel.interop.to_torch`) and the
  check that it gives the model's loss before anything is timed;
- :mod:`benchmarks.train_workers`: the timed train steps of seqmodel, ``fit``, Flax and PyTorch;
- :mod:`benchmarks.rooflines`: step FLOPs, the machine's GEMM ceilings, the roofline fraction;
- :mod:`benchmarks.candidates`: what to time (``Candidate``) and the worker process's entry point;
- :mod:`benchmarks.protocol`: one process per candidate, driven by JSON lines;
- :mod:`benchmarks.tables`: the printed and Markdown tables;
- :mod:`benchmarks.bench_speed`: the suite itself and its command line.
"""
