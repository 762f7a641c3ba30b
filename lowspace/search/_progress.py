"""The progress display of a search: a bar over counted complete trials, the best so far, an ETA that
respects the timeout, one line per finished trial and the notes the user should read."""
from __future__ import annotations

import time

import optuna

from ..pareto import pareto_mask
from ._accounting import counted_trials
from .settings import SearchConfig
from .trial import summary_line


def _eta_column(deadline: float | None):
    """A rich column: the time the trials still need at the present pace, never past the timeout."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        max_refresh = 1.0

        def render(self, task) -> Text:
            left = task.time_remaining
            if deadline is not None:
                to_timeout = max(0.0, deadline - time.monotonic())
                left = to_timeout if left is None else min(left, to_timeout)
            if left is None:
                return Text("eta -:--:--", style="progress.remaining")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"eta {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return EtaColumn()


class ProgressReporter:
    """A rich progress bar over counted complete trials (:func:`~._accounting.counted_trials`) with the best
    accuracy so far (and the size of the front in Pareto mode) and an ETA that ends at the timeout
    (``deadline``, a ``time.monotonic()`` value); prints one line per finished trial and the notes."""

    def __init__(self, study: optuna.Study, config: SearchConfig, deadline: float | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.study = study
        self.config = config
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TimeElapsedColumn(), _eta_column(deadline),
                                 console=self.console, transient=False,
                                 speed_estimate_period=3600.0)  # trials take minutes: average over the hour
        self.task = None

    def _best(self, trials) -> str:
        trials = [t for t in trials if t.user_attrs.get("accuracy") is not None]
        if not trials:
            return "best: -"
        best = max(trials, key=lambda t: t.user_attrs["accuracy"])
        text = (f"best acc {best.user_attrs['accuracy']:.4g} (#{best.number}, "
                f"{best.user_attrs.get('latency_ms', 0):.3g} ms)")
        if self.config.mode != "constrained":
            points = [(-t.user_attrs["accuracy"], t.user_attrs.get("latency_ms", 0.0)) for t in trials]
            text += f", front {int(pareto_mask(points).sum())}"
        return text

    def _fields(self) -> dict:
        counted = counted_trials(self.study)
        return {"completed": min(len(counted), self.config.n_trials), "best": self._best(counted)}

    def start(self) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"search {self.study.study_name}", total=self.config.n_trials,
                                           **self._fields())

    def update(self, frozen) -> None:
        if self.task is None:
            return
        self.progress.console.print(summary_line(frozen), highlight=False, soft_wrap=True)
        self.progress.update(self.task, **self._fields())

    def note(self, text: str) -> None:
        """Print a note for the user (above the bar while it runs)."""
        self.console.print(f"[yellow]note[/]: {text}", highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
