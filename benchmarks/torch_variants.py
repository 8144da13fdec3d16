"""PyTorch baselines at their best: each thread setting, eager and ``torch.compile``, the
library's modules and hand-written loops, all holding the weights of the seqmodel model they are
timed against (:mod:`benchmarks.torch_copy`).

- Threads: :func:`configure_threads` (``None``: PyTorch's default, which on a CPU is the number of
  physical cores); each setting runs in a process of its own (the speed suites' workers).
- ``torch.compile`` (inductor; on a CPU it generates C++ / OpenMP kernels): :func:`compiled`.
  It fuses the elementwise work around ``nn.LSTM`` / ``nn.GRU`` (head, loss, optimizer); the
  recurrences of those modules are single ATen operators that it calls as they are.
- Train step of a GRU: ``nn.GRU`` on a CPU runs every step's gates as separate unfused kernels
  (``nn.LSTM`` has a oneDNN kernel), so :class:`GRULoop`, the same GRU as a Python loop over time
  with the input projection of all steps hoisted into one matmul (as seqmodel and cuDNN do),
  stands beside it: under ``torch.compile`` its step's elementwise work fuses.
- Free-running steps: :class:`StepLoop` runs one step of ``nn.LSTM`` (a length-1 sequence) or of
  an ``nn.LSTMCell`` holding the same weights; the sampling and beam loops of the decoding
  benchmarks drive it.

Example::

    info = configure_threads(1)
    embedding, lstm, head = torch_copy.torch_modules(model)
    step = StepLoop(embedding, lstm, head, implementation="cell", mode="compile")
"""

from __future__ import annotations

import os
import subprocess
import sys

THREAD_SETTINGS = (None, 1, 2)  # None: PyTorch's default
MODES = ("eager", "compile")
_DEFAULT_THREADS: list[int] = []


