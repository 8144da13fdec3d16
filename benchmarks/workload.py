"""The workload every speed candidate runs, so that their figures compare.

Embedding ``VOCAB -> EMBED`` -> one recurrent layer of ``hidden`` units -> Linear to ``VOCAB``
logits, batch ``BATCH`` x ``SEQUENCE`` tokens, AdamW with warmup + cosine after global-norm
clipping, fp32. :func:`reference_model` is the seqmodel model of a (cell, hidden): the seqmodel
candidates train it and the PyTorch candidates copy its weights (:mod:`benchmarks.torch_copy`).
"""

from __future__ import annotations

BATCH, SEQUENCE, VOCAB, EMBED = 32, 128, 65, 64
GATES = {"lstm": 4, "gru": 3, "elman": 1}


def batch(seed: int = 0):
    """``(inputs, targets)``, each ``(BATCH, SEQUENCE)`` int32: random tokens, shifted by one."""
    import numpy as np

    tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQUENCE + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def optax_chain(total_steps: int = 10_000):
    """The optimizer of the comparison: clip to global norm 1, AdamW with warmup + cosine."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, total_steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))


def reference_model(cell: str, hidden: int, **config):
    """The seqmodel model of this workload (seed 0); ``config``: further ``ModelConfig`` fields
    (``fast_recurrence``, ``fold_embedding``) that change how it runs, not its weights."""
    from flax import nnx

    from seqmodel.nn.model import ModelConfig, SequenceModel

    model_config = ModelConfig(vocab_size=VOCAB, cell=cell, hidden_size=hidden,
                               embed_size=EMBED, **config)
    return SequenceModel(model_config, rngs=nnx.Rngs(0))
