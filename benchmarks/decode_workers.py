"""The timed decoding candidates, one builder per kind (run inside a worker process, see
:mod:`benchmarks.protocol`): free-running generation and beam search, seqmodel's and PyTorch's.

Every builder takes the worker's spec (``hidden``, ``options``) and returns ``(run, hello,
extra)``: ``run(n)`` times ``n`` whole decodes (compile excluded) and returns their seconds;
``hello`` goes into the ready line (compile seconds, thread counts, what the parent checks for
agreement). The model is :func:`benchmarks.workload.reference_model` (LSTM, vocabulary 65,
embedding 64); the PyTorch candidates hold its weights and are checked against its loss before
they are timed (:mod:`benchmarks.torch_copy`).

Kinds and options (besides ``hidden``):

- ``generate``: ``variant`` (``generate``, with ``prompt`` and ``generate_options`` (keyword
  arguments of ``generate``, e.g. logits processors) when given; ``generate+eos``: an ``eos_id`` the model never emits,
  the chunked early-stopping loop running to its end; ``eos-at-once``: an ``eos_id`` every row
  emits at once; ``jit-step``: a Python loop over a jitted step), ``batch``, ``steps``;
- ``torch-generate``: ``implementation`` (``module``: ``nn.LSTM`` on length-1 sequences;
  ``cell``: ``nn.LSTMCell``), ``mode`` (``eager``, ``compile``), ``threads``, ``batch``,
  ``steps``;
- ``beam`` / ``torch-beam``: ``beams``, ``steps`` (batch 1, no eos: every step runs), and for
  PyTorch ``implementation``, ``mode``, ``threads``; both report the best beam's first tokens
  (``best_beam``), which the parent compares.
"""

from __future__ import annotations

import time

import numpy as np

BEAM_PROMPT = [[1, 2, 3, 4]]
AGREEMENT_TOKENS = 50  # of the best beam compared across candidates (float ties may reorder later)


# ---------------------------------------------------------------------------------------------
# seqmodel
# ---------------------------------------------------------------------------------------------


def _model(hidden: int):
    from benchmarks.workload import reference_model

    model = reference_model("lstm", hidden)
    model.eval()
    return model


def time_generate(model, *, batch_size: int, steps: int, key=None, **options) -> float:
    """Seconds of one ``generate`` call (``batch_size`` rows, ``steps`` tokens), compile excluded:
    a first call warms the cache (a no-op once compiled)."""
    import jax

    import seqmodel as sm

    key = jax.random.key(0) if key is None else key
    sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
        .block_until_ready()
    start = time.perf_counter()
    sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
        .block_until_ready()
    return time.perf_counter() - start


def _with_token_bias(model, token: int, bias_value: float):
    """A copy of ``model`` whose head bias for ``token`` is ``bias_value`` (-1e9: never emitted,
    1e9: always emitted)."""
    from flax import nnx

    copy = nnx.clone(model)
    bias = copy.head.linear.bias
    bias[...] = bias[...].at[token].set(bias_value)
    return copy


def _generate_call(model, batch_size: int, steps: int, **options):
    import jax

    import seqmodel as sm

    keys = iter(jax.random.split(jax.random.key(0), 100_000))

    def once() -> float:
        key = next(keys)  # a fresh key per decode, made outside the timed region
        start = time.perf_counter()
        sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
            .block_until_ready()
        return time.perf_counter() - start

    return once


