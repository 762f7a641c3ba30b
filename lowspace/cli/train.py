"""``lowspace train CONFIG --data DATA`` (or ``lowspace train --timm NAME --data DATA``) and
``lowspace eval CONFIG --checkpoint PATH --data DATA``.

Both work under torchrun (``torchrun --nproc_per_node N -m lowspace train ...``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..config import parse_assignment
from ..errors import ConfigError


def _data_args(p, train: bool) -> None:
    p.add_argument("--data", required=True,
                   help="fashion_mnist, synthetic, a class-folder root (train/ and val/) or a folder of IDX files")
    p.add_argument("--classes", default=None, help="use N classes (chosen by --seed) or those listed in a file")
    if train:
        p.add_argument("--train-per-class", type=int, default=None, help="at most this many training images per class")
    if train:
        p.add_argument("--val-per-class", type=int, default=None,
                       help="training images per class held out for validation (default: a tenth of the smallest "
                            "class, at most 500); with --eval-split test: at most this many test images per class")
    else:
        p.add_argument("--val-per-class", type=int, default=None,
                       help="--split test: at most this many test images per class; --split holdout: training "
                            "images per class held out (default: the run's recipe)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images, empty class folders and val classes train lacks")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if available)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for class folders")


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train an architecture with a paper recipe (one process or torchrun)")
    p.add_argument("config", nargs="?", default=None, help="preset name (b0 ... e3) or YAML config path")
    p.add_argument("--timm", default=None, metavar="NAME",
                   help="train timm's model NAME from scratch instead (in_chans and num_classes from the data), with "
                        "the same recipe, data, seeds, checkpoints and evaluation as a config")
    _data_args(p, train=True)
    p.add_argument("--loader", choices=("auto", "cpu", "gpu"), default=None,
                   help="class folders: decode and augment on the GPU (gpu) or in DataLoader workers (cpu); auto "
                        "(default) takes gpu on a CUDA device with nvJPEG")
    p.add_argument("--loader-processes", type=int, default=None, metavar="N",
                   help="GPU loader: N processes decode and transform the training batches, each every N-th "
                        "one (default 4; 1: in the training process); the --workers read threads are shared "
                        "among them")
    p.add_argument("--recipe", default=None,
                   help="recipe name (b0, b1, b15, b2, b3, e1, e2, e3) or YAML file (default: the config's recipe; "
                        "b1 for --timm)")
    p.add_argument("--epochs", type=int, default=None,
                   help="total epochs, warmup included (warmup is scaled to match unless --warmup-epochs)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="epochs of linear lr warmup, part of --epochs (default: the recipe's, scaled with --epochs)")
    p.add_argument("--resolution", type=int, default=None, help="train and evaluate at this one resolution")
    p.add_argument("--batch-size", type=int, default=None, help="images per process per micro-batch")
    p.add_argument("--accumulation", type=int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=None, help="base lr per process (scaled by processes x accumulation)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the weights, augmentation and data order, and of --classes / --train-per-class "
                        "(default: the recipe's, 0)")
    p.add_argument("--eval-split", choices=("holdout", "test"), default=None,
                   help="evaluate on training images held out for validation (holdout, the default), or on the data "
                        "set's test split (test: Fashion-MNIST's 10k, a class-folder root's val/); the test split is "
                        "for the final evaluation of an architecture chosen without it")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>, runs/timm_<NAME>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N optimizer steps (0: epoch ends)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (checkpoint first)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graph", action="store_true", help="capture the training step in CUDA graphs")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any recipe field, value in YAML (e.g. mixup_alpha=0, resolutions=[96,128], betas.1=0.99); "
                        "repeatable, applied after the other flags")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="top-1 / top-5 of a checkpoint on a data set's test split (or the held-out one)")
    e.add_argument("config", nargs="+",
                   help="preset name or YAML config path; several (e.g. b0 b1 b15 b3) with --checkpoint-dir")
    e.add_argument("--checkpoint", default=None,
                   help="weights file (lowspace, timm or official; .safetensors/.pth) or a `lowspace train` run "
                        "directory")
    e.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="evaluate every model named, each with its weights from DIR (lowformer_b1*.safetensors/.pth, "
                        "b1*.pth, b1/checkpoint/evalmodel.pt, a run folder b1/) at its own resolution and crop; "
                        "one table")
    _data_args(e, train=False)
    e.add_argument("--resolution", type=int, default=None,
                   help="eval side (default: what training evaluated at: the run's recipe, else the config's)")
    e.add_argument("--crop-pct", type=float, default=None,
                   help="resize to resolution / crop_pct, then center crop (default: the run's recipe, else the "
                        "model's pretrained_cfg: 0.95)")
    e.add_argument("--batch-size", type=int, default=200, help="images per forward pass (default: 200)")
    e.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision of the forward pass (auto: bf16 on CUDA, fp32 on CPU)")
    e.add_argument("--split", choices=("test", "holdout"), default="test",
                   help="test: the data set's test split (Fashion-MNIST's 10k, a class-folder root's val/); holdout: "
                        "the training images a run held out for validation (as the run's recipe chose them)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of --classes / --val-per-class (default: the run's, or 0)")
    e.add_argument("--allow-bad-weights", action="store_true",
                   help="evaluate weights that hold NaN or infinite values or integers where the model has floating "
                        "point (a warning instead of an error)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=run_eval)


def _classes(value):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _overrides(args) -> dict:
    """Dotted recipe overrides: the flags, then each ``--set`` (typed from the Recipe's fields)."""
    from ..train import Recipe
    flags = dict(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                 accumulation=args.accumulation, base_lr=args.lr, seed=args.seed, save_every_steps=args.save_every,
                 workers=args.workers, classes=_classes(args.classes), train_per_class=args.train_per_class,
                 val_per_class=args.val_per_class, eval_split=args.eval_split, loader=args.loader,
                 loader_processes=args.loader_processes)
    out = {k: v for k, v in flags.items() if v is not None}
    if args.resolution is not None:
        out.update(resolutions=[args.resolution], eval_resolution=args.resolution)
    if args.compile:
        out["compile"] = True
    if args.cuda_graph:
        out["cuda_graph"] = True
    for item in args.set:
        key, value = parse_assignment(item, Recipe)
        out[key] = value
    return out


def _with_overrides(recipe, args):
    """``recipe`` with the command line's changes; ``--epochs`` without a warmup scales the warmup to match.
    Errors name the command line."""
    overrides = _overrides(args)
    if args.epochs is not None and "warmup_epochs" not in overrides:
        overrides["warmup_epochs"] = round(recipe.warmup_epochs * overrides["epochs"] / recipe.epochs, 3)
    if not overrides:
        return recipe
    try:
        return type(recipe).from_dict(recipe.to_dict(), overrides, override_source="command line")
    except ConfigError as err:  # the recipe was valid: the command line's change is the cause
        raise err.with_source("command line") from None


def _print_scan_note(data, file=None) -> None:
    """What scanning class folders skipped or left out, in one line."""
    from ..data.folders import describe_scan
    note = describe_scan(data.info)
    if note:
        print(note, file=file)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_train(args) -> int:
    from ..data import get_dataset
    from ..train import TimmModel, fit, load_recipe, model_source
    from ..train.checkpoint import check_resume
    from ..train.distributed import resolve_device
    from ..train.engine import describe_validation, prepare_data

    source = model_source(args.config, args.timm)  # a LowFormer config or a timm model
    timm = isinstance(source, TimmModel)
    resolve_device(args.device)  # a bad --device stops the command before any data is read
    recipe = _with_overrides(load_recipe(args.recipe or (None if timm else source.recipe) or "b1"), args)
    name = source.label if timm else source.name or args.config
    out = Path(args.out) if args.out else Path("runs") / (
        f"timm_{source.name}" if timm else source.name or Path(str(args.config)).stem)
    if args.resume and not timm:  # the checkpoint fits this architecture, before any data is read
        check_resume(out, source)
    data = get_dataset(args.data, seed=recipe.seed, skip_bad=args.skip_bad, workers=recipe.workers or 1)
    data = prepare_data(data, recipe, recipe.eval_resolution or source.resolution)
    if args.resume and not timm:  # and this data's classes and channels
        check_resume(out, source, data.num_classes, data.in_chans)
    if _is_main():
        print(f"training {name} on {data.describe()}; recipe {recipe.name}: {recipe.epochs} epochs "
              f"({recipe.warmup_epochs:g} warmup), batch {recipe.batch_size} x accumulation {recipe.accumulation}, "
              f"resolutions {list(recipe.resolutions)}; output {out}")
        print(f"validating on {describe_validation(data)}")
        _print_scan_note(data)
    result = fit(source, data, recipe, out, device=args.device, resume=args.resume, max_steps=args.max_steps,
                 progress=not args.no_progress)
    if _is_main():
        state = "stopped (--max-steps)" if result.interrupted else "done"
        best = f"{result.best_top1:.2f}%" if result.best_top1 is not None else "n/a"
        last = f"{result.top1:.2f}%" if result.top1 is not None else "n/a"
        print(f"{state}: {result.steps} steps, {result.epochs_run} epochs, top-1 {last} (best {best}); {out}")
    return 0


# the numeric flags of `lowspace eval` and the recipe fields whose bounds they take
_EVAL_FLAG_FIELDS = {"batch_size": "eval_batch_size", "crop_pct": "crop_pct", "resolution": "eval_resolution",
                     "seed": "seed", "workers": "workers", "val_per_class": "val_per_class"}


def check_eval_flags(args) -> None:
    """The numeric flags of ``lowspace eval`` within the bounds of the recipe fields they stand for."""
    from ..train import Recipe
    for dest, field in _EVAL_FLAG_FIELDS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        try:
            Recipe().replace(**{field: value})
        except ConfigError as err:
            raise ConfigError("--" + dest.replace("_", "-"), value, err.allowed, "command line") from None


def run_eval(args) -> int:
    from .eval_presets import check_sources, run_eval_presets
    check_eval_flags(args)
    check_sources(args)
    if args.checkpoint_dir:
        return run_eval_presets(args)
    args.config = args.config[0]
    from ..arch import LowFormer, resolve_config
    from ..train import distributed as dist_utils
    from ..train.checkpoint import find_weights, load_checked_weights
    from ..train.engine import validation_summary
    from ..train.evaluate import evaluate_model

    info = dist_utils.setup(args.device)
    try:
        data = _eval_data(args)
        if info.is_main:
            _print_scan_note(data, sys.stderr)  # stdout may be --json
        cfg = resolve_config(args.config)
        cfg = cfg.replace(num_classes=data.num_classes, in_chans=data.in_chans)
        model = LowFormer(cfg, init="torch")
        weights = find_weights(args.checkpoint)
        load_checked_weights(model, weights, args.allow_bad_weights)
        model.to(info.device)
        settings = _eval_settings(args, model, cfg)
        resolution = settings.resolution
        result = evaluate_model(model, data, resolution, settings.crop_pct, args.batch_size, args.precision,
                                workers=args.workers if args.workers is not None else 8,
                                interpolation=settings.interpolation)
        result.update(checkpoint=str(weights), data=data.describe(), validation=validation_summary(data))
    finally:
        dist_utils.teardown(info)
    if info.is_main:
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{cfg.name or args.config} ({weights}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                  f"loss {result['loss']:.4f}  on {result['images']} "
                  f"{'held-out training' if args.split == 'holdout' else 'test'} images at {resolution} px")
    return 0


def _run_recipe(args):
    """The recipe of the ``lowspace train`` run ``--checkpoint`` names, or None for a weights file."""
    from ..train import load_recipe
    path = Path(args.checkpoint) / "recipe.yaml"
    return load_recipe(path) if path.is_file() else None


def _eval_data(args):
    """The images ``lowspace eval`` reads: the test split (capped by the flags), or the training images the run
    held out (``--split holdout``: the run recipe's split, classes and seed unless the flags say otherwise)."""
    from ..data import get_dataset
    from ..train import load_recipe
    from ..train.engine import select_validation
    workers = args.workers if args.workers is not None else 8
    if args.split == "test":
        return get_dataset(args.data, classes=_classes(args.classes), val_per_class=args.val_per_class,
                           seed=args.seed or 0, skip_bad=args.skip_bad, workers=workers)
    recipe = _run_recipe(args) or load_recipe("b1")
    changes = dict(classes=_classes(args.classes), val_per_class=args.val_per_class, seed=args.seed)
    recipe = recipe.replace(eval_split="holdout", **{k: v for k, v in changes.items() if v is not None})
    data = get_dataset(args.data, skip_bad=args.skip_bad, workers=workers)
    return select_validation(data, recipe).subset(recipe.classes, None, None, recipe.seed)


def _eval_settings(args, model, cfg):
    """Resolution, crop and interpolation of ``lowspace eval``: the flags, else what training evaluated at (a run
    directory's recipe), else the model's pretrained_cfg; the same rule ``lowspace train`` evaluates by."""
    from ..train.engine import EvalSettings, eval_settings
    settings = eval_settings(_run_recipe(args), model, cfg)
    return EvalSettings(args.resolution or settings.resolution, args.crop_pct or settings.crop_pct,
                        settings.interpolation)
