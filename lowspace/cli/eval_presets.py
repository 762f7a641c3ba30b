"""``lowspace eval b0 b1 b15 b3 --checkpoint-dir DIR --data ROOT``: several models, each with its weights from
DIR, evaluated on the same test images in one call, as one table (top-1, top-5, images/s).

Each model is evaluated at its own resolution and crop: a run directory's recipe where the weights come from
one, else the model's recipe and ``pretrained_cfg`` (the rule ``lowspace train`` evaluates by); ``--resolution``
and ``--crop-pct`` override them for every model. Weights are found in DIR by the model's name (below); a model
without weights, or with several candidates, is a one-line error before anything is evaluated.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# the official repository keeps each model's weights at <name>/checkpoint/evalmodel.pt
OFFICIAL_LAYOUTS = ("checkpoint/evalmodel.pt", "evalmodel.pt")
_SEPARATORS = "._-"


@dataclass(frozen=True)
class Entry:
    """One model to evaluate: what the user named, its config, its weights and the recipe they were trained by."""

    name: str
    cfg: object
    weights: Path
    run_recipe: Path | None = None


def check_sources(args) -> None:
    """Exactly one of ``--checkpoint`` (one model) and ``--checkpoint-dir`` (any number of models)."""
    if args.checkpoint and args.checkpoint_dir:
        raise ConfigError("--checkpoint-dir", args.checkpoint_dir, "either --checkpoint (one model) or "
                                                                   "--checkpoint-dir, not both")
    if not args.checkpoint and not args.checkpoint_dir:
        raise ConfigError("--checkpoint", None, "required: a weights file or `lowspace train` run directory (or "
                                                "--checkpoint-dir DIR with the weights of every model named)")
    if args.checkpoint and len(args.config) > 1:
        raise ConfigError("--checkpoint", args.checkpoint, f"one weights file for {len(args.config)} models; give "
                                                           "--checkpoint-dir DIR holding the weights of each")
    if args.checkpoint_dir and args.split != "test":
        raise ConfigError("--split", args.split, "test with --checkpoint-dir (holdout evaluates one run: "
                                                 "--checkpoint RUN)")


# ==================================================================== finding the weights
def aliases(name: str, cfg) -> set[str]:
    """The lower-case names a weights file of this model may start with."""
    from ..arch.presets import preset_key
    key = preset_key(name)
    names = {Path(name).stem.lower()} if key is None else _preset_aliases(key)
    if cfg.name:
        names.add(cfg.name.lower())
    return {n.removeprefix("lowformer_").removeprefix("lowformer-") for n in names}


def _preset_aliases(key: str) -> set[str]:
    from ..arch.presets import _ALIASES
    return {key} | {alias for alias, target in _ALIASES.items() if target == key}


def _all_preset_aliases() -> dict[str, str]:
    from ..arch.presets import PRESET_NAMES
    return {alias: key for key in PRESET_NAMES for alias in _preset_aliases(key)}


def _named(stem: str, alias: str) -> bool:
    """Whether a file or folder name ``stem`` (suffix removed) names ``alias``: ``b1``, ``lowformer_b1``,
    ``b1_ema``, ``lowformer_b1.in1k`` do, ``b15`` does not."""
    stem = stem.lower()
    for prefix in ("", "lowformer_", "lowformer-"):
        base = prefix + alias
        if stem == base or (stem.startswith(base) and stem[len(base)] in _SEPARATORS):
            return True
    return False


def owner(stem: str, wanted: dict[str, str]) -> str | None:
    """The model a name belongs to: the longest alias it names (``b1.5`` wins over ``b1``), among the models
    asked for and every preset (so b15's file is never taken for b1)."""
    every = {**_all_preset_aliases(), **wanted}
    matches = [alias for alias in every if _named(stem, alias)]
    if not matches:
        return None
    best = max(matches, key=len)
    return wanted.get(best)


def _candidates(entry: Path) -> list[tuple[Path, Path | None]]:
    """(weights, run recipe) a DIR entry offers: a weights file, or a folder in the official layout or a
    ``lowspace train`` run directory."""
    if entry.is_file():
        return [(entry, None)] if entry.suffix.lower() in WEIGHT_SUFFIXES else []
    for layout in OFFICIAL_LAYOUTS:
        if (entry / layout).is_file():
            return [(entry / layout, None)]
    from ..train.checkpoint import ResumeError, find_weights
    try:
        weights = find_weights(entry)
    except ResumeError:
        return []
    recipe = entry / "recipe.yaml"
    return [(weights, recipe if recipe.is_file() else None)]


def find_all_weights(directory: str | Path, models: dict[str, set[str]]) -> dict[str, tuple[Path, Path | None]]:
    """The weights of every model (name -> its aliases) in ``directory``; ConfigError naming every model
    without weights, or with more than one candidate, before anything is loaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("--checkpoint-dir", str(directory), "an existing folder")
    wanted = {alias: name for name, names in models.items() for alias in names}
    found: dict[str, list[tuple[Path, Path | None]]] = {name: [] for name in models}
    for entry in sorted(directory.iterdir()):
        stem = entry.name[: -len(entry.suffix)] if entry.is_file() and entry.suffix else entry.name
        name = owner(stem, wanted)
        if name is not None:
            found[name].extend(_candidates(entry))
    missing = [name for name, hits in found.items() if not hits]
    if missing:
        looked = " / ".join(f"*{s}" for s in WEIGHT_SUFFIXES)
        raise ConfigError("--checkpoint-dir", str(directory),
                          f"no weights for {', '.join(missing)} (looked for lowformer_<name>{looked}, <name>{looked}, "
                          f"<name>/checkpoint/evalmodel.pt and `lowspace train` run folders <name>/)")
    several = {name: hits for name, hits in found.items() if len(hits) > 1}
    if several:
        name, hits = next(iter(several.items()))
        raise ConfigError("--checkpoint-dir", str(directory),
                          f"{len(hits)} weights for {name}: {', '.join(str(w.relative_to(directory)) for w, _ in hits)}"
                          "; keep one (or evaluate it with --checkpoint FILE)")
    return {name: hits[0] for name, hits in found.items()}


def plan(args) -> list[Entry]:
    """The models of the command line with their configs and weights (all checked before any evaluation)."""
    from ..arch import resolve_config
    configs = {name: resolve_config(name) for name in args.config}
    if len(configs) < len(args.config):
        raise ConfigError("config", args.config, "each model once")
    weights = find_all_weights(args.checkpoint_dir, {name: aliases(name, cfg) for name, cfg in configs.items()})
    return [Entry(name, configs[name], *weights[name]) for name in args.config]


# ==================================================================== evaluating
def _settings(args, entry: Entry, model):
    """The model's eval resolution, crop and interpolation: the flags, else its run's recipe, else its own
    recipe and pretrained_cfg."""
    from ..train import load_recipe
    from ..train.engine import EvalSettings, eval_settings
    recipe = None
    if entry.run_recipe is not None:
        recipe = load_recipe(entry.run_recipe)
    elif entry.cfg.recipe:
        recipe = load_recipe(entry.cfg.recipe)
    s = eval_settings(recipe, model, entry.cfg)
    return EvalSettings(args.resolution or s.resolution, args.crop_pct or s.crop_pct, s.interpolation)


def load_entry(args, entry: Entry, data):
    """One model with its weights (checked: :func:`~lowspace.train.checkpoint.load_checked_weights`), on the CPU."""
    from ..arch import LowFormer
    from ..train.checkpoint import load_checked_weights
    cfg = entry.cfg.replace(num_classes=data.num_classes, in_chans=data.in_chans)
    model = LowFormer(cfg, init="torch")
    load_checked_weights(model, entry.weights, args.allow_bad_weights)
    return model


def evaluate_entry(args, entry: Entry, model, data, device) -> dict:
    """Evaluate one model on ``data``'s test split; its row of the table."""
    from ..train.evaluate import evaluate_model
    model.to(device)
    settings = _settings(args, entry, model)
    start = time.perf_counter()
    result = evaluate_model(model, data, settings.resolution, settings.crop_pct, args.batch_size, args.precision,
                            workers=args.workers if args.workers is not None else 8,
                            interpolation=settings.interpolation)
    seconds = time.perf_counter() - start
    return dict(model=entry.name, weights=str(entry.weights), resolution=settings.resolution,
                crop_pct=settings.crop_pct, top1=result["top1"], top5=result["top5"], loss=result["loss"],
                images=result["images"], seconds=seconds, images_per_s=result["images"] / seconds if seconds else None,
                precision=result["precision"])


def run_eval_presets(args) -> int:
    """``lowspace eval`` with ``--checkpoint-dir``: every model named, one table."""
    from ..train import distributed as dist_utils
    from .train import _eval_data
    entries = plan(args)
    info = dist_utils.setup(args.device)
    try:
        data = _eval_data(args)
        models = [load_entry(args, entry, data) for entry in entries]  # every weights file fits, before any evaluation
        rows = [evaluate_entry(args, entry, model, data, info.device) for entry, model in zip(entries, models)]
    finally:
        dist_utils.teardown(info)
    if info.is_main:
        if args.json:
            print(json.dumps({"data": data.describe(), "rows": rows}, indent=2))
        else:
            _print_table(rows, data.describe(), Path(args.checkpoint_dir))
    return 0


def _print_table(rows: list[dict], described: str, directory: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"lowspace eval: {described}, test split; weights in {directory}",
                  caption="images/s: evaluation throughput, image decoding and resizing included",
                  caption_justify="left")
    for column in ("model", "px", "crop", "top-1 %", "top-5 %", "images", "images/s", "weights"):
        table.add_column(column, justify="left" if column in ("model", "weights") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(r["model"], str(r["resolution"]), f"{r['crop_pct']:g}", f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                      str(r["images"]), "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}",
                      str(Path(r["weights"]).relative_to(directory)))
    Console(width=max(Console().width, 140)).print(table)
