"""ONNX export of a deployed model (opset >= 17), checked against torch with onnxruntime on CPU."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..backends import BackendError, export_onnx as _export
from ..errors import ConfigError


def export_onnx(model: nn.Module, path: str | Path, resolution: int | None = None, opset: int = 17,
                check: bool = True, tolerance: float = 1e-4) -> Path:
    """Export the float32 form of a :class:`DeployedModel` (or any module) to ONNX with a dynamic batch.

    The deployed network is exported as rewritten (BN folded, attention rewrites), in float32 on the CPU.
    With ``check`` the file is run with onnxruntime's CPU provider on a random batch of 2 and compared with
    torch: the max absolute difference must stay within ``tolerance`` x the logits' scale, else
    :class:`lowspace.backends.BackendError`.
    """
    if opset < 17:
        raise ConfigError("opset", opset, "an ONNX opset >= 17")
    from .build import DeployedModel
    info = getattr(model, "info", {}) if isinstance(model, DeployedModel) else {}
    net = model.module if isinstance(model, DeployedModel) else model
    net = copy.deepcopy(net).eval().float().cpu().to(memory_format=torch.contiguous_format)
    for m in net.modules():  # the Triton path is CUDA-only; ONNX gets the plain conv
        if hasattr(m, "triton"):
            m.triton = False
    res = resolution or info.get("resolution") or 224
    in_chans = next(m for m in net.modules() if isinstance(m, nn.Conv2d) or hasattr(m, "groups")).weight.shape[1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, in_chans, res, res, generator=gen)
    path = _export(net, x, path, opset=opset)
    if check:
        err = onnx_error(path, net, x)
        if not err <= tolerance:
            raise BackendError(f"onnxruntime output differs from torch (max rel. error {err:.2e} > {tolerance:g})")
    return Path(path)


def onnx_error(path: str | Path, net: nn.Module, x: torch.Tensor) -> float:
    """Max |onnxruntime - torch| / max|torch| for input ``x`` (CPU provider)."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        want = net(x)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
