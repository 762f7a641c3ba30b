"""Parameter and MAC counts.

What each count includes:

* :func:`count_macs` (the LowFormer convention, the number in presets.json and the paper's README):
  multiply-accumulates of convolutions, transposed convolutions, linear layers and the two attention
  matmuls (``q @ k^T`` and ``attn @ v``), nothing else (no norms, activations, pooling, adds, softmax).
  It is ``torch.utils.flop_counter.FlopCounterMode``'s total divided by 2 (that counter reports a
  multiply-accumulate as 2 FLOPs). ``F.scaled_dot_product_attention`` kernels that the counter has no
  formula for (the CPU flash kernel, which it would count as 0) are counted analytically:
  ``batch * heads * Nq * Nk * (d_qk + d_v)`` MACs. Configs and timm names are built on the ``meta``
  device: no memory, no real arithmetic.
* :func:`fvcore_macs` (cross-check column): fvcore's ``FlopCountAnalysis.total()`` with its default
  handles, which count what :func:`count_macs` counts *plus* BatchNorm (2 per element), GroupNorm and
  LayerNorm (5 per element) and adaptive average pooling (1 per input element; a ``mean`` used as pooling,
  as in our head, is not counted); fvcore calls these "flops" but they are MACs. It skips activations,
  softmax and adds. fvcore has no handle for
  ``scaled_dot_product_attention``; we add one with the same formula as above, so for the presets it
  gives 0.1-0.6% more than :func:`count_macs` (e.g. B0 at 224: 948,051,776 vs 944,042,240). It traces
  with TorchScript on CPU, so it is slower than :func:`count_macs`.
* :func:`count_params`: every parameter element (``sum(p.numel())``), as timm counts.

All three accept an ArchConfig, a dict, a preset name, a YAML path, a timm model name (``timm:NAME`` forces
timm's model), or an ``nn.Module`` (counted where it lives, in eval mode, then restored).
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from .spec import ModelSpec, resolve_spec

__all__ = ["count_params", "count_macs", "fvcore_macs", "count_all", "sdpa_macs"]

aten = torch.ops.aten


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """MACs of scaled-dot-product attention: ``q @ k^T`` then ``weights @ v``.

    Shapes are (..., N, d); leading dims (batch, heads) of the query are the ones computed
    (key/value heads are broadcast for grouped-query attention).
    """
    *lead, n_q, d_qk = q_shape
    n_k, d_v = k_shape[-2], v_shape[-1]
    return math.prod(lead) * n_q * n_k * (d_qk + d_v)


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode's custom formulas receive shapes for tensor arguments and report FLOPs (2 per MAC)
    return 2 * sdpa_macs(query, key, value)


def _sdpa_ops() -> list:
    """Every forward SDPA kernel of this torch build (the CPU flash kernel is the one torch does not count)."""
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps")
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


_SDPA_MAPPING = {op: _sdpa_flops for op in _sdpa_ops()}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _input_size(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        size = (resolution, resolution)
    elif isinstance(resolution, Sequence) and len(resolution) == 2:
        size = tuple(resolution)
    else:
        raise ConfigError("resolution", resolution, "an int side or an (height, width) pair")
    if not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError("resolution", resolution, "positive integers")
    return size  # type: ignore[return-value]


def _module_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _counting_model(spec: ModelSpec, device: str = "meta") -> nn.Module:
    if spec.module is not None:
        return spec.module
    return spec.build(device)


def _flop_total(model: nn.Module, size: tuple[int, int], in_chans: int) -> int:
    x = torch.zeros(1, in_chans, *size, device=_module_device(model))
    counter = FlopCounterMode(display=False, custom_mapping=_SDPA_MAPPING)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def count_params(model_or_config: Any) -> int:
    """Number of parameter elements (configs and timm names are built on the meta device)."""
    spec = resolve_spec(model_or_config)
    model = _counting_model(spec)
    return sum(p.numel() for p in model.parameters())


def count_macs(model_or_config: Any, resolution: int | Sequence[int] | None = 224) -> int:
    """MACs of one image at ``resolution`` (int side or (h, w); None: the config's / model's own), LowFormer
    convention: conv, transposed conv, linear and attention matmuls. See the module docstring."""
    spec = resolve_spec(model_or_config)
    size = _input_size(spec.resolution(resolution))
    model = _counting_model(spec)
    return _flop_total(model, size, spec.in_chans) // 2


def _fvcore_sdpa_handle(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    return sdpa_macs(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(inputs[2]))


def fvcore_macs(model_or_config: Any, resolution: int | Sequence[int] | None = 224) -> int:
    """fvcore's total "flops" (MACs incl. norms and pooling; see the module docstring) of one image.

    Configs and timm names are built on CPU (fvcore traces with TorchScript, which cannot run on meta).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import touches deprecated torch.jit APIs
        from fvcore.nn import FlopCountAnalysis
    spec = resolve_spec(model_or_config)
    size = _input_size(spec.resolution(resolution))
    model = _counting_model(spec, device="cpu")
    x = torch.zeros(1, spec.in_chans, *size, device=_module_device(model))
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)  # fvcore warns about every skipped op (activations, adds)
    try:
        with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.set_op_handle("aten::scaled_dot_product_attention", _fvcore_sdpa_handle)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        logger.setLevel(level)


def count_all(model_or_config: Any, resolution: int | Sequence[int] | None = 224,
              fvcore: bool = True) -> dict[str, int | None]:
    """``{"params", "macs", "fvcore_macs"}`` in one go (``fvcore_macs`` is None with ``fvcore=False``)."""
    spec = resolve_spec(model_or_config)
    res = spec.resolution(resolution)
    return {"params": count_params(spec), "macs": count_macs(spec, res),
            "fvcore_macs": fvcore_macs(spec, res) if fvcore else None}
