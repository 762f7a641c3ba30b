"""ONNX export (opset >= 17, dynamic batch), checked against torch with onnxruntime on the CPU."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError
from ._backends import BackendError


def export_onnx(model: nn.Module, path: str | Path, resolution: int | None = None, opset: int = 17,
                check: bool = True, tolerance: float = 1e-4) -> Path:
    """Write the float32 form of a :class:`~lowspace.runtime.DeployedModel` (or any module) as ONNX.

    A deployed model is exported as rewritten (BatchNorm folded, attention rewrites), in float32 on the
    CPU, with a dynamic batch axis; ``resolution`` defaults to the deployed one (else 224). With ``check``
    the file is run by onnxruntime's CPU provider on a random batch of 2: the max absolute difference from
    torch must stay within ``tolerance`` x the output's scale, else :class:`~lowspace.runtime.BackendError`.
    """
    if opset < 17:
        raise ConfigError("opset", opset, "an ONNX opset >= 17")
    from ._deploy import DeployedModel, in_chans
    info = model.info if isinstance(model, DeployedModel) else {}
    net = model.module if isinstance(model, DeployedModel) else model
    net = copy.deepcopy(net).eval().float().cpu().to(memory_format=torch.contiguous_format)
    res = resolution or info.get("resolution") or 224
    x = torch.randn(2, in_chans(net), res, res, generator=torch.Generator().manual_seed(0))
    path = write_onnx(net, x, path, opset)
    if check:
        err = onnx_error(path, net, x)
        if not err <= tolerance:
            raise BackendError(f"onnxruntime output differs from torch (max rel. error {err:.2e} > {tolerance:g})")
    return path


def write_onnx(net: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Trace ``net`` on ``example`` into ``path`` (TorchScript-based exporter, constant folding, dynamic
    batch); input and output are named ``input`` and ``output``."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def onnx_error(path: str | Path, net: nn.Module, x: torch.Tensor) -> float:
    """Max |onnxruntime - torch| / max|torch| for input ``x`` (CPU provider)."""
    import onnxruntime as ort
    ort_run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(ort_run.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        want = net(x)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
