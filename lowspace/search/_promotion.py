"""Promotion to the full schedule: asynchronous successive halving over rungs of increasing fidelity, the
last of which is the search's proxy schedule, so that the front is made of candidates trained on it.

A rung is a proxy recipe with some fields changed (fewer epochs, fewer training images per class, a lower
resolution); when only the epochs change, the warm-up keeps its share of them. Every rung trains from
scratch: a short rung is a complete short schedule, not the first epochs of a long one. A candidate trains
rung 0; when a rung ends, its accuracy there is recorded and the candidate is compared with every other
architecture that reached the rung, on (accuracy at the rung, latency[, MACs]): non-dominated sorting
(:func:`lowspace.pareto.nondominated_ranks`), ties within a front broken by crowding distance (NSGA-II). Of
the n architectures at the rung, the best ``ceil(n / eta)`` go on; a candidate tied with the last of them
goes on too. The others stop (PRUNED, status ``stopped``). The last rung is trained with ``repeats_top``
seeds; its accuracy is their mean.

Everything a decision needs is in the storage: each trial records, as user attributes, ``rung_accuracy``
(rung -> accuracy), ``rung_decision`` (rung -> the comparison), ``rung_gpu_s`` (rung -> seconds of its own
training), ``rung`` (the highest rung finished), ``rung_training`` (the rung in progress) and
``top_accuracies`` (one per seed). Workers on several machines therefore decide alike, and a trial that
continues another one (Optuna's retry of a trial whose worker died copies its user attributes; an
interrupted trial is enqueued again by :func:`enqueue_continuations`) starts after the rungs already done.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import ConfigError
from ..pareto import nondominated_ranks
from .settings import PromotionSettings, SearchConfig

RUNG_ACCURACY = "rung_accuracy"
RUNG_DECISION = "rung_decision"
RUNG_GPU_S = "rung_gpu_s"
RUNG = "rung"
RUNG_TRAINING = "rung_training"
TOP_ACCURACIES = "top_accuracies"
CONTINUES = "continues"
# what a continuing trial takes over from the one it continues
CARRIED_ATTRS = (RUNG_ACCURACY, RUNG_DECISION, TOP_ACCURACIES, RUNG, "point")
_RESULT_FIELDS = ("top1", "top5", "best_top1", "epochs_run", "train_s", "images_per_s", "stopped_early", "history",
                  "info")


# ==================================================================== the ladder
@dataclass(frozen=True)
class Rung:
    """One rung: its fields changed from the proxy schedule, the schedule object, a short label."""

    index: int
    overrides: dict
    schedule: Any
    label: str


@dataclass(frozen=True)
class Ladder:
    """The rungs of a search (the last is the proxy schedule), eta, and the last rung's schedule per seed."""

    rungs: tuple[Rung, ...]
    eta: int
    top_schedules: tuple
    promote_points: bool = True

    @property
    def top(self) -> int:
        return len(self.rungs) - 1


def default_rungs(epochs: int, eta: int) -> list[dict]:
    """``epochs / eta**2`` and ``epochs / eta`` epochs (rounded, at least 1, without repeats), then the proxy."""
    out: list[dict] = []
    for k in (2, 1):
        e = max(1, round(epochs / eta ** k))
        if e < epochs and (not out or e > out[-1]["epochs"]):
            out.append({"epochs": e})
    return [*out, {}]


def rung_label(overrides: Mapping[str, Any]) -> str:
    """``full`` for the proxy schedule, else the changed fields: ``epochs=2 train_per_class=1500``."""
    if not overrides:
        return "full"
    parts = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            value = "x".join(map(str, value))
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def rung_specs(settings: PromotionSettings, full_epochs: int) -> list[dict]:
    """The rungs as written, or the default ones for a proxy of ``full_epochs`` epochs."""
    if settings.rungs is not None:
        return [dict(r) for r in settings.rungs]
    return default_rungs(full_epochs, settings.eta)


