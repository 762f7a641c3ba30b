"""Final evaluation: train chosen architectures with several seeds and evaluate each on the test split.

A search ranks candidates by a short proxy on images held out from training; a claim about the chosen ones
needs numbers the search never saw. :func:`evaluate_final` trains every architecture ``repeats`` times
(seeds ``seed``, ``seed + 1``, ...) with a recipe (by default the search's proxy recipe, as the export writes
it) and evaluates each run once, at its end, on the data set's test split: no held-out images are carved
from the training set, no epoch or restart is chosen on test accuracy. The results carry the mean, standard
deviation, confidence interval and the test set's binomial standard error, and front members are compared
with the presets at a significance level (:mod:`.significance`).

    from lowspace.report.evaluate import evaluate_final, study_entries
    results = evaluate_final(study_entries(study), "fashion_mnist", recipe, repeats=3, out_dir="final")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ..arch.config import ArchConfig
from ..errors import ConfigError
from ..io import atomic_write_text
from .significance import DEFAULT_LEVEL, Accuracy, compare

MAX_REPEATS = 100


@dataclass(frozen=True)
class Entry:
    """An architecture to evaluate: a front member (``kind`` front) or a preset, with the latency (and its
    spread) the study measured."""

    name: str
    config: ArchConfig
    kind: str = "front"
    trial: int | None = None
    latency_ms: float | None = None
    latency_spread: float | None = None


@dataclass
class FinalResult:
    """The runs of one entry: one dict per seed (seed, top1, top5, images, resolution, train_s)."""

    entry: Entry
    runs: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> Accuracy:
        images = {r.get("images") for r in self.runs}
        return Accuracy(tuple(r["top1"] for r in self.runs), images.pop() if len(images) == 1 else None)


def study_entries(study, trials: Sequence[int] | None = None, presets: bool = True) -> list[Entry]:
    """The front members of a study (or the trials numbered ``trials``) and, with ``presets``, the
    study's preset trials, each with its measured latency."""
    from .export import pareto_trials, trial_config
    chosen = pareto_trials(study) if trials is None else [t for t in study.get_trials(deepcopy=False)
                                                          if t.number in set(trials)]
    entries, seen = [], set()
    for t in chosen:
        seen.add(t.user_attrs.get("arch_id"))
        entries.append(_entry(t, trial_config(t), "preset" if t.user_attrs.get("preset") else "front"))
    if presets:
        for t in study.get_trials(deepcopy=False):
            a = t.user_attrs
            if a.get("preset") and a.get("arch_id") not in seen and a.get("status") == "complete":
                seen.add(a["arch_id"])
                entries.append(_entry(t, trial_config(t), "preset"))
    return entries


def study_data(study, dataset: str | None = None):
    """The data set a study searched on (``dataset`` replaces its name), loaded with its test split whole: a
    ``val_per_class`` cap in the study's data options is not applied to the test split."""
    from ..data import get_dataset
    from ..search._resume import stored_config
    options = dict(stored_config(study).get("data") or {})
    spec = dataset or options.pop("dataset", None) or "fashion_mnist"
    options.pop("dataset", None)
    options.pop("val_per_class", None)
    return get_dataset(spec, **options)


def _entry(trial, cfg: ArchConfig, kind: str) -> Entry:
    a = trial.user_attrs
    name = str(a["preset"]) if a.get("preset") else f"trial {trial.number}"
    return Entry(name, cfg, kind, trial.number, a.get("latency_ms"), (a.get("latency") or {}).get("spread"))


def searched_sizes(resolutions: Sequence[int] | None, resolution: int) -> tuple[list[int] | None, int]:
    """Training resolutions as the proxy applies them to an architecture of side ``resolution`` (none above
    it) and the evaluation side (the largest of them)."""
    if not resolutions:
        return None, resolution
    sizes = sorted({min(int(r), resolution) for r in resolutions})
    return sizes, max(sizes)


