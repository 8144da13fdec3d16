"""The checked request of :func:`seqmodel.generate` / :func:`seqmodel.generate_stream`: every
argument checked once, split into what fixes the compiled program (:class:`GenerateOptions`,
static) and the numbers it runs on (:class:`GenerateValues`, traced: new values do not
recompile).

Example::

    request = check_request(model, key=jax.random.key(0), steps=100, top_k=20,
                            processors=ProcessorOptions(repetition_penalty=1.2))
    request.options.stops        # False: no eos_id, stop sequence or constraint that ends rows
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from seqmodel.decoding import constraints, sampling
from seqmodel.decoding.processors import (
    ProcessorOptions,
    ProcessorRules,
    ProcessorValues,
    check_processors,
)
from seqmodel.decoding.prompts import check_key, check_positive_int, check_prompt, is_int

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """The static options of a generate program (part of its compile key).

    Attributes:
      stuck_check: how a constrained row learns that no token is left: None (it cannot
        happen), ``"state"`` (its state allows none: a gather of one flag per row) or
        ``"logits"`` (the processors may ban the rest: a reduction of the processed logits).
    """

    steps: int
    num_samples: int
    top_k: int | None
    use_top_p: bool
    greedy: bool
    return_scores: bool
    processors: ProcessorRules
    constrained: bool = False
    stuck_check: str | None = None

    @property
    def stops(self) -> bool:
        """Whether rows can stop before ``steps`` (the loop then runs in chunks)."""
        return self.processors.stops or self.stuck_check is not None


class GenerateValues(NamedTuple):
    """The traced numbers of a generate program."""

    temperature: np.float32  # > 0 unless greedy
    top_p: np.float32  # 1.0 when unused
    processors: ProcessorValues
    constraint: constraints.ConstraintTables | None = None


class Request(NamedTuple):
    """Checked, normalised arguments of :func:`seqmodel.generate`."""

    prompt: Any  # (b, p) int32 or (b, p, d) float32, NumPy or jax
    prompt_lengths: np.ndarray  # (b,) int32 in 1..p
    key: Array
    values: GenerateValues
    options: GenerateOptions
    automaton: np.ndarray | None = None  # (b,) int32 constraint states after the prompts


def check_constraint(constraint: Any, model, vocab_size: int) -> None:
    """``constraint`` must be None or a :class:`~seqmodel.decoding.constraints.Constraint` over
    the model's vocabulary."""
    if constraint is None:
        return
    if not isinstance(constraint, constraints.Constraint):
        raise ValueError(f"constraint={constraint!r} is invalid: allowed is None or a "
                         "constraint such as seqmodel.Regex(pattern, tokenizer) or "
                         "seqmodel.JsonSchema(schema, tokenizer)")
    if not model.config.discrete:
        raise ValueError(f"constraint={constraint!r} is invalid for a "
                         f"{type(model.head).__name__} head (real-valued elements): allowed is "
                         "None; constraints apply to token models")
    if constraint.vocab_size != vocab_size:
        raise ValueError(f"constraint={constraint!r} is invalid for this model: it was built "
                         f"for {constraint.vocab_size} tokens, the model has {vocab_size}; "
                         "build it with the model's own tokenizer")


def check_eos_id(eos_id: Any, vocab_size: int) -> int | None:
    if eos_id is not None and (not is_int(eos_id) or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id={eos_id!r} is invalid: allowed is None or a token id in "
                         f"[0, {vocab_size - 1}]")
    return eos_id


def check_request(model, *, key, steps, prompt=None, prompt_lengths=None, batch_size=None,
                  num_samples=1, temperature=1.0, top_k=None, top_p=None, greedy=False,
                  eos_id=None, return_scores=False,
                  processors: ProcessorOptions | None = None,
                  constraint=None) -> Request:
    """Check the arguments of :func:`seqmodel.generate` (see there); raises ``ValueError``
    naming the argument, the value and what is allowed."""
    config = model.config
    wanted = ProcessorOptions() if processors is None else processors
    if config.conditioned:
        raise ValueError(
            f"generate cannot feed this model its own samples: its inputs carry "
            f"{config.input_size - config.target_size} conditioning features after each "
            f"{config.target_size}-feature element (ModelConfig.target_size); forecast it with "
            "seqmodel.forecasting.forecaster, which builds those features step by step")
    steps = check_positive_int("steps", steps)
    num_samples = check_positive_int("num_samples", num_samples)
    temperature = sampling.check_temperature(temperature)
    if not isinstance(greedy, bool):
        raise ValueError(f"greedy={greedy!r} is invalid: allowed is True or False")
    if not isinstance(return_scores, bool):
        raise ValueError(f"return_scores={return_scores!r} is invalid: allowed is True or False")
    greedy = greedy or temperature == 0.0
    head_name = type(model.head).__name__
    check_constraint(constraint, model, config.vocab_size)
    if config.discrete:
        top_k = sampling.check_top_k(top_k, config.vocab_size)
        top_p = sampling.check_top_p(top_p)
        eos_id = check_eos_id(eos_id, config.vocab_size)
        rules, numbers = check_processors(config.vocab_size, wanted, eos_id=eos_id)
    else:
        given = dict(top_k=top_k, top_p=top_p, eos_id=eos_id, **wanted.given())
        for name, value in given.items():
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is invalid for a {head_name} head (real-valued "
                    f"elements): allowed is {name}=None; top_k, top_p, eos_id and the logits "
                    "processors apply to token models (temperature and greedy work for every "
                    "head)"
                )
        rules, numbers = check_processors(1)
    given_prompt = prompt is not None
    prompt, prompt_lengths = check_prompt(model, prompt, prompt_lengths, batch_size)
    tables, automaton, stuck_check = None, None, None
    if constraint is not None:
        tables, stuck_states = constraint.tables(eos_id)
        # Without a prompt the start element is no text: the automaton starts at its start.
        automaton = constraint.start_states(np.asarray(prompt) if given_prompt else None,
                                            prompt_lengths, eos_id=eos_id)
        stuck_check = "logits" if rules.may_ban_all else "state" if stuck_states else None
    options = GenerateOptions(
        steps=steps,
        num_samples=num_samples,
        # Filters are moot when greedy: drop them so that they add no ops and no recompiles.
        top_k=None if greedy else top_k,
        use_top_p=top_p is not None and not greedy,
        greedy=greedy,
        return_scores=return_scores,
        processors=rules,
        constrained=constraint is not None,
        stuck_check=stuck_check,
    )
    values = GenerateValues(
        temperature=np.float32(1.0 if greedy else temperature),
        top_p=np.float32(1.0 if top_p is None else top_p),
        processors=numbers,
        constraint=tables,
    )
    return Request(prompt, prompt_lengths, check_key(key), values, options, automaton)