def build_ladder(settings: PromotionSettings, proxy: Mapping[str, Any], make_schedule: Callable[[dict], Any]) -> Ladder:
    """Build and check the rungs against the proxy section ``proxy`` (schedules made by ``make_schedule``).

    Raises ConfigError (``promotion.rungs.<i>.<field>``) for a field the recipe refuses, a rung that is not
    above the previous one in fidelity, or a last rung that is not the proxy schedule.
    """
    full = make_schedule(dict(proxy))
    rungs = []
    for i, overrides in enumerate(rung_specs(settings, int(getattr(full, "epochs", 1) or 1))):
        options = {**proxy, **overrides, **_scaled_warmup(overrides, full)}
        if options.get("resolutions") == "arch":
            options["resolutions"] = None
        try:
            schedule = make_schedule(options)
        except ConfigError as err:
            raise _in_rung(err, i, overrides) from None
        rungs.append(Rung(i, overrides, schedule, rung_label(overrides)))
    for lower, upper in zip(rungs, rungs[1:]):
        _check_step(lower, upper)
    last = rungs[-1]
    diff = _differences(last.schedule, full)
    if diff:
        key = diff[0]
        raise ConfigError(f"promotion.rungs.{last.index}" + (f".{key}" if key in last.overrides else ""),
                          last.overrides.get(key, last.overrides),
                          f"the last rung is the full schedule, the proxy section as it stands ({key}: "
                          f"{getattr(full, key, None)!r}); end the rungs with {{}}")
    seed = getattr(full, "seed", 0) or 0
    tops = [full] + [make_schedule({**proxy, "seed": seed + i}) for i in range(1, settings.repeats_top)]
    return Ladder(tuple(rungs), settings.eta, tuple(tops), settings.promote_points)


def _scaled_warmup(overrides: Mapping[str, Any], full) -> dict:
    epochs, warmup = getattr(full, "epochs", None), getattr(full, "warmup_epochs", None)
    if "epochs" in overrides and "warmup_epochs" not in overrides and epochs and warmup is not None:
        return {"warmup_epochs": warmup * overrides["epochs"] / epochs}
    return {}


def _in_rung(err: ConfigError, index: int, overrides: Mapping[str, Any]) -> ConfigError:
    """A schedule error on a key the rung sets, named as the rung's (others stay ``proxy.<key>``)."""
    key = err.path.split(".", 1)[1] if err.path.startswith("proxy.") else err.path
    if key.split(".")[0] in overrides:
        return ConfigError(f"promotion.rungs.{index}.{key}", err.value, err.allowed, err.source)
    return err


def _fidelity(schedule) -> dict[str, float]:
    """The rung's size along each fidelity knob; None (all images, each architecture's resolution) is the most."""
    images = getattr(schedule, "train_per_class", None)
    resolutions = getattr(schedule, "resolutions", None)
    return {"epochs": float(getattr(schedule, "epochs", 0) or 0),
            "train_per_class": math.inf if images is None else float(images),
            "resolutions": math.inf if not resolutions else float(max(resolutions))}


def _check_step(lower: Rung, upper: Rung) -> None:
    a, b = _fidelity(lower.schedule), _fidelity(upper.schedule)
    for key in a:
        if b[key] < a[key]:
            raise ConfigError(f"promotion.rungs.{upper.index}.{key}", getattr(upper.schedule, key, None),
                              f"rungs go up in fidelity: at least rung {lower.index}'s "
                              f"{getattr(lower.schedule, key, None)!r}")
    if a == b:
        raise ConfigError(f"promotion.rungs.{upper.index}", upper.overrides,
                          f"the same epochs, images per class and resolution as rung {lower.index}: a rung must "
                          "train more than the one below it")


def _fields(schedule) -> dict:
    if dataclasses.is_dataclass(schedule):
        return {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)}
    return dict(vars(schedule))


