"""The progress display of a search: a bar over COMPLETE trials, the best so far, an ETA, and one line per
finished trial."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ..pareto import pareto_mask
from ._loop import count_states
from .settings import SearchConfig
from .trial import summary_line


class ProgressReporter:
    """A rich progress bar over COMPLETE trials with the best accuracy so far (and the size of the front in
    Pareto mode) and an ETA; prints one line per finished trial."""

    def __init__(self, study: optuna.Study, config: SearchConfig):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.study = study
        self.config = config
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=self.console, transient=False,
                                 speed_estimate_period=3600.0)  # trials take minutes: average over the hour
        self.task = None

    def _best(self) -> str:
        trials = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("accuracy") is not None]
        if not trials:
            return "best: -"
        best = max(trials, key=lambda t: t.user_attrs["accuracy"])
        text = (f"best acc {best.user_attrs['accuracy']:.4g} (#{best.number}, "
                f"{best.user_attrs.get('latency_ms', 0):.3g} ms)")
        if self.config.mode != "constrained":
            points = [(-t.user_attrs["accuracy"], t.user_attrs.get("latency_ms", 0.0)) for t in trials]
            text += f", front {int(pareto_mask(points).sum())}"
        return text

    def _complete(self) -> int:
        return min(count_states(self.study).get("COMPLETE", 0), self.config.n_trials)

    def start(self) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"search {self.study.study_name}", total=self.config.n_trials,
                                           completed=self._complete(), best=self._best())

    def update(self, frozen) -> None:
        if self.task is None:
            return
        self.progress.console.print(summary_line(frozen), highlight=False, soft_wrap=True)
        self.progress.update(self.task, completed=self._complete(), best=self._best())

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
