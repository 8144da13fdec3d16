"""How long training waits for checkpoint saves: the default GRU run with a few evaluations.

Runs :func:`seqmodel.training.fitting` once on ``--data`` (default ``python-stdlib``, a small validation part
so that evaluations stay short) with the default model and train settings, ``--steps`` steps and
an evaluation (and checkpoint) every ``--eval-every`` steps, and times every call the loop makes
into the run's checkpoint saver (:class:`seqmodel.training.fitting.saving.RunSaver`: ``save``, ``wait`` and
``close``, whichever the version has): the seconds during which no train step could be
dispatched because of a checkpoint. Prints the total, per save, and against the run's wall time.

Times hold for this machine and its load only; compare commits run in one sitting.

Run::

    python benchmarks/bench_save_wait.py                          # 200 steps, evaluations every 50
    python benchmarks/bench_save_wait.py --steps 40 --eval-every 10 --hidden-size 64   # quick look
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="python-stdlib")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--val-fraction", type=float, default=0.002,
                        help="validation part (small: evaluations are not what is measured)")
    parser.add_argument("--hidden-size", type=int, help="default: ModelConfig's")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    options = parser.parse_args()

    from flax import nnx

    from seqmodel import ModelConfig, SequenceModel, TrainConfig, fit, load_dataset
    from seqmodel.training.fitting import saving

    calls: dict[str, list[float]] = {}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls.setdefault(name, []).append(time.perf_counter() - started)
        return wrapper

    for name in ("save", "wait", "close"):
        if hasattr(saving.RunSaver, name):
            setattr(saving.RunSaver, name, timed(name, getattr(saving.RunSaver, name)))

    dataset = load_dataset(options.data, val_fraction=options.val_fraction)
    fields = dict(dataset.model_fields())
    if options.hidden_size:
        fields["hidden_size"] = options.hidden_size
    model = SequenceModel(ModelConfig(**fields), rngs=nnx.Rngs(0))
    config = TrainConfig(steps=options.steps, eval_every=options.eval_every)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = fit(model, dataset, config, out_dir=folder, progress=False)
        wall = time.perf_counter() - started
    saves = len(calls.get("save", []))
    waited = sum(sum(times) for times in calls.values())
    summary = {"steps": result.steps, "saves": saves, "wall_seconds": round(wall, 3),
               "checkpoint_wait_seconds": round(waited, 3),
               "wait_per_save_seconds": round(waited / max(saves, 1), 4),
               "by_call": {name: [round(t, 4) for t in times] for name, times in calls.items()},
               "hidden_size": model.config.hidden_size, "cell": model.config.cell}
    if options.json:
        print(json.dumps(summary))
        return
    print(f"{model.config.cell} h{model.config.hidden_size}: {result.steps} steps, {saves} saves "
          f"in {wall:.1f} s; the loop waited {waited:.3f} s for checkpoints "
          f"({waited / max(saves, 1):.3f} s per save, {100 * waited / wall:.1f}% of the run)")
    for name, times in calls.items():
        print(f"  {name}: {', '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()