def _differences(a, b) -> list[str]:
    fa, fb = _fields(a), _fields(b)
    return [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


# ==================================================================== the decision
@dataclass(frozen=True)
class Decision:
    """A candidate's place among the ``members`` architectures at a rung: ``ahead`` of them come before it
    (a lower front, or the same front and more crowding distance); it goes on when ``ahead < keep``."""

    promoted: bool
    rank: int
    ahead: int
    members: int
    keep: int
    why: str = "rank"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def crowding_distances(points) -> np.ndarray:
    """NSGA-II crowding distance of each point of one front (the ends of every objective: infinite)."""
    pts = np.asarray(points, dtype=float)
    n, d = pts.shape
    out = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(d):
        order = np.argsort(pts[:, j], kind="stable")
        values = pts[order, j]
        span = values[-1] - values[0]
        out[order[0]] = out[order[-1]] = np.inf
        if span > 0:
            out[order[1:-1]] += (values[2:] - values[:-2]) / span
    return out


def decide(candidate: Sequence[float], peers: Sequence[Sequence[float]], eta: int) -> Decision:
    """Whether ``candidate`` goes on, among ``peers`` that reached the same rung (points to minimize:
    accuracy negated, then the costs)."""
    points = np.asarray([list(candidate), *map(list, peers)], dtype=float)
    ranks = nondominated_ranks(points)
    same = ranks == ranks[0]
    crowding = np.zeros(len(points))
    crowding[same] = crowding_distances(points[same])
    ahead = int(np.sum(ranks < ranks[0]) + np.sum(same & (crowding > crowding[0])))
    keep = math.ceil(len(points) / eta)
    return Decision(ahead < keep, int(ranks[0]), ahead, len(points), keep)


def rung_points(trials: Sequence[optuna.trial.FrozenTrial], rung: int, objectives: Sequence[str],
                exclude_arch: str | None = None) -> list[list[float]]:
    """(-accuracy at ``rung``, costs) of every architecture that reached it, once per architecture (the first
    trial of each; copies of duplicates and trials not yet started left out)."""
    from .trial import cost_vector
    out, seen = [], {exclude_arch}
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        acc = (a.get(RUNG_ACCURACY) or {}).get(str(rung))
        if t.state == TrialState.WAITING or acc is None or a.get("duplicate_of") is not None:
            continue
        costs = cost_vector(t, list(objectives))
        if a.get("arch_id") in seen or costs is None:
            continue
        seen.add(a.get("arch_id"))
        out.append([-float(acc), *costs])
    return out


# ==================================================================== one trial's climb
@dataclass
class Outcome:
    """How a climb ended: ``stopped`` (with the reason) at a rung below the last, or not."""

    stopped: bool = False
    reason: str = ""


class Climb:
    """Train one candidate up the ladder, rung by rung, deciding after each rung from the storage.

    Args:
        ladder: the rungs.
        trial: the running optuna trial (its arch_id and costs already recorded).
        costs: the candidate's cost objectives (latency[, MACs]), as in ``objectives`` after accuracy.
        objectives: the study's objective names.
        train: ``train(schedule) -> result`` trains the candidate once (a result with ``top1``).
        accuracy_of: the accuracy of a result (None if it has none).
    """

    def __init__(self, ladder: Ladder, trial, costs: Sequence[float], objectives: Sequence[str],
                 train: Callable[[Any], Any], accuracy_of: Callable[[Any], float | None]):
        self.ladder = ladder
        self.trial = trial
        self.costs = [float(c) for c in costs]
        self.objectives = list(objectives)
        self.train = train
        self.accuracy_of = accuracy_of
        carried = trial.user_attrs
        self.accuracy: dict[str, float] = dict(carried.get(RUNG_ACCURACY) or {})
        self.decisions: dict[str, dict] = dict(carried.get(RUNG_DECISION) or {})
        self.top_accuracies: list[float] = list(carried.get(TOP_ACCURACIES) or [])
        self.gpu_s: dict[str, float] = {}
        trial.set_user_attr(RUNG_GPU_S, {})  # a continuing trial counts only its own training

    def run(self) -> tuple[Any, Outcome]:
        """Returns the result of the highest rung trained (its top1 the rung's accuracy) and the outcome. A
        result without accuracy is returned at once (the pipeline fails the trial)."""
        result = None
        for rung in self.ladder.rungs:
            key = str(rung.index)
            if rung.index == self.ladder.top:
                return self._top(rung), Outcome()
            if key not in self.accuracy:
                result = self._train_rung(rung)
                if key not in self.accuracy:
                    return result, Outcome()
            decision = self.decisions.get(key) or self._decide(rung)
            if not decision["promoted"]:
                if result is None:  # continued from a trial that stopped here
                    result = SimpleNamespace(top1=self.accuracy[key])
                return result, Outcome(True, self._reason(rung, decision))
        raise AssertionError("a ladder ends with its top rung")  # pragma: no cover

    # ---------------------------------------------------------------- training
    def _train_rung(self, rung: Rung):
        result, seconds = self._timed(rung, rung.schedule)
        acc = self.accuracy_of(result)
        if acc is not None and math.isfinite(acc):
            self._record(rung, float(acc), seconds)
        return result

    def _top(self, rung: Rung):
        """The last rung: one run per seed not yet done; the accuracy is the mean over the seeds."""
        key, result = str(rung.index), None
        for schedule in self.ladder.top_schedules[len(self.top_accuracies):]:
            result, seconds = self._timed(rung, schedule)
            self._add_seconds(key, seconds)
            acc = self.accuracy_of(result)
            if acc is None or not math.isfinite(acc):
                return result
            self.top_accuracies.append(float(acc))
            self.trial.set_user_attr(TOP_ACCURACIES, list(self.top_accuracies))
        mean = float(np.mean(self.top_accuracies))
        self._record(rung, mean, 0.0)
        if result is not None and len(self.top_accuracies) == 1:
            return result
        fields = {k: getattr(result, k, None) for k in _RESULT_FIELDS} if result is not None else {}
        return SimpleNamespace(**{**fields, "top1": mean, "seed_top1": list(self.top_accuracies)})

    def _timed(self, rung: Rung, schedule):
        self.trial.set_user_attr(RUNG_TRAINING, rung.index)
        start = time.perf_counter()
        result = self.train(schedule)
        return result, time.perf_counter() - start

    def _add_seconds(self, key: str, seconds: float) -> None:
        self.gpu_s[key] = round(self.gpu_s.get(key, 0.0) + seconds, 4)
        self.trial.set_user_attr(RUNG_GPU_S, dict(self.gpu_s))

    def _record(self, rung: Rung, accuracy: float, seconds: float) -> None:
        key = str(rung.index)
        self.accuracy[key] = accuracy
        if seconds:
            self._add_seconds(key, seconds)
        # written before the peers are read, so two workers finishing together see each other
        self.trial.set_user_attr(RUNG_ACCURACY, dict(self.accuracy))
        self.trial.set_user_attr(RUNG, rung.index)

    # ---------------------------------------------------------------- deciding
    def _decide(self, rung: Rung) -> dict:
        key = str(rung.index)
        arch = self.trial.user_attrs.get("arch_id")
        peers = rung_points(self.trial.study.get_trials(deepcopy=False), rung.index, self.objectives, arch)
        decision = decide([-self.accuracy[key], *self.costs], peers, self.ladder.eta)
        if not decision.promoted and self.ladder.promote_points and self.trial.user_attrs.get("point"):
            decision = dataclasses.replace(decision, promoted=True, why="named point")
        self.decisions[key] = decision.to_dict()
        self.trial.set_user_attr(RUNG_DECISION, dict(self.decisions))
        return self.decisions[key]

    @staticmethod
    def _reason(rung: Rung, decision: dict) -> str:
        return (f"not promoted at rung {rung.index} ({rung.label}): {decision['ahead']} of "
                f"{decision['members']} architectures ahead (front {decision['rank']}), the best "
                f"{decision['keep']} go on")


# ==================================================================== the study
def running_top(study: optuna.Study, top: int) -> int:
    """Running trials that train the last rung: those will be complete unless they fail."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get(RUNG_TRAINING) == top)


def enqueue_continuations(study: optuna.Study) -> list[int]:
    """Enqueue, once, a continuation of every interrupted trial that finished a rung, so that a resumed study
    takes it on from the next rung. Returns the numbers of the trials continued."""
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get(CONTINUES) for t in trials}
    for t in trials:
        continued.update(t.system_attrs.get("retry_history") or [])
    settled = {t.user_attrs.get("arch_id") for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)}
    out = []
    for t in trials:
        a = t.user_attrs
        if (t.state != TrialState.FAIL or a.get("error") != "interrupted" or not a.get(RUNG_ACCURACY)
                or a.get("duplicate_of") is not None or t.number in continued or a.get("arch_id") in settled):
            continue
        carried = {k: a[k] for k in CARRIED_ATTRS if k in a}
        study.enqueue_trial(t.params, user_attrs={**carried, CONTINUES: t.number})
        settled.add(a.get("arch_id"))
        out.append(t.number)
    return out


def check_resume(stored: Mapping[str, Any], config: SearchConfig, name: str) -> None:
    """Raise ConfigError if ``config`` would continue study ``name`` with another early stopping or other rungs
    than it was made with (``stored``: its recorded config)."""
    from ._resume import stored_form
    mine = stored_form(config.to_dict())
    theirs_kind, my_kind = _effective_kind(stored), _effective_kind(mine)
    if theirs_kind != my_kind:
        raise ConfigError("early_stopping.kind", my_kind,
                          f"study {name!r} was made with early_stopping.kind {theirs_kind!r}; resume with the same "
                          "kind or pick another --study-name")
    if my_kind != "promotion":
        return
    theirs, ours = stored.get("promotion") or {}, mine["promotion"]
    for key in ("rungs", "eta", "repeats_top"):
        if theirs.get(key) != ours.get(key):
            raise ConfigError(f"promotion.{key}", ours.get(key),
                              f"study {name!r} was made with promotion.{key} {theirs.get(key)!r}; the rungs would "
                              "not be comparable: resume with the same value or pick another --study-name")


def _effective_kind(config: Mapping[str, Any]) -> str:
    """The early stopping a (stored) config ran with: only pareto mode uses one."""
    if config.get("mode", "pareto") != "pareto":
        return "none"
    # studies made before promotion existed recorded kind halving by default
    return (config.get("early_stopping") or {}).get("kind", "halving")
