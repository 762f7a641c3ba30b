"""Proxy calibration: how well do short training schedules rank architectures like the full schedule?

    from lowspace.search.calibrate import CalibrationSettings, calibrate
    result = calibrate(CalibrationSettings("search.yaml", n_archs=24, out="calibration"))
    print(result.message)

``calibrate`` draws ``n_archs`` architectures from a search space with the space's own sampler (seeded),
adds the space's named points (and, with ``presets="all"``, the published LowFormer presets), and trains
every one of them on the *full* schedule (the search config's proxy schedule as configured) with two seeds
and on each candidate short schedule (overrides of the full one: fewer epochs, fewer images per class, a
lower resolution, another learning rate). Every accuracy is measured on one validation split held out from
the training images (class-balanced, seeded); the data set's test split is never read.

Per candidate it reports Kendall tau and Spearman rho against the full schedule (the mean of its two seeds)
with bootstrap intervals over architectures, and the mean GPU-seconds per run; beside them the seed ceiling
(full seed A against full seed B) and the #params and MAC baselines. It recommends the cheapest candidate
whose tau against one full seed (measured like the ceiling) reaches ``target`` x the ceiling within
``max_cost_share`` of the full schedule's cost (if none does: the cheapest that reaches it at any cost, said
to be over the cost cap), and writes a search-config snippet using it. Runs are rows of ``rows.jsonl`` in
``out``; a re-run skips the rows it finds, so an interrupted calibration continues where it stopped.
``docs/calibration.md`` explains the numbers.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


from ..config import Config, option, parse_yaml, read_yaml
from ..errors import ConfigError
from . import _calibrate_run as run
from ._calibrate_stats import Agreement, KnobEffect

PRESET_CHOICES = ("space", "all", "none")
MIN_ARCHS = 4
# keys a candidate may not change: the validation split is one for all runs, the seed is the run's
FIXED_KEYS = (run.VAL_CAP, run.SEED, "split_seed", "eval_split")  # the calibration sets these itself
# short names of schedule keys in generated schedule names
_SHORT = {run.EPOCHS: "e", run.IMAGES: "n", run.RESOLUTIONS: "r", run.LR: "lr"}


# ==================================================================== settings
@dataclass
class CalibrationSettings(Config):
    """What a calibration does (checked when built, before any work starts).

    source: a bundled space name, a space YAML, or a search config YAML (its ``space``, ``proxy`` and
        ``data`` are used).
    n_archs: architectures drawn from the space (at least 4), besides the presets.
    presets: ``space`` (the space's named points), ``all`` (those plus the published LowFormer presets,
        adapted to the data's channels and classes) or ``none``.
    seed: seed of the architecture draw and of the held-out split.
    full_seeds: the two seeds of the full schedule. candidate_seeds: seeds of each candidate.
    default_schedules: include the default candidate grid. schedules: more candidates, name -> overrides
        (a name of the default grid replaces that candidate).
    full: overrides of the full schedule. data: replaces the config's ``data`` section.
    val_per_class: training images per class held out for validation (default: the full schedule's
        ``val_per_class``, else a sixth of the smallest class).
    target, max_cost_share: the recommendation rule (share of the seed ceiling; share of the full cost).
    out: output folder. workers: training processes (spawned; pinned to the GPUs round robin).
    device: ``auto``, ``cpu``, ``cuda`` (every visible GPU) or ``cuda:N``.
    resamples: bootstrap resamples. time_limit_s: start no run after this many seconds.
    train: False reports the rows already in ``out`` without training. png: also write the plot as PNG.
    cdn: the HTML plot loads plotly.js from its CDN instead of embedding it.
    """

    source: str = "lowformer"
    n_archs: int = option(24, ge=MIN_ARCHS, le=10_000)
    presets: str = option("space", choices=PRESET_CHOICES)
    seed: int = option(0, ge=0)
    full_seeds: tuple[int, ...] = option((0, 1), ge=0)
    candidate_seeds: tuple[int, ...] = option((2,), ge=0)
    default_schedules: bool = True
    schedules: dict[str, dict] = field(default_factory=dict)
    full: dict = field(default_factory=dict)
    data: dict | None = None
    val_per_class: int | None = option(None, ge=1)
    target: float = option(0.85, gt=0, le=1)
    max_cost_share: float = option(0.2, gt=0, le=1)
    out: str = "calibration"
    workers: int = option(1, ge=1, le=1024)
    device: str = "auto"
    resamples: int = option(2000, ge=100, le=1_000_000)
    time_limit_s: float | None = option(None, gt=0)
    train: bool = True
    png: bool = True
    cdn: bool = False

    def validate(self) -> None:
        if len(set(self.full_seeds)) != 2 or len(self.full_seeds) != 2:
            raise ConfigError("full_seeds", list(self.full_seeds), "two different seeds")
        if not self.candidate_seeds:
            raise ConfigError("candidate_seeds", [], "one or more seeds")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,2})?", self.device):
            raise ConfigError("device", self.device, "auto, cpu, cuda or cuda:N")
        if "full" in self.schedules:
            raise ConfigError("schedules.full", self.schedules["full"], "'full' names the full schedule")
        if not self.default_schedules and not self.schedules:
            raise ConfigError("schedules", {}, "at least one candidate schedule (the default grid is off)")


# ==================================================================== what to calibrate
@dataclass(frozen=True)
class Source:
    """The space, the full schedule's options and the data options a calibration starts from."""

    space: Any
    proxy: dict
    data: dict
    path: str


def read_source(spec: str) -> Source:
    """A space (bundled name or YAML) or a search config YAML, as a :class:`Source`."""
    from .space import SearchSpace, builtin_spaces
    path = Path(spec)
    if path.is_file():
        doc = read_yaml(path, "space or search config")
        if isinstance(doc.data, Mapping) and "params" in doc.data:
            return Source(SearchSpace.load(path), {}, {"dataset": "fashion_mnist"}, str(path))
        if isinstance(doc.data, Mapping):
            space, proxy, data = _search_config_sections(path)
            try:  # the proxy section alone, so that an error names its line in the file
                run.make_schedule({k: v for k, v in proxy.items() if k not in FIXED_KEYS}, "proxy")
            except ConfigError as err:
                raise doc.locate(err) from None
            return Source(space, proxy, data, str(path))
    elif not path.suffix and spec in builtin_spaces():
        return Source(SearchSpace.load(spec), {}, {"dataset": "fashion_mnist"}, spec)
    raise ConfigError("SPACE_OR_CONFIG", spec, "a bundled space (" + ", ".join(builtin_spaces()) +
                      "), a space YAML file or a search config YAML file")


def _search_config_sections(path: Path) -> tuple:
    """(space with its held parameters, proxy, data) of a search config file, validated by the search's own
    config reader."""
    from .settings import SearchConfig
    config = SearchConfig.from_yaml(path)
    proxy = dict(config.proxy)
    if proxy.get(run.RESOLUTIONS) == "arch":
        proxy[run.RESOLUTIONS] = None  # each architecture's own resolution
    return config.search_space(), proxy, dict(config.data)


@dataclass(frozen=True)
class Arch:
    """An architecture of the calibration: ``source`` is sampled, point or preset."""

    name: str
    arch_id: str
    config: dict
    source: str


def draw_architectures(space, n: int, presets: str, seed: int) -> list[Arch]:
    """The space's named points (and presets), then ``n`` distinct architectures drawn with the space's
    sampler from ``random.Random(seed)``; the same arguments always give the same list."""
    from ..arch.presets import PUBLISHED_PRESETS, get_preset, preset_key
    archs: dict[str, Arch] = {}
    if presets in ("space", "all"):
        for name, assignment in space.points.items():
            cfg = space.build(assignment)
            archs.setdefault(cfg.arch_id, Arch(name, cfg.arch_id, cfg.to_dict(),
                                               "preset" if preset_key(name) else "point"))
    if presets == "all":
        for key in PUBLISHED_PRESETS:
            cfg = get_preset(key)
            archs.setdefault(cfg.arch_id, Arch(key, cfg.arch_id, cfg.to_dict(), "preset"))
    rng = random.Random(seed)
    drawn, attempts = 0, 0
    while drawn < n and attempts < 100 * n:
        attempts += 1
        try:
            cfg = space.build(space.sample(rng))
        except ConfigError:
            continue
        if cfg.arch_id not in archs:
            archs[cfg.arch_id] = Arch(f"r{drawn:02d}", cfg.arch_id, cfg.to_dict(), "sampled")
            drawn += 1
    if drawn < n:
        raise ConfigError("n_archs", n, f"space {space.name} gave only {drawn} distinct new architectures in "
                                         f"{attempts} draws; ask for fewer")
    return list(archs.values())


# ==================================================================== schedules
@dataclass(frozen=True)
class Schedule:
    """A schedule: its overrides of the full schedule and the complete options (without the seed)."""

    name: str
    overrides: dict
    options: dict


def full_options(proxy: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """The full schedule's complete options (validated): the config's ``proxy`` section with ``overrides``.
    The validation split is fixed, so no val cap."""
    if run.SEED in overrides:
        raise ConfigError(f"full.{run.SEED}", overrides[run.SEED], "set by the calibration (full_seeds)")
    options = {k: v for k, v in {**proxy, **overrides}.items() if k not in FIXED_KEYS}
    return {**run.schedule_options(run.make_schedule(options, "full")), run.VAL_CAP: None}


def resolve_schedule(name: str, overrides: Mapping[str, Any], full: Mapping[str, Any]) -> Schedule:
    """A candidate's complete options: the full ones with ``overrides``; when only ``epochs`` changes, the
    warm-up keeps its share of the epochs. Unless ``overrides`` say otherwise a candidate is evaluated once,
    after its last epoch: the ranking reads only the final accuracy, and evaluating every epoch of a short
    schedule costs a large share of it."""
    where = f"schedule {name}"
    for key in overrides:
        if key in FIXED_KEYS:
            raise ConfigError(f"{where}.{key}", overrides[key],
                              "fixed for a calibration (every run is evaluated on one held-out split; seeds "
                              "are the calibration's)")
    options = {**full, **overrides}
    epochs, warmup = run.EPOCHS, run.WARMUP
    if epochs in overrides and warmup not in overrides and isinstance(overrides[epochs], int) and full[epochs]:
        options[warmup] = full[warmup] * overrides[epochs] / full[epochs]
    if run.EVAL_EVERY not in overrides and isinstance(options.get(epochs), int) and options != dict(full):
        options[run.EVAL_EVERY] = options[epochs]
    return Schedule(name, dict(overrides), run.schedule_options(run.make_schedule(options, where)))


def schedule_name(overrides: Mapping[str, Any]) -> str:
    """A short name from the overrides: ``e2-r32``, ``e2-lr0.004``, ``e2-n2500``."""
    parts = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            value = "x".join(map(str, value))
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{_SHORT.get(key, key + '=')}{text}")
    return "-".join(parts) or "full"


def resolution_of(options: Mapping[str, Any]) -> int | None:
    """The (largest) training resolution of a schedule; None = each architecture's own."""
    res = options.get(run.RESOLUTIONS)
    return max(res) if res else None


def default_grid(full: Mapping[str, Any], per_class: int) -> list[dict]:
    """The default candidates: 20 % and 10 % of the epochs, and at 20 % of the epochs half the resolution,
    twice the learning rate or half the images per class, and 40 % of the epochs at half the resolution."""
    def epochs(share: float) -> dict:
        return {run.EPOCHS: max(1, round(full[run.EPOCHS] * share))}

    grid = [epochs(0.2), epochs(0.1)]
    res = resolution_of(full)
    half = {run.RESOLUTIONS: [res // 2]} if res and res // 2 >= 8 and len(full[run.RESOLUTIONS]) == 1 else None
    if half:
        grid.append({**epochs(0.2), **half})
    grid.append({**epochs(0.2), run.LR: full[run.LR] * 2})
    images = min(full.get(run.IMAGES) or per_class, per_class)
    if images >= 2:
        grid.append({**epochs(0.2), run.IMAGES: images // 2})
    if half:
        grid.append({**epochs(0.4), **half})
    return grid


def plan_schedules(settings: CalibrationSettings, full: dict, per_class: int) -> list[Schedule]:
    """The candidate schedules, without duplicates of each other or of the full schedule."""
    wanted: dict[str, dict] = {}
    if settings.default_schedules:
        for overrides in default_grid(full, per_class):
            wanted[schedule_name(overrides)] = overrides
    for name, overrides in settings.schedules.items():
        wanted[name] = dict(overrides)
    out, seen = [], {json.dumps(full, sort_keys=True, default=str)}
    for name, overrides in wanted.items():
        schedule = resolve_schedule(name, overrides, full)
        key = json.dumps(schedule.options, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(schedule)
    return out


def relative_cost(options: Mapping[str, Any], full: Mapping[str, Any], per_class: int) -> float:
    """A rough cost of a schedule relative to the full one (epochs x images x pixels), to order the jobs."""
    def volume(o):
        images = min(o.get(run.IMAGES) or per_class, per_class)
        res = resolution_of(o) or 224
        return o[run.EPOCHS] * images * res * res
    return volume(options) / volume(full)


# ==================================================================== the plan
@dataclass
class Plan:
    """Everything decided before training: architectures, schedules, the data and the job list."""

    settings: CalibrationSettings
    source: Source
    archs: list[Arch]
    full: Schedule
    candidates: list[Schedule]
    data_spec: dict
    data_key: str
    per_class: int
    data: Any = None
    costs: dict[str, dict] = field(default_factory=dict)

    @property
    def schedules(self) -> list[Schedule]:
        return [self.full, *self.candidates]

    def seeds(self, schedule: str) -> tuple[int, ...]:
        return self.settings.full_seeds if schedule == "full" else self.settings.candidate_seeds

    def jobs(self) -> list[run.Job]:
        """Every run, in the order they start: the full schedule with both seeds (the reference and the seed
        ceiling, which every later number needs), then the candidates from the cheapest, seed by seed; within
        a schedule the largest architectures first. A calibration stopped early thus has its ceiling."""
        s = self.settings
        order = sorted(self.candidates, key=lambda c: relative_cost(c.options, self.full.options, self.per_class))
        waves = [(self.full, seed) for seed in s.full_seeds]
        waves += [(c, seed) for seed in s.candidate_seeds for c in order]
        archs = sorted(self.archs, key=lambda a: -self.costs.get(a.arch_id, {}).get("macs", 0))
        return [self.job(a, sched, seed) for sched, seed in waves for a in archs]

    def job(self, arch: Arch, schedule: Schedule, seed: int) -> run.Job:
        options = {**schedule.options, run.SEED: seed}
        return run.Job(arch.name, arch.arch_id, arch.config, schedule.name, options, seed,
                       run.job_key(arch.arch_id, options, seed, self.data_key))


def make_plan(settings: CalibrationSettings) -> Plan:
    """Read and check everything (space, schedules, data, architectures); no training yet."""
    settings.validate()
    source = read_source(settings.source)
    data_options = dict(settings.data) if settings.data is not None else dict(source.data)
    full_opts = full_options(source.proxy, settings.full)
    for name, overrides in settings.schedules.items():  # user input is checked before the data is read
        resolve_schedule(name, overrides, full_opts)
    archs = draw_architectures(source.space, settings.n_archs, settings.presets, settings.seed)
    data = run.load_data(data_options)
    smallest = min(run.class_counts(data))
    held = settings.val_per_class or settings.full.get(run.VAL_CAP) or source.proxy.get(run.VAL_CAP) \
        or max(1, smallest // 6)
    if held >= smallest:
        raise ConfigError("val_per_class", held, f"fewer than the {smallest} training images of the smallest class")
    data_key = run.data_identity(data, held, settings.seed)
    data = run.validation_split(data, held, settings.seed)
    per_class = min(run.class_counts(data))
    full = Schedule("full", dict(settings.full), full_opts)
    candidates = plan_schedules(settings, full_opts, per_class)
    data_spec = dict(data=data_options, val_per_class=held, split_seed=settings.seed, identity=data_key)
    return Plan(settings, source, archs, full, candidates, data_spec, data_key, per_class, data)


def arch_costs(plan: Plan, path: Path) -> dict[str, dict]:
    """Params and MACs of every architecture as trained (data's channels and classes, full resolution),
    kept in ``archs.json`` so a re-run does not count them again."""
    from ..arch.config import ArchConfig
    cached = {}
    if path.exists():
        try:
            cached = {a["arch_id"]: a for a in json.loads(path.read_text()) if "macs" in a}
        except (json.JSONDecodeError, TypeError, KeyError):
            cached = {}
    res = resolution_of(plan.full.options)
    out = {}
    for arch in plan.archs:
        hit = cached.get(arch.arch_id)
        if hit is None or hit.get("resolution") != res:
            cfg = ArchConfig.from_dict(arch.config)
            cfg = cfg.replace(in_chans=plan.data.in_chans, num_classes=plan.data.num_classes,
                              resolution=res or cfg.resolution)
            params, macs = run.count_cost(cfg, res)
            hit = dict(name=arch.name, arch_id=arch.arch_id, source=arch.source, params=params, macs=macs,
                       resolution=res, config=arch.config)
        out[arch.arch_id] = hit
    from ..io import atomic_write_json
    atomic_write_json(path, list(out.values()))
    return out


# ==================================================================== the result
@dataclass
class ScheduleSummary:
    """One schedule's outcome. ``agreement``: against the full schedule, the mean of its seeds (for ``full``
    itself: the seed ceiling, seed A against seed B). ``tau_one_seed``: the mean over the full schedule's seeds
    of Kendall tau against that seed alone, measured like the ceiling (the recommendation reads it).
    ``gpu_s``: mean seconds per run; ``cost_share``: of the full schedule's (over the same architectures)."""

    name: str
    overrides: dict
    options: dict
    runs: int
    archs: int
    mean_top1: float | None
    gpu_s: float | None
    cost_share: float | None
    agreement: Agreement | None
    tau_one_seed: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["agreement"] = self.agreement.to_dict() if self.agreement else None
        return d


@dataclass
class Summary:
    """Accuracies and costs by schedule, and what follows from them."""

    top1: dict[str, dict[str, dict[int, float]]]  # schedule -> arch_id -> seed -> top-1
    gpu_s: dict[str, dict[str, dict[int, float]]]
    full: ScheduleSummary
    candidates: list[ScheduleSummary]
    baselines: dict[str, Agreement]
    recommended: str | None
    message: str
    knobs: list[KnobEffect]
    notes: list[str]
    over_cost_cap: bool = False  # no candidate reached the target within the cost cap; the recommended one costs more

    @property
    def ceiling(self) -> Agreement | None:
        return self.full.agreement


@dataclass(kw_only=True)
class CalibrationResult(Summary):
    """What :func:`calibrate` found (its summary; ``message`` says it in a sentence or two) and where it wrote it."""

    out: Path
    archs: int
    snippet: Path | None
    files: list[Path]
    runs: dict[str, int]


# ==================================================================== entry point
def calibrate(settings: CalibrationSettings, progress: Callable[[str], None] | None = None) -> CalibrationResult:
    """Plan, train what is missing (resuming from ``out/rows.jsonl``) and report; see the module docstring."""
    from ._calibrate_report import summarize, write_outputs
    say = progress or (lambda text: None)
    plan = make_plan(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    plan.costs = arch_costs(plan, out / "archs.json")
    store = run.RowStore(out / "rows.jsonl")
    jobs = plan.jobs()
    done = store.done_keys()
    todo = [j for j in jobs if j.key not in done]
    runs = dict(planned=len(jobs), skipped=len(jobs) - len(todo), ran=0, failed=0, left=len(todo))
    say(f"{len(plan.archs)} architectures x ({len(settings.full_seeds)} full + {len(plan.candidates)} candidate "
        f"schedules): {len(jobs)} runs, {runs['skipped']} already in {store.path}")
    if settings.train and todo:
        devices = run.worker_devices(_device(settings.device))
        _write_plan(plan, out / "plan.json")

        def on_row(row: dict, i: int, total: int) -> None:
            top1 = f"top-1 {row['top1']:.2f}" if row.get("top1") is not None else f"FAILED: {row.get('error')}"
            gpu = f"{row['gpu_s']:.1f} s" if row.get("gpu_s") is not None else "-"
            say(f"[{i}/{total}] {row['arch']} {row['schedule']} seed {row['seed']}: {top1} ({gpu}, {row['device']})")

        counts = run.run_jobs(todo, store, devices, settings.workers, plan.data_spec, data=plan.data,
                              time_limit_s=settings.time_limit_s, on_row=on_row)
        runs.update(counts)
    summary = summarize(plan, store.read())
    result = write_outputs(plan, summary, out, runs)
    return result


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_plan(plan: Plan, path: Path) -> None:
    from ..io import atomic_write_json
    atomic_write_json(path, dict(source=plan.source.path, space=plan.source.space.name, data=plan.data_spec,
                                 full=plan.full.options, candidates={c.name: c.overrides for c in plan.candidates},
                                 archs=[a.name for a in plan.archs], seeds=dict(full=list(plan.settings.full_seeds),
                                 candidates=list(plan.settings.candidate_seeds))))


def parse_overrides(text: str, where: str) -> dict:
    """``key=value,key=value`` (values read as YAML: numbers, lists, true/false, null, text) as a dict;
    ConfigError naming ``where``."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in _split_pairs(text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, text, "key=value pairs separated by commas, e.g. epochs=2,resolutions=[32]")
        out[key.strip()] = _scalar(value, f"{where} {key.strip()}")
    if not out:
        raise ConfigError(where, text, "at least one key=value pair")
    return out


def _split_pairs(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (``resolutions=[32,48],epochs=2``)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _scalar(text: str, where: str) -> Any:
    """A value as YAML reads it (``4e-3`` is a number, ``[32]`` a list, ``null`` or nothing None)."""
    return parse_yaml(text, where, what="value", allow_empty=True).data


__all__ = ["CalibrationSettings", "CalibrationResult", "ScheduleSummary", "calibrate", "make_plan",
           "read_source", "draw_architectures", "default_grid", "parse_overrides"]