def final_recipe(recipe, cfg: ArchConfig, seed: int):
    """``recipe`` for one final run of ``cfg``: this seed, trained on the whole training split, evaluated
    once at the end on the test split (at the resolution the proxy would use), no restarts."""
    sizes, side = searched_sizes(recipe.resolutions, cfg.resolution)
    changes: dict[str, Any] = dict(seed=seed, eval_split="test", val_per_class=None, eval_every=recipe.epochs,
                                   auto_restart=None)
    if sizes is not None:
        changes.update(resolutions=tuple(sizes), eval_resolution=recipe.eval_resolution or side)
    return recipe.replace(**changes)


Trainer = Callable[[ArchConfig, Any, Any, Any, "Path | None"], dict]


def train_run(cfg: ArchConfig, data, recipe, device, run_dir: Path | None) -> dict:
    """Train one run and return its final evaluation: with ``run_dir`` through :func:`lowspace.train.fit`
    (checkpoints; an interrupted run resumes, a finished one is read back), else in memory."""
    from ..train import fit
    from ..train.distributed import DistInfo, resolve_device
    from ..train.engine import prepare_data, run
    if run_dir is not None and (run_dir / "result.json").is_file():
        stored = json.loads((run_dir / "result.json").read_text())
        return _row(stored["top1"], stored["top5"], stored["info"], stored["train_s"])
    if run_dir is not None:
        result = fit(cfg, data, recipe, run_dir, device=device, resume=True, progress=False)
    else:
        prepared = prepare_data(data, recipe, recipe.eval_resolution or cfg.resolution)
        result = run(cfg, prepared, recipe.replace(batch_size=min(recipe.batch_size, len(prepared.train))),
                     DistInfo(device=resolve_device(device)))
    return _row(result.top1, result.top5, result.info, result.train_s)


def _row(top1, top5, info: dict, train_s: float) -> dict:
    validation = info.get("validation") or {}
    if validation.get("split") not in (None, "test"):
        raise ConfigError("eval_split", validation.get("split"), "a final evaluation reads the test split")
    return dict(top1=top1, top5=top5, images=validation.get("images"), resolution=info.get("resolution"),
                train_s=train_s)


