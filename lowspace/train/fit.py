"""Full training with a recipe: one process or many (torchrun), resumable, with metrics and checkpoints.

``fit(model_or_config, data, recipe, out_dir)`` trains with :mod:`.engine` and writes into ``out_dir``:

* ``checkpoints/step_*/`` + ``latest.json`` (see :mod:`.checkpoint`): every ``save_every_steps`` optimizer
  steps and at every epoch end (the best epoch's is kept for the auto-restart); ``resume=True`` continues
  from the latest one exactly (same batches, same augmentation, same random state), so an interrupted run
  ends with the weights of an uninterrupted one.
* ``metrics.jsonl`` (train rows every ``log_every`` steps, an ``epoch`` row after each epoch, a ``restart``
  row for each auto-restart) and ``metrics.csv`` (the epoch rows).
* ``best.safetensors`` (the evaluated weights of the best epoch: EMA with re-estimated BatchNorm),
  ``model.safetensors`` / ``ema.safetensors`` (final), ``config.yaml``, ``recipe.yaml``, ``result.json``.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from . import distributed as dist_utils
from .engine import FitResult, OnEpoch, TrainingError, batch_that_fits, prepare_data, run
from .models import model_source
from .recipe import load_recipe


def fit(model_or_config, data, recipe=None, out_dir: str | Path = "runs/train", *, device=None,
        resume: bool = False, max_steps: int | None = None, progress: bool = True, on_epoch: OnEpoch | None = None,
        **overrides) -> FitResult:
    """Train with a recipe (see the module docstring). Works in one process or under torchrun.

    Args:
        model_or_config: a preset name, YAML path, ArchConfig, a :class:`~.models.TimmModel` (or
            ``"timm:NAME"``) built for the data, or an ``nn.Module``.
        data: an :class:`~lowspace.data.ImageData` or a spec for :func:`lowspace.data.get_dataset`.
        recipe: a recipe name (``b1``...), YAML path, dict or :class:`~.recipe.Recipe` (default: ``b1``).
        out_dir: the run directory.
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA if available; under torchrun the local GPU).
        resume: continue from ``out_dir``'s latest checkpoint (start fresh if there is none).
        max_steps: stop after this many optimizer steps in total (a checkpoint is written first).
        progress: show the progress bar (rank 0).
        on_epoch: ``on_epoch(epoch, row) -> bool`` after every epoch; True stops training.
        **overrides: recipe fields to change (``epochs=10``...).
    """
    recipe = load_recipe(recipe, **overrides)
    module = isinstance(model_or_config, nn.Module)
    source = model_or_config if module else model_source(model_or_config)
    data = prepare_data(data, recipe, recipe.eval_resolution or (None if module else source.resolution))
    info = dist_utils.setup(device)
    fitted = batch_that_fits(recipe, len(data.train), info.world_size)
    if fitted.batch_size != recipe.batch_size and info.is_main:
        print(f"note: recipe.batch_size {recipe.batch_size} x {info.world_size * recipe.accumulation} exceeds the "
              f"{len(data.train)} training images; training with batch_size {fitted.batch_size}, as the "
              f"search's proxy does")
    recipe = fitted
    try:
        result = run(source, data, recipe, info, Path(out_dir), resume=resume, max_steps=max_steps,
                     progress=progress, on_epoch=on_epoch)
    finally:
        dist_utils.teardown(info)
    if result.info["diverged"]:
        row = result.history[-1]
        raise TrainingError(f"the training loss became {row['train_loss']} in epoch {row['epoch']} (lr "
                            f"{row['lr']:.3g}); lower the learning rate or check the data")
    return result