def default_threads() -> int:
    """PyTorch's default intra-op thread count on this machine, asked of a fresh process once
    (the parent of the workers never imports PyTorch)."""
    if not _DEFAULT_THREADS:
        try:
            answer = subprocess.run(
                [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                capture_output=True, text=True, check=True, timeout=120)
            _DEFAULT_THREADS.append(int(answer.stdout.strip()))
        except (OSError, ValueError, subprocess.SubprocessError):
            _DEFAULT_THREADS.append(os.cpu_count() or 1)
    return _DEFAULT_THREADS[0]


def thread_settings(requested=THREAD_SETTINGS) -> list[int | None]:
    """The distinct settings of ``requested``: ``None`` (the default) is dropped when it equals
    one of the explicit counts (on a 2-core machine the default is 2 threads)."""
    explicit = [threads for threads in requested if threads is not None]
    if None in requested and default_threads() not in explicit:
        return [None, *explicit]
    return explicit


def thread_label(threads: int | None) -> str:
    return "default threads" if threads is None else f"{threads}t"


def configure_threads(threads: int | None) -> dict:
    """Set PyTorch's intra-op threads (None: leave the default); returns ``{"threads",
    "default_threads"}`` as this process sees them."""
    import torch

    default = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    return {"threads": torch.get_num_threads(), "default_threads": default}


def compiled(function, mode: str):
    """``function`` as it is (``mode="eager"``) or under ``torch.compile`` (inductor)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)}")
    return function if mode == "eager" else torch.compile(function, dynamic=False)


def gru_loop_class():
    """:class:`GRULoop`, defined once PyTorch is imported."""
    import torch

    class GRULoop(torch.nn.Module):
        """``nn.GRU``'s equations (one layer, batch first) as a Python loop over time with the
        input projection of every step in one matmul; holds the weights of ``gru``.

        forward(x ``(b, t, e)``) -> (outputs ``(b, t, h)``, last ``(1, b, h)``), as ``nn.GRU``.
        """

        def __init__(self, gru: torch.nn.GRU):
            super().__init__()
            if gru.num_layers != 1 or not gru.batch_first:
                raise ValueError("GRULoop copies a one-layer, batch-first nn.GRU")
            self.hidden_size = gru.hidden_size
            self.input = torch.nn.Linear(gru.input_size, 3 * gru.hidden_size)
            self.recurrent = torch.nn.Linear(gru.hidden_size, 3 * gru.hidden_size)
            with torch.no_grad():
                self.input.weight.copy_(gru.weight_ih_l0)
                self.input.bias.copy_(gru.bias_ih_l0)
                self.recurrent.weight.copy_(gru.weight_hh_l0)
                self.recurrent.bias.copy_(gru.bias_hh_l0)

        def forward(self, x):
            projected = self.input(x)  # (b, t, 3h): every step's input half at once
            h = x.new_zeros(x.shape[0], self.hidden_size)
            outputs = []
            for t in range(x.shape[1]):
                input_r, input_z, input_n = projected[:, t].chunk(3, dim=-1)
                hidden_r, hidden_z, hidden_n = self.recurrent(h).chunk(3, dim=-1)
                reset = torch.sigmoid(input_r + hidden_r)
                update = torch.sigmoid(input_z + hidden_z)
                candidate = torch.tanh(input_n + reset * hidden_n)
                h = (1 - update) * candidate + update * h
                outputs.append(h)
            return torch.stack(outputs, dim=1), h[None]

    return GRULoop


def lstm_cell_of(lstm):
    """An ``nn.LSTMCell`` holding the weights of a one-layer ``nn.LSTM``."""
    import torch

    if lstm.num_layers != 1:
        raise ValueError("lstm_cell_of copies a one-layer nn.LSTM")
    cell = torch.nn.LSTMCell(lstm.input_size, lstm.hidden_size).to(lstm.weight_ih_l0.device)
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight_ih_l0)
        cell.weight_hh.copy_(lstm.weight_hh_l0)
        cell.bias_ih.copy_(lstm.bias_ih_l0)
        cell.bias_hh.copy_(lstm.bias_hh_l0)
    return cell


class StepLoop:
    """One free-running step of an LSTM language model as ``nn.LSTM`` on a length-1 sequence
    (``implementation="module"``) or ``nn.LSTMCell`` (``"cell"``), eager or compiled. Built from
    ``(embedding, lstm, head)`` (:func:`torch_copy.torch_modules`); the state is ``(h, c)``, each
    ``(b, h)``.

    - ``logits(tokens (b,), h, c) -> (logits (b, V), h, c)`` (the beam loop's step);
    - ``sample(tokens (b,), h, c) -> (tokens (b,), h, c)``: the step and a draw from
      ``softmax(logits)``: ``torch.multinomial`` when eager; when compiled, Gumbel-max
      (``argmax(logits + Gumbel noise)``, the same distribution) inside the compiled graph, so
      that the whole step is one program.
    """

    IMPLEMENTATIONS = ("module", "cell")

    def __init__(self, embedding, lstm, head, *, implementation: str, mode: str):
        import torch

        if implementation not in self.IMPLEMENTATIONS:
            raise ValueError(f"implementation={implementation!r}; allowed: "
                             f"{', '.join(self.IMPLEMENTATIONS)}")
        self.hidden_size = lstm.hidden_size
        if implementation == "module":
            def logits(tokens, h, c):
                output, (h, c) = lstm(embedding(tokens)[:, None], (h[None], c[None]))
                return head(output[:, 0]), h[0], c[0]
        else:
            cell = lstm_cell_of(lstm)

            def logits(tokens, h, c):
                h, c = cell(embedding(tokens), (h, c))
                return head(h), h, c

        if mode == "eager":
            def sample(tokens, h, c):
                scores, h, c = logits(tokens, h, c)
                return torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0], h, c
        else:
            def sample(tokens, h, c):
                scores, h, c = logits(tokens, h, c)
                uniform = torch.rand_like(scores).clamp_(min=1e-20)
                return torch.argmax(scores - torch.log(-torch.log(uniform)), dim=-1), h, c
        self.logits = compiled(logits, mode)
        self.sample = compiled(sample, mode)

    def initial_state(self, batch_size: int):
        import torch

        zeros = torch.zeros(batch_size, self.hidden_size)
        return zeros, zeros.clone()
