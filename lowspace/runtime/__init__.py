"""The fast inference path: ``deploy(model, ...)`` returns a :class:`DeployedModel`.

Exact rewrites (BatchNorm folding, channels-last attention, optional sub-pixel upsampling, 1x1 convs as
matmuls, a Triton depthwise kernel), reduced precision by casting, and capture by CUDA graphs and/or
torch.compile; see :class:`DeployOptions` for the switches and ``experiments/deploy_speed`` for speeds.

``lowspace.deploy`` is both this package and the function: the package is callable, so
``lowspace.deploy(model, ...)`` works whichever of the two an earlier import bound to the name.
"""
import sys
import types

from .build import DeployedModel, cache_dir, clear_cache, deploy, inductor_options
from .onnx import export_onnx
from .options import DeployOptions, parse_options

__all__ = ["deploy", "DeployedModel", "DeployOptions", "parse_options", "export_onnx", "clear_cache", "cache_dir",
           "inductor_options"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> DeployedModel:
        return deploy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
