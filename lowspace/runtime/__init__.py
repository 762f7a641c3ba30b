"""Running models fast: execution backends and the deploy path.

``deploy(model, ...)`` copies a model, rewrites it for inference (exactly), casts it and compiles and/or
captures it for one static input; ``prepare(model, example, backend, ...)`` gives a timing runner for any
module without rewrites. ``export_onnx`` writes either as ONNX. See ``docs/runtime.md``.
"""
from ._backends import (BACKENDS, PRECISIONS, BackendError, Runner, autocast_context, capture_cuda_graph,
                        check_protocol, cudnn_autotuning, prepare)
from ._deploy import (DeployedModel, cache_dir, clear_cache, deploy, inductor_options, reparameterize,
                      use_compile_cache)
from ._onnx import export_onnx
from ._options import DeployOptions

__all__ = [
    "deploy", "reparameterize", "DeployedModel", "DeployOptions", "clear_cache", "cache_dir",
    "inductor_options", "export_onnx", "prepare", "Runner", "BackendError", "BACKENDS", "PRECISIONS", "check_protocol",
    "cudnn_autotuning", "autocast_context", "capture_cuda_graph", "use_compile_cache",
]