def _jit_step_call(model, batch_size: int, steps: int):
    """A Python loop over one jitted step; parameters flattened once so each call passes plain
    arrays (the cheapest per-step dispatch JAX offers)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.with_attributes(model, deterministic=True, raise_if_not_found=False)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    @jax.jit
    def step(leaves, x, carry, key):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        logits, carry = model.step(x, carry)
        key, draw = jax.random.split(key)
        return jax.random.categorical(draw, logits).astype(jnp.int32), carry, key

    def once() -> float:
        x = jnp.zeros((batch_size,), jnp.int32)
        carry, key = model.init_carry(batch_size), jax.random.key(1)
        start = time.perf_counter()
        for _ in range(steps):
            x, carry, key = step(leaves, x, carry, key)
        x.block_until_ready()
        return time.perf_counter() - start

    return once


def _repeated(once):
    """``run(n)``: ``n`` decodes, their seconds summed; ``once()`` times one."""
    def run(n: int) -> float:
        return sum(once() for _ in range(n))

    return run


def _timed_warm_up(once) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    once()
    return {"compile_seconds": time.perf_counter() - wall,
            "compile_cpu_seconds": time.process_time() - cpu}


def generate_worker(spec: dict):
    options = spec["options"]
    model = _model(spec["hidden"])
    batch, steps, variant = options["batch"], options["steps"], options["variant"]
    if variant == "generate":
        extra = dict(options.get("generate_options") or {})
        if "token_bias" in extra:  # JSON made its token keys strings
            extra["token_bias"] = {int(token): bias for token, bias in extra["token_bias"].items()}
        if "prompt" in options:  # (batch, p) tokens; the batch is the prompt's
            extra["prompt"] = np.asarray(options["prompt"], np.int32)
            batch = None
        once = _generate_call(model, batch, steps, **extra)
    elif variant == "generate+eos":
        once = _generate_call(_with_token_bias(model, 0, -1e9), batch, steps, eos_id=0)
    elif variant == "eos-at-once":
        once = _generate_call(_with_token_bias(model, 0, 1e9), batch, steps, eos_id=0)
    elif variant == "jit-step":
        once = _jit_step_call(model, batch, steps)
    else:
        raise ValueError(f"variant={variant!r}; allowed: generate, generate+eos, eos-at-once, "
                         f"jit-step")
    return _repeated(once), _timed_warm_up(once), {}


def beam_worker(spec: dict):
    import jax

    import seqmodel as sm

    options = spec["options"]
    model = _model(spec["hidden"])
    prompt = np.array(BEAM_PROMPT, np.int32)

    def search():
        return sm.beam_search(model, prompt=prompt, steps=options["steps"],
                              num_beams=options["beams"], num_return_sequences=1)

    def once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(search())
        return time.perf_counter() - start

    hello = _timed_warm_up(once)
    hello["best_beam"] = np.asarray(search().sequences)[0, 0, :AGREEMENT_TOKENS].tolist()
    return _repeated(once), hello, {}


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------


def _torch_setup(spec: dict):
    """``(model, modules, hello)``: the seqmodel model, its PyTorch copy checked against its loss,
    and the thread settings."""
    from benchmarks import torch_copy, torch_variants, workload

    hello = torch_variants.configure_threads(spec["options"].get("threads"))
    model = _model(spec["hidden"])
    modules = torch_copy.torch_modules(model)
    agreement = torch_copy.check_same_loss(model, modules, *workload.batch())
    hello.update(first_loss=agreement["torch_loss"], seqmodel_first_loss=agreement["loss"])
    return model, modules, hello


def torch_generate_worker(spec: dict):
    import torch

    from benchmarks.torch_variants import StepLoop

    options = spec["options"]
    _, (embedding, lstm, head), hello = _torch_setup(spec)
    loop = StepLoop(embedding, lstm, head, implementation=options["implementation"],
                    mode=options["mode"])
    batch, steps = options["batch"], options["steps"]

    def once() -> float:
        with torch.inference_mode():
            tokens = torch.zeros((batch,), dtype=torch.long)
            h, c = loop.initial_state(batch)
            start = time.perf_counter()
            for _ in range(steps):
                tokens, h, c = loop.sample(tokens, h, c)
            tokens.sum().item()
            return time.perf_counter() - start

    return _repeated(once), {**hello, **_timed_warm_up(once)}, {}


def torch_beam_search(loop, prompt: np.ndarray, steps: int, beams: int):
    """seqmodel.decoding.beam's algorithm without eos as a PyTorch loop (batch 1) over the step
    ``loop.logits`` (:class:`benchmarks.torch_variants.StepLoop`): one ``log_softmax``,
    ``topk`` and index-select of the state per step. Returns ``(history (beams, steps),
    scores (beams,))``."""
    import torch

    with torch.inference_mode():
        tokens = torch.as_tensor(prompt, dtype=torch.long)[0]
        h, c = loop.initial_state(1)
        for token in tokens[:-1]:
            _, h, c = loop.logits(token[None], h, c)
        x = tokens[-1].repeat(beams)
        h, c = h.repeat(beams, 1), c.repeat(beams, 1)
        scores = torch.full((beams,), -float("inf"))
        scores[0] = 0.0
        history = torch.zeros((beams, steps), dtype=torch.long)
        for step in range(steps):
            logits, h, c = loop.logits(x, h, c)
            log_probs = torch.log_softmax(logits, dim=-1)
            vocab = log_probs.shape[-1]
            totals = (scores[:, None] + log_probs).reshape(-1)
            scores, flat = torch.topk(totals, beams)
            parent, x = flat // vocab, flat % vocab
            history = history[parent]
            history[:, step] = x
            h, c = h[parent], c[parent]
        return history.numpy(), scores.numpy()


def torch_beam_worker(spec: dict):
    from benchmarks.torch_variants import StepLoop

    options = spec["options"]
    _, (embedding, lstm, head), hello = _torch_setup(spec)
    loop = StepLoop(embedding, lstm, head, implementation=options["implementation"],
                    mode=options["mode"])
    prompt = np.array(BEAM_PROMPT, np.int64)

    def once() -> float:
        start = time.perf_counter()
        torch_beam_search(loop, prompt, options["steps"], options["beams"])
        return time.perf_counter() - start

    hello.update(_timed_warm_up(once))
    history, _ = torch_beam_search(loop, prompt, options["steps"], options["beams"])
    hello["best_beam"] = history[0, :AGREEMENT_TOKENS].tolist()
    return _repeated(once), hello, {}


BUILDERS = {"generate": generate_worker, "beam": beam_worker,
            "torch-generate": torch_generate_worker, "torch-beam": torch_beam_worker}
