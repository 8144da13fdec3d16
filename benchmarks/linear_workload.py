"""What :mod:`benchmarks.bench_linear` times: candidates, their models at matched parameter counts,
and the model FLOPs the roofline column divides by.

Every candidate is a byte-level language model (vocabulary 256) trained on random tokens:

- the linear recurrences (``mingru``, ``minlstm``, ``rglru``), each with each of its scans:
  ``SequenceModel`` of residual blocks (``ModelConfig(cell=..., scan=...)``, embedding as wide
  as the blocks, the library's defaults ``expansion=1``, ``mlp_expansion=3``);
- seqmodel's serial cells (``gru``, ``lstm``) on their fast path (custom-VJP scans, embedding
  folded into the first input projection; ``scan`` is ``"fast"``), embedding 64;
- ``torch-lstm``: PyTorch ``nn.Embedding(256, 64)`` + ``nn.LSTM`` + ``nn.Linear`` of the width and
  depth of seqmodel's ``lstm`` (cuDNN on a GPU; ``scan`` is ``"torch"``).

Sizes match the whole model's parameter count (embedding and head included): each family's
width is the multiple of 8 that comes closest to the target at the size's depth.

Example::

    width = matched_width("rglru", SIZES["1M"])
    config = model_config(Candidate("rglru", "chunked"), width, SIZES["1M"])
"""

from __future__ import annotations

import dataclasses

from seqmodel.nn import scans as linear_scan

VOCAB = 256
SERIAL_EMBED = 64
LINEAR_FAMILIES = ("mingru", "minlstm", "rglru")
SERIAL_FAMILIES = ("gru", "lstm")
TORCH_FAMILY = "torch-lstm"
FAMILIES = LINEAR_FAMILIES + SERIAL_FAMILIES + (TORCH_FAMILY,)
LINEAR_SCANS = ("sequential", "associative", "chunked", "log_space")
# The scan column of the candidates that have no choice of scan.
FAST, TORCH = "fast", "torch"


@dataclasses.dataclass(frozen=True)
class Size:
    """A parameter budget and the depths at which each kind of model spends it."""

    name: str
    parameters: int
    block_layers: int
    serial_layers: int


SIZES = {"1M": Size("1M", 1_000_000, 2, 1), "8M": Size("8M", 8_000_000, 4, 2)}
QUICK_SIZE = Size("quick", 50_000, 2, 1)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One family with one scan (``"fast"``: seqmodel's serial cells; ``"torch"``: PyTorch)."""

    family: str
    scan: str

    @property
    def linear(self) -> bool:
        return self.family in LINEAR_FAMILIES

    @property
    def name(self) -> str:
        return self.family if not self.linear else f"{self.family}/{self.scan}"


def candidates(families=FAMILIES, scans=LINEAR_SCANS) -> list[Candidate]:
    """Every ``(family, scan)`` pair to time: each linear family with each requested scan it
    supports (``log_space`` only for minGRU and minLSTM), one candidate per serial family."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"families {unknown} are unknown; allowed: {', '.join(FAMILIES)}")
    chosen = []
    for family in families:
        if family == TORCH_FAMILY:
            chosen.append(Candidate(family, TORCH))
        elif family in SERIAL_FAMILIES:
            chosen.append(Candidate(family, FAST))
        else:
            chosen.extend(Candidate(family, scan) for scan in scans
                          if scan != "log_space" or family != "rglru")
    return chosen


def layers_of(family: str, size: Size) -> int:
    return size.block_layers if family in LINEAR_FAMILIES else size.serial_layers


def model_config(candidate: Candidate, hidden: int, size: Size, *,
                 chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE):
    """The ``ModelConfig`` of a seqmodel candidate (``torch-lstm``: that of the ``lstm`` whose
    width and depth it copies)."""
    from seqmodel.nn.model import ModelConfig

    family = "lstm" if candidate.family == TORCH_FAMILY else candidate.family
    common = {"vocab_size": VOCAB, "cell": family, "hidden_size": hidden,
              "num_layers": layers_of(family, size)}
    if family in LINEAR_FAMILIES:
        return ModelConfig(**common, embed_size=hidden, scan=candidate.scan,
                           chunk_size=chunk_size)
    return ModelConfig(**common, embed_size=SERIAL_EMBED)


# Layer 0's input projection: with the embedding folded in, a gather per token, not a matmul.
_FOLDED = {("cells", 0, "input_kernel"), ("cells", 0, "input_projection", "kernel")}


def parameter_counts(config) -> tuple[int, int]:
    """``(all parameters, matmul parameters per token)`` of a ``ModelConfig``'s model, without
    allocating it. A matmul parameter is an entry of a 2-D kernel that every token multiplies
    (recurrent kernels included); the embedding, the folded first projection, the convolution,
    biases, norms and the recurrences' elementwise parameters are not."""
    import numpy as np
    from flax import nnx

    from seqmodel.nn.model import SequenceModel

    model = nnx.eval_shape(lambda: SequenceModel(config, rngs=nnx.Rngs(0)))
    total = matmul = 0
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        size = int(np.prod(leaf.shape))
        total += size
        name = str(path[-1])
        if (len(leaf.shape) == 2 and name.endswith("kernel") and name != "conv_kernel"
                and tuple(path) not in _FOLDED):
            matmul += size
    return total, matmul


def torch_parameter_counts(config) -> tuple[int, int]:
    """``(all, matmul per token)`` of the PyTorch copy of an ``lstm`` config: two biases per
    layer, and layer 0's input kernel is a matmul (no fold)."""
    total, matmul = parameter_counts(config)
    gates = 4 * config.hidden_size
    return (total + config.num_layers * gates, matmul + config.embed_size * gates)


def matched_width(family: str, size: Size, *, step: int = 8, widest: int = 4096) -> int:
    """The width, a multiple of ``step``, whose model comes closest to ``size.parameters``."""
    family = "lstm" if family == TORCH_FAMILY else family
    probe = Candidate(family, FAST if family in SERIAL_FAMILIES else "sequential")

    def total(width: int) -> int:
        return parameter_counts(model_config(probe, width, size))[0]

    low, high = 1, widest // step
    while low < high:  # the smallest width with at least the target's parameters
        middle = (low + high) // 2
        if total(middle * step) < size.parameters:
            low = middle + 1
        else:
            high = middle
    nearest = [max(1, low - 1) * step, low * step]
    return min(nearest, key=lambda width: abs(total(width) - size.parameters))


def train_flops(matmul_parameters: int, tokens: int) -> int:
    """Model FLOPs of one train step: ``6 x matmul parameters x tokens`` (2 forward, 4 backward:
    the input and the weight gradients). Elementwise work (the scans, gates, norms) is left out,
    so it is the work a perfect machine would spend at its matmul rate."""
    return 6 * matmul_parameters * tokens
