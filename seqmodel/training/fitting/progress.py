"""The progress bar of a run (tqdm), in process 0 only; every method is a no-op without it."""

from __future__ import annotations


class ProgressBar:
    """A tqdm bar of train steps; ``enabled=False`` makes every method do nothing.

    Example::

        bar = ProgressBar(enabled=True, total=1000, initial=0)
        bar.update(20)
        bar.show(loss=2.31, tokens_per_second=20_000)
        bar.close()
    """

    def __init__(self, *, enabled: bool, total: int | None, initial: int):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            leave=True)

    def update(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total

    def show(self, *, loss: float, tokens_per_second: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:,.0f}",
                                 refresh=False)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def end_at(self, step: int) -> None:
        """A time-bounded run ends where its time does, not at the last estimate."""
        if self.bar is not None:
            self.bar.total = step
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