def evaluate_final(entries: Sequence[Entry], data, recipe, repeats: int = 3, seed: int = 0, device=None,
                   out_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
                   train: Trainer | None = None) -> list[FinalResult]:
    """Train each entry ``repeats`` times and evaluate it on the test split (see the module docstring).

    Args:
        entries: what to evaluate (:func:`study_entries`).
        data: an ImageData or a :func:`~lowspace.data.get_dataset` spec, loaded with its test split.
        recipe: a recipe name, YAML path, mapping or Recipe (see :func:`lowspace.train.load_recipe`).
        repeats: seeds per architecture; seed: the first seed.
        out_dir: run directories ``OUT/runs/<name>/seed<k>`` (resumable); None trains in memory.
        train: ``train(cfg, data, recipe, device, run_dir) -> dict`` (default :func:`train_run`).
    """
    from ..data import get_dataset
    from ..train import load_recipe
    if not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError("--repeats", repeats, f"an integer from 1 to {MAX_REPEATS}")
    base = load_recipe(recipe)
    train = train or train_run
    if isinstance(data, (str, Path)):
        data = get_dataset(str(data), seed=base.seed)
    results = []
    for entry in entries:
        result = FinalResult(entry)
        for k in range(repeats):
            run_dir = Path(out_dir) / "runs" / _safe(entry.name) / f"seed{seed + k}" if out_dir is not None else None
            row = train(entry.config, data, final_recipe(base, entry.config, seed + k), device, run_dir)
            result.runs.append(dict(seed=seed + k, **row))
            if progress is not None:
                progress(f"{entry.name} seed {seed + k}: test top-1 {row['top1']:.2f} % on {row['images']} images")
        results.append(result)
    return results


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ==================================================================== tables, comparisons, files
def final_frame(results: Sequence[FinalResult], level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """One row per architecture: mean, std, confidence interval, binomial SE, seeds, latency."""
    rows = []
    for r in results:
        acc = r.accuracy
        low, high = acc.interval(level)
        rows.append(dict(name=r.entry.name, kind=r.entry.kind, trial=r.entry.trial, arch_id=r.entry.config.arch_id,
                         mean=acc.mean, std=acc.std, ci_low=low, ci_high=high, binomial_se=acc.binomial_se,
                         seeds=acc.seeds, images=acc.images, latency_ms=r.entry.latency_ms,
                         latency_spread=r.entry.latency_spread, values=" ".join(f"{v:.2f}" for v in acc.values),
                         describe=acc.describe(level)))
    return pd.DataFrame(rows)


def final_comparisons(results: Sequence[FinalResult], level: float = DEFAULT_LEVEL) -> list[str]:
    """Each front member against each preset, on the final accuracies and the study's latencies."""
    lines = []
    for a in (r for r in results if r.entry.kind == "front"):
        for b in (r for r in results if r.entry.kind == "preset"):
            if a.entry.latency_ms is None or b.entry.latency_ms is None:
                continue
            c = compare(a.accuracy, a.entry.latency_ms, a.entry.latency_spread,
                        b.accuracy, b.entry.latency_ms, b.entry.latency_spread, level)
            lines.append(c.sentence(a.entry.name, b.entry.name))
    return lines


def final_notes(result: FinalResult, results: Sequence[FinalResult], recipe_name: str,
                level: float = DEFAULT_LEVEL) -> list[str]:
    """Sentences for an exported config's notes: its final accuracy and its comparisons."""
    own = [line for line in final_comparisons(results, level) if line.startswith(f"{result.entry.name} ")]
    text = [f"Final evaluation (recipe {recipe_name}, test split): top-1 {result.accuracy.describe(level)}."]
    if own:
        text.append(f"At the {level * 100:g} % level: " + "; ".join(own) + ".")
    return text


def write_final_report(results: Sequence[FinalResult], out_dir: str | Path, title: str, level: float = DEFAULT_LEVEL,
                       png: bool = True, plotlyjs: bool | str = True,
                       latency_label: str = "measured latency (ms)") -> tuple[list[Path], list[str]]:
    """``final.csv`` (one row per architecture), ``final_runs.csv`` (one per run), ``final.md`` and the plot
    ``final.html`` / ``.png`` (``latency_label`` names its x axis: which latency it is); returns (files, notes)."""
    from .plots import final_figure, write_figure
    from .tables import markdown_table, write_csv
    out = Path(out_dir)
    frame = final_frame(results, level)
    runs = pd.DataFrame([dict(name=r.entry.name, arch_id=r.entry.config.arch_id, **run) for r in results
                         for run in r.runs])
    files = [write_csv(frame.drop(columns=["describe"]), out / "final.csv"), write_csv(runs, out / "final_runs.csv")]
    html, png_path, note = write_figure(final_figure(frame, title, level, latency_label), out / "final.html",
                                        out / "final.png" if png else None, plotlyjs=plotlyjs)
    files += [html] + ([png_path] if png_path else [])
    table = frame.assign(accuracy=frame["describe"]).rename(columns={"latency_ms": "latency ms"})
    comparisons = final_comparisons(results, level)
    lines = [f"# {title}", "", f"Each architecture trained with {_seeds_text(frame)}, evaluated once at the end on "
             "the test split. Accuracy: mean ± standard deviation over seeds, the "
             f"{level * 100:g} % confidence interval of the mean, and the test set's binomial standard error.", "",
             markdown_table(table, ("name", "kind", "trial", "accuracy", "latency ms"))]
    if comparisons:  # a table of presets alone (or of front members alone) has no pair to compare
        lines += [f"## Front members against the presets ({level * 100:g} % level)", "",
                  *[f"- {c}" for c in comparisons]]
    if note:
        lines += ["", f"Note: final plot: {note}"]
    atomic_write_text(out / "final.md", "\n".join(lines) + "\n")
    files.append(out / "final.md")
    return files, [f"final plot: {note}"] if note else []


def _seeds_text(frame: pd.DataFrame) -> str:
    counts = sorted(set(int(n) for n in frame["seeds"])) if not frame.empty else [0]
    return f"{counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1 else \
        f"{counts[0]}-{counts[-1]} seeds"


__all__ = ["Entry", "FinalResult", "study_entries", "study_data", "final_recipe", "searched_sizes", "train_run",
           "evaluate_final", "final_frame", "final_comparisons", "final_notes", "write_final_report", "MAX_REPEATS"]
