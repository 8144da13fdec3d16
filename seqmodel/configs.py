"""The configurations of a run as frozen dataclasses, and the names they accept; no JAX here.

``ModelConfig`` and ``TrainConfig`` check their fields on construction, round-trip through plain
dicts (checkpoint metadata) and give the command line its defaults (one source of defaults), so
``seqmodel --help`` and a flag error answer without importing JAX. The modules that implement the
names (cells, heads, scans, batchings) are checked against these tuples by the tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

# Recurrent cells: serial ones (seqmodel.nn.cells) and linear recurrences run as residual blocks
# (seqmodel.nn.linear).
SERIAL_CELLS = ("lstm", "gru", "elman")
LINEAR_CELLS = ("mingru", "minlstm", "rglru")
CELL_NAMES = SERIAL_CELLS + LINEAR_CELLS
# Output heads (seqmodel.nn.heads.HEADS).
HEAD_NAMES = ("categorical", "gaussian", "mdn", "bernoulli", "student_t", "negbin")
# Scans of the linear recurrences (seqmodel.nn.scans.METHODS) and their default chunk.
SCAN_METHODS = ("sequential", "associative", "chunked", "log_space")
DEFAULT_CHUNK_SIZE = 64
# Rematerialisation of the linear recurrences' blocks (seqmodel.nn.remat.REMAT_NAMES): what the
# backward pass recomputes instead of keeping from the forward pass.
REMAT_NAMES = ("none", "scan", "block")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Data (seqmodel.data): how training windows are cut, and the text tokenizers.
BATCHINGS = ("lanes", "random")
TOKENIZERS = ("char", "byte")
DEFAULT_TOKENIZER = "char"
TEACHER_FORCING_SCHEDULES = ("constant", "linear", "inverse-sigmoid")
# seqmodel.forecasting.paths.exposure_bias_report: sample paths and start points per report.
REPORT_NUM_SAMPLES = 100
REPORT_NUM_STARTS = 64
# Real-valued series (forecasting) where ModelConfig's and TrainConfig's defaults are sized for
# text: a small network, a fixed number of steps, validation every `eval_every` steps with the
# best parameters kept (early stopping: short series overfit). Chosen on the tuning suite of
# benchmarks/bench_forecast_real.py (other series than the benchmark's): against h64 with
# dropout 0.1, h32 with dropout 0.3 scored a geometric mean MASE 0.89x over its 7 series
# (benchmarks/results/forecast_tuning/).
SERIES_MODEL_DEFAULTS = {"hidden_size": 32, "dropout": 0.3}
SERIES_TRAIN_DEFAULTS = {"steps": 800, "learning_rate": 3e-3, "batch_size": 32,
                         "eval_every": 100, "warmup_steps": 50}
# A model sees each series (and each stretch of a long series) less often a step the more data
# there is: its default steps grow with the square root of the data's size in units of one short
# series, the larger of the number of training series and the training observations over
# SERIES_UNIT_OBSERVATIONS, up to SERIES_MAX_STEPS (series_steps). Chosen on the tuning suite:
# on the tuning panel (30 series) MASE 1.147 at 800 steps, 0.935 at 2400, 0.888 at 6000; on the
# single long tuning series (seeds 1, 2) elnino 0.838 -> 0.793 at 1700 steps, weekly 0.800 ->
# 0.790 at 1400, level 0.215 -> 0.223 at 2400; the short single series overfit with more steps
# (geometric mean of MASE over seasonal naive 0.783 at 2400 against 0.749 at 800), and keep 800.
SERIES_MAX_STEPS = 6000
SERIES_UNIT_OBSERVATIONS = 150


def series_steps(num_series: int, observations: int = 0) -> int:
    """The default training steps of a model of ``num_series`` training series holding
    ``observations`` steps in all: 800 * sqrt(max(num_series, observations / 150)) in hundreds,
    at least 800, at most :data:`SERIES_MAX_STEPS` (4,400 for 30 short series, 3,200 for one
    series of 2,400 steps)."""
    units = max(int(num_series), observations / SERIES_UNIT_OBSERVATIONS, 1)
    steps = SERIES_TRAIN_DEFAULTS["steps"] * math.sqrt(units)
    return int(min(SERIES_MAX_STEPS, round(steps / 100) * 100))


def series_train_defaults(lengths: Sequence[int], *, budget_given: bool) -> dict:
    """The training defaults of a series model (``fit`` and ``seqmodel train``) trained on
    series of ``lengths`` steps: steps from :func:`series_steps`, none when the caller gives its
    own budget (``steps`` or ``max_time``)."""
    defaults = {**SERIES_TRAIN_DEFAULTS,
                "steps": series_steps(len(lengths), int(sum(lengths)))}
    if budget_given:
        defaults.pop("steps")
    return defaults


class DictConfig:
    """Mixin for frozen dataclasses: ``to_dict()`` and ``from_dict(values)``.

    ``from_dict`` ignores keys that are not fields, so a checkpoint written by a newer version
    with extra fields still loads, and turns lists back into tuples (JSON has no tuples, and a
    config must stay hashable: jit takes it as a static argument).

    Example::

        config = ModelConfig.from_dict(metadata["model"])
    """

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items() if key in known})


@dataclasses.dataclass(frozen=True)
class ModelConfig(DictConfig):
    """Hyperparameters of a :class:`SequenceModel`.

    Give exactly one of ``vocab_size`` (token inputs ``(b, t)``, categorical head) or ``input_size``
    (real inputs ``(b, t, d)`` with a gaussian, mdn or bernoulli head whose elements have ``d``
    features, fed back as the next input).

    Example::

        config = ModelConfig(vocab_size=65, cell="lstm", hidden_size=256, num_layers=2)
    """

    vocab_size: int | None = None
    input_size: int | None = None
    # Real-valued models: features of an element that the head predicts (default: input_size).
    # Smaller than input_size when every input carries, after the element, conditioning features
    # that the model reads but does not predict (lags, covariates, time features, scales).
    target_size: int | None = None
    # Window scaling (DeepAR's mean scaling; standard scaling with input_location below): the
    # first target_size conditioning features of every input (input indices
    # target_size .. 2 * target_size - 1) hold log(s), the scale of the row's series, by
    # which the element (and its lags) in the input were divided; the head's distribution is
    # multiplied back by s (head.rescale), so outputs, log-likelihoods and samples are in data
    # units while the network sees values of order 1 (seqmodel.data.features builds such inputs).
    input_scaling: bool = False
    # Standard scaling (GluonTS's StdScaler, RevIN): with input_scaling, the next target_size
    # conditioning features (indices 2 * target_size .. 3 * target_size - 1) hold the row's
    # location m (the window's mean), which was subtracted from the element and its lags before
    # dividing by s; the head's distribution is moved back by m after the scaling by s.
    input_location: bool = False
    # Real-valued models: a linear path from each step's input to the head (the head reads the
    # top layer's state plus W x_t; W starts at zero). LSTNet's "highway" (Lai et al. 2018): a
    # recurrent network copies an input such as a seasonal lag only approximately through its
    # gates, and the linear path lets the head read y_{t-s} as it is.
    input_skip: bool = False
    # Real-valued models: the index in each input row where target_size values start that the
    # head's location is relative to (None: none). The head predicts the distance from them in
    # the input's scaled units, so a model whose network outputs zero forecasts that value:
    # seqmodel.data.features puts a seasonal lag there (FeatureSpec.anchor), and the network
    # learns how this season differs from the last (seasonal differencing) instead of copying
    # the lag through its gates.
    anchor_index: int | None = None
    # With anchor_index: the indices (anchor_index first) of several such blocks whose mean the
    # location is relative to instead (empty: anchor_index's block alone). With anchor="seasons"
    # seqmodel.data.features puts the season's multiples there (s, 2s, 3s where they are fed):
    # one noisy value a season back carries its noise into every forecast, their mean a third
    # of its variance.
    anchor_indices: tuple = ()
    # Tuned with TrainConfig's defaults: the argument-free `seqmodel train` (python-stdlib) learns
    # Python-looking text within a few minutes on 2 CPU cores, and tinyshakespeare under 110 s
    # reaches a validation loss at or below 1.60 nats per character (benchmarks/bench_quality.py).
    cell: str = "gru"
    hidden_size: int = 512
    num_layers: int = 1
    embed_size: int = 64
    dropout: float = 0.0
    head: str = "categorical"
    num_mixtures: int = 5
    dtype: str = "float32"
    # Linear recurrences (cell "mingru", "minlstm", "rglru") run as residual blocks: how the
    # training path scans h_t = a_t h_{t-1} + b_t ("auto": what bench_linear measured fastest on
    # the backend; see seqmodel.nn.scans.AUTO_SCAN), the chunk of the chunked scan, the
    # recurrence's width (expansion x hidden_size) and the gated MLP's (mlp_expansion x).
    scan: str = "auto"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    expansion: int = 1
    mlp_expansion: int = 3
    # Linear recurrences: what the backward pass recomputes rather than keeps (jax.checkpoint
    # over time segments): "none" keeps every activation; "scan" recomputes each block's gates
    # and recurrence states; "block" keeps only each block's input and recomputes the whole
    # block, one segment at a time (least memory, one more forward pass of compute).
    # seqmodel.nn.remat, docs/long_context.md.
    remat: str = "none"
    # Fold the embedding into the first layer's input projection: one (vocab, G) table gathered per
    # token instead of an embedding gather plus a matmul. Exact (no dropout sits between them).
    fold_embedding: bool = True
    # Teacher-forced scans use the custom-VJP recurrences of seqmodel.nn.recurrence (same values and
    # gradients as differentiating lax.scan, faster); False keeps the plain lax.scan (for jax.jvp).
    fast_recurrence: bool = True

    def __post_init__(self):
        def bad(field: str, allowed: str):
            value = getattr(self, field)
            raise ValueError(f"ModelConfig.{field}={value!r} is invalid: {allowed}")

        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(
                "ModelConfig needs exactly one of vocab_size (token sequences) or input_size "
                f"(real-valued sequences); got vocab_size={self.vocab_size!r}, "
                f"input_size={self.input_size!r}"
            )
        for field in ("vocab_size", "input_size", "target_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(field, "must be a positive integer")
        if self.cell not in CELL_NAMES:
            bad("cell", f"allowed: {', '.join(CELL_NAMES)}")
        if self.scan not in SCAN_METHODS + ("auto",):
            bad("scan", f"allowed: auto, {', '.join(SCAN_METHODS)}")
        if self.remat not in REMAT_NAMES:
            bad("remat", f"allowed: {', '.join(REMAT_NAMES)}")
        if self.remat != "none" and self.cell not in LINEAR_CELLS:
            bad("remat", f"rematerialisation applies to the linear recurrences' blocks "
                f"({', '.join(LINEAR_CELLS)}); cell={self.cell!r} keeps remat='none' (its "
                f"custom backward pass already keeps only the gates and states)")
        for field in ("hidden_size", "num_layers", "embed_size", "num_mixtures", "chunk_size",
                      "expansion", "mlp_expansion"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                bad(field, "must be a positive integer")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            bad("dropout", "must be in [0, 1)")
        if self.head not in HEAD_NAMES:
            bad("head", f"allowed: {', '.join(HEAD_NAMES)}")
        if self.dtype not in DTYPE_NAMES:
            bad("dtype", f"allowed: {', '.join(DTYPE_NAMES)}")
        if self.vocab_size is not None and self.head != "categorical":
            bad("head", "token inputs (vocab_size) need head='categorical'; for real-valued "
                "heads give input_size instead of vocab_size")
        if self.target_size is not None and (
                self.input_size is None or self.target_size > self.input_size):
            bad("target_size", "needs input_size and must be at most input_size (the element's "
                "features come first in each input, conditioning features after them)")
        if self.input_scaling and (not self.conditioned or self.head == "bernoulli"
                                   or self.input_size < 2 * self.target_size):
            bad("input_scaling", "needs real-valued inputs with target_size set and at least "
                "target_size conditioning features (the log scales), and a head other than "
                "bernoulli (0/1 elements cannot be scaled)")
        if self.input_location and (not self.input_scaling
                                    or self.head not in ("gaussian", "student_t", "mdn")
                                    or self.input_size < 3 * self.target_size):
            bad("input_location", "needs input_scaling, at least 2 * target_size conditioning "
                "features (the log scales, then the locations) and a continuous head (gaussian, "
                "student_t or mdn): counts and 0/1 elements cannot be shifted")
        if self.anchor_index is not None and (
                self.input_size is None or self.head not in ("gaussian", "student_t", "mdn")
                or not isinstance(self.anchor_index, int) or self.anchor_index < 0
                or self.anchor_index + (self.target_size or self.input_size) > self.input_size):
            bad("anchor_index", "needs real-valued inputs with a continuous head (gaussian, "
                "student_t or mdn: counts and 0/1 elements cannot be shifted) and an index "
                "from 0 to input_size - target_size")
        if self.anchor_indices and (
                self.anchor_index is None or not isinstance(self.anchor_indices, tuple)
                or len(self.anchor_indices) < 2 or self.anchor_indices[0] != self.anchor_index
                or any(not isinstance(index, int) or index < 0
                       or index + (self.target_size or self.input_size) > self.input_size
                       for index in self.anchor_indices)):
            bad("anchor_indices", "give a tuple of 2 or more indices, anchor_index first, each "
                "from 0 to input_size - target_size (or () for anchor_index alone)")
        if self.input_skip and self.input_size is None:
            bad("input_skip", "needs real-valued inputs (input_size): token inputs have no "
                "values to pass to the head")
        if self.input_size is not None and self.head == "categorical":
            real_valued = ", ".join(repr(name) for name in HEAD_NAMES
                                    if name != "categorical")
            bad("head", f"real-valued inputs (input_size) need one of {real_valued}; for "
                "tokens give vocab_size instead of input_size")

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Like :meth:`DictConfig.from_dict`; run folders written before the Elman cell was named
        ``"elman"`` say ``cell="rnn"``, which still loads."""
        if values.get("cell") == "rnn":
            values = {**values, "cell": "elman"}
        return super().from_dict(values)

    @property
    def discrete(self) -> bool:
        """True for token sequences."""
        return self.vocab_size is not None

    @property
    def linear(self) -> bool:
        """True for the linear recurrences, which run as residual blocks."""
        return self.cell in LINEAR_CELLS

    @property
    def element_size(self) -> int | None:
        """Features of one predicted element: ``target_size`` or ``input_size`` (None for tokens)."""
        return self.target_size if self.target_size is not None else self.input_size

    @property
    def conditioned(self) -> bool:
        """True when inputs carry conditioning features after the element."""
        return self.target_size is not None and self.target_size < self.input_size

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype of ``dtype`` (imports JAX on first use)."""
        import jax.numpy as jnp

        return getattr(jnp, self.dtype)


@dataclasses.dataclass(frozen=True)
class TrainConfig(DictConfig):
    """Every knob of a training run (the model's shape lives in :class:`seqmodel.ModelConfig`).

    Length of the run: ``steps`` and/or ``max_time`` (seconds of wall time for the whole of
    :func:`seqmodel.training.fitting.fit`, evaluation and checkpoints included). The learning rate warms up
    linearly over ``warmup_steps`` then decays with a cosine to ``learning_rate *
    final_learning_rate_fraction`` at the end of the run: at ``steps``, or, with ``max_time``
    only, at the step count estimated from the measured speed (re-estimated as the run goes, so a
    time-bounded run also ends decayed).

    Example::

        TrainConfig(batch_size=64, seq_len=128, max_time=110, learning_rate=3e-3)
    """

    # Defaults tuned on tinyshakespeare under a 110 s budget on 2 CPU cores with a GRU h512
    # (benchmarks/bench_quality.py): in that regime more, smaller updates learn more per
    # character than fewer large ones, at about the same characters per second.
    batch_size: int = 16
    seq_len: int = 32
    steps: int | None = None
    max_time: float | None = None
    learning_rate: float = 5e-3
    warmup_steps: int = 100
    final_learning_rate_fraction: float = 0.05
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    clip_norm: float = 1.0
    # Evaluate (and checkpoint) every this many steps; None: only at the end.
    eval_every: int | None = 2000
    eval_batch_size: int = 32
    eval_seq_len: int = 256
    val_fraction: float = 0.1
    teacher_forcing: float = 1.0
    teacher_forcing_schedule: str = "constant"
    batching: str = "lanes"
    seed: int = 0
    log_every: int = 20
    # Train steps per compiled call (a lax.scan over the steps; the same results as one step per
    # call). On CPU every call costs a dispatch that takes a core from the devices, and fresh
    # temporary buffers: XLA:CPU maps its temp allocation anew per call (124 MB for LSTM h512,
    # 30k page faults, ~25 ms). 20 steps per call ran the 2-device step 3-15% faster at LSTM
    # h128 (six runs) and 18-25% at h512 than one (bench_speed's seqmodel-1call column,
    # probe_steps_per_call.py). A multiple of log_every's default: log records fall at call ends.
    steps_per_call: int = 20

    def __post_init__(self):
        def bad(field: str, allowed: str):
            raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        def positive_int(field: str, *, optional: bool = False):
            value = getattr(self, field)
            if optional and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(field, "must be a positive integer" + (" or None" if optional else ""))

        for field in ("batch_size", "seq_len", "eval_batch_size", "eval_seq_len", "log_every",
                      "steps_per_call"):
            positive_int(field)
        positive_int("steps", optional=True)
        positive_int("eval_every", optional=True)
        if self.max_time is not None and not (
            isinstance(self.max_time, (int, float)) and self.max_time > 0
        ):
            bad("max_time", "must be a positive number of seconds or None")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            bad("learning_rate", "must be > 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup_steps", "must be an integer >= 0")
        if not 0.0 <= self.final_learning_rate_fraction <= 1.0:
            bad("final_learning_rate_fraction", "must be in [0, 1]")
        if not self.weight_decay >= 0:
            bad("weight_decay", "must be >= 0")
        for field in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, field) < 1.0:
                bad(field, "must be in [0, 1)")
        if not self.clip_norm > 0:
            bad("clip_norm", "must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            bad("teacher_forcing", "must be a probability in [0, 1]")
        if self.teacher_forcing_schedule not in TEACHER_FORCING_SCHEDULES:
            bad("teacher_forcing_schedule", f"allowed: {', '.join(TEACHER_FORCING_SCHEDULES)}")
        if self.batching not in BATCHINGS:
            bad("batching", f"allowed: {', '.join(BATCHINGS)}")
        if not isinstance(self.seed, int):
            bad("seed", "must be an integer")

    @property
    def plain_teacher_forcing(self) -> bool:
        """True when every step feeds the truth: the train step then uses the teacher-forced path."""
        return self.teacher_forcing == 1.0 and self.teacher_forcing_schedule == "constant"
