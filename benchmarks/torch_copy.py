"""PyTorch baselines that hold the very weights of the seqmodel model they are timed against.

:func:`torch_modules` copies a model through :func:`seqmodel.interop.to_torch`;
:func:`check_same_loss` runs both on one batch, in full fp32 precision, and raises
:class:`WeightsDisagree` unless they give the same loss and logits. The train and generate
benchmarks call it before timing and drop the PyTorch candidate with that message if it fails: a
speed ratio between two different models means nothing.
"""

from __future__ import annotations

import contextlib

import numpy as np

# Largest |difference| allowed between the two frameworks' loss and logits (fp32, full precision).
TOLERANCE = 1e-4


class WeightsDisagree(RuntimeError):
    """The PyTorch copy does not compute what the seqmodel model computes."""


def torch_modules(model, device: str = "cpu"):
    """``TorchModules(embedding, rnn, head)`` holding ``model``'s weights, on ``device``."""
    from seqmodel.interop import to_torch

    modules = to_torch(model)
    return type(modules)(*(None if module is None else module.to(device) for module in modules))


@contextlib.contextmanager
def _full_precision_torch():
    """No TF32 in PyTorch's matmuls and cuDNN for the comparison (timing keeps the defaults)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_same_loss(model, modules, inputs: np.ndarray, targets: np.ndarray, *,
                    tolerance: float = TOLERANCE) -> dict:
    """Cross-entropy of ``model`` and of its PyTorch copy ``modules`` on one batch.

    inputs, targets: ``(b, t)`` int tokens. Returns ``{"loss", "torch_loss", "loss_error",
    "logit_error"}``; raises :class:`WeightsDisagree` when the losses or the logits differ by more
    than ``tolerance``."""
    import jax
    import optax
    import torch
    from flax import nnx

    embedding, rnn, head = modules
    device = next(rnn.parameters()).device
    with jax.default_matmul_precision("highest"):
        # Dropout off without switching the caller's model to eval mode.
        logits, _ = nnx.with_attributes(model, deterministic=True, raise_if_not_found=False)(
            jax.numpy.asarray(inputs))
        loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean())
    with torch.no_grad(), _full_precision_torch():
        torch_logits = head(rnn(embedding(torch.from_numpy(inputs).long().to(device)))[0])
        torch_loss = float(torch.nn.functional.cross_entropy(
            torch_logits.flatten(0, 1), torch.from_numpy(targets).long().to(device).flatten()))
        torch_logits = torch_logits.cpu().numpy()
    result = {"loss": loss, "torch_loss": torch_loss, "loss_error": abs(loss - torch_loss),
              "logit_error": float(np.abs(np.asarray(logits) - torch_logits).max())}
    if not (result["loss_error"] <= tolerance and result["logit_error"] <= tolerance):
        raise WeightsDisagree(
            f"the PyTorch copy disagrees with the seqmodel model on the first batch: loss "
            f"{loss:.6f} vs {torch_loss:.6f}, largest logit difference "
            f"{result['logit_error']:.2e} (allowed {tolerance:.0e}); not timing it")
    return result
