"""Short, fast proxy training for the architecture search: the ``proxy`` recipe through the training engine.

``train_proxy(cfg_or_model, data, recipe, device, on_epoch=None) -> FitResult``

How it is fast on a GPU: the data set (Fashion-MNIST, or a class-folder subset decoded once) lives on the
GPU as uint8 and is augmented there; the whole training step is one CUDA-graph replay (checked once against
an eager step); evaluation replays a captured forward; the only host synchronization is one per epoch.
On CPU the same code runs eagerly in fp32.

Accuracy is measured on images held out from the training split (``val_per_class`` of each class, seeded by
``split_seed``; see :func:`lowspace.data.hold_out`); ``eval_split: test`` reads the data set's test split
instead, for a final evaluation (the search refuses it).

How the architecture is adapted: a config (preset name, YAML, ArchConfig) is rebuilt with the data set's
``in_chans`` (1 for Fashion-MNIST: the stem takes the gray image directly) and ``num_classes``, and with
``resolution`` = the recipe's training resolution. Every candidate is thus trained and evaluated at the
*proxy* resolution (64 px by default), not at its nominal one (224 for the presets): the layers and parameter
count are the same (only the stem's input channels and the classifier differ), the feature maps smaller. A
proxy resolution above the architecture's own is lowered to it (a 32 px architecture trains at 32 px: larger
inputs would cost more and describe another network than the one timed).
Latency and MACs are measured at the architecture's own resolution by ``lowspace.cost``; how well the proxy
ranking agrees with full training must be measured, not assumed. ``resolutions: null`` trains each
architecture at its own resolution. An ``nn.Module`` is trained as given.
"""
from __future__ import annotations

import time
from typing import Mapping

import torch.nn as nn

from ..arch import resolve_config
from ..errors import ConfigError
from .distributed import DistInfo, resolve_device
from .engine import FitResult, OnEpoch, batch_that_fits, prepare_data, run
from .recipe import Recipe, proxy_recipe


def train_proxy(cfg_or_model, data="fashion_mnist", recipe: Recipe | Mapping | None = None, device=None,
                on_epoch: OnEpoch | None = None) -> FitResult:
    """Train ``cfg_or_model`` briefly on ``data`` and report its accuracy (see the module docstring).

    Args:
        cfg_or_model: preset name, YAML path, dict or ArchConfig (adapted to the data), or an nn.Module.
        data: an :class:`~lowspace.data.ImageData` or a spec for :func:`~lowspace.data.get_dataset`.
        recipe: a Recipe, or a dict of recipe fields changed from the ``proxy`` recipe (default: it unchanged).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA if available).
        on_epoch: ``on_epoch(epoch, row) -> bool``, called after every epoch (``epoch`` counts from 1; ``row``
            is that epoch's history row); returning True stops training (pruning).
    """
    started = time.perf_counter()
    recipe = proxy_recipe(recipe)
    resolution = max(recipe.resolutions) if recipe.resolutions else None
    if not isinstance(cfg_or_model, nn.Module):
        cfg = resolve_config(cfg_or_model)
        if recipe.resolutions and resolution > cfg.resolution:  # never above the architecture's own
            recipe = recipe.replace(resolutions=sorted({min(r, cfg.resolution) for r in recipe.resolutions}))
            resolution = cfg.resolution
        cfg_or_model = cfg.replace(resolution=resolution) if resolution else cfg
        resolution = cfg_or_model.resolution
    elif resolution is None:
        cfg = getattr(cfg_or_model, "cfg", None)
        if cfg is None:
            raise ConfigError("proxy.resolutions", None,
                              "a list of resolutions when training a module without a config")
        resolution = cfg.resolution
    data = prepare_data(data, recipe, resolution)
    # evaluated at the training resolution; the batch fits tiny subsets
    recipe = batch_that_fits(recipe.replace(eval_resolution=recipe.eval_resolution or resolution), len(data.train))
    return run(cfg_or_model, data, recipe, DistInfo(device=resolve_device(device)), started=started,
               on_epoch=on_epoch)
