"""Execution backends: turn an ``nn.Module`` plus a static input into a ready-to-time runner.

A *runner* owns a static input buffer and runs one forward pass per call. The backends:

* ``eager``: the module as is.
* ``cuda_graph``: the forward captured once in a CUDA graph and replayed (CUDA only). The first replay
  is compared with the eager output, so an empty or wrong graph is never timed.
* ``compile``: ``torch.compile`` (``compile_mode``, default ``default``).
* ``compile_cuda_graph``: ``torch.compile`` and then our own CUDA-graph capture of the compiled forward.
* ``torchscript``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` (the paper's protocol).
* ``onnxruntime``: ONNX export (opset 17) run by onnxruntime with the best provider installed for the
  device (TensorRT, then CUDA, for CUDA devices; CPU otherwise); the provider is reported.

Precision: ``fp32``; ``fp16`` / ``bf16`` run under autocast for the torch backends (as timm's benchmark
does), and as a model converted to that dtype for ``torchscript`` and ``onnxruntime``, which cannot
autocast. ``runner.info`` records which.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import ConfigError, LowspaceError

BACKENDS = ("eager", "cuda_graph", "compile", "compile_cuda_graph", "torchscript", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_BACKENDS = ("cuda_graph", "compile_cuda_graph")
# Max |graph - eager| relative to the output's scale accepted when checking a captured graph.
_GRAPH_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


class BackendError(LowspaceError):
    """A backend could not prepare or run the model."""


@dataclass
class Runner:
    """One forward pass per call on the static ``input``; ``output`` of the last call stays valid."""

    fn: Callable[[], Any]
    input: torch.Tensor
    backend: str
    precision: str
    build_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    keepalive: Any = field(default=None, repr=False)  # objects the runner's closure relies on

    def __call__(self):
        return self.fn()


def check_protocol(backend: str, precision: str, device: torch.device | str) -> torch.device:
    """Validate a backend / precision / device combination; returns the torch device."""
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, "allowed: " + ", ".join(BACKENDS))
    if precision not in PRECISIONS:
        raise ConfigError("precision", precision, "allowed: " + ", ".join(PRECISIONS))
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", str(device), "no CUDA device is available here; use 'cpu'")
    if backend in GRAPH_BACKENDS and dev.type != "cuda":
        raise ConfigError("backend", backend, "CUDA graphs need a CUDA device; on CPU use eager, compile, "
                          "torchscript or onnxruntime")
    if backend == "onnxruntime" and precision != "fp32" and dev.type == "cpu":
        raise ConfigError("precision", precision, "onnxruntime on CPU runs fp32 only")
    return dev


@contextlib.contextmanager
def cudnn_autotuning(setting: bool | int):
    """cuDNN autotuning for the new convolution shapes run inside: on (True; torch tries up to 10 algorithms
    per convolution), off (False: cuDNN's heuristic choice, builds 2-3x faster) or on over at most N
    algorithms. Restores the previous ``torch.backends.cudnn`` settings on exit."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.benchmark_limit
    torch.backends.cudnn.benchmark = bool(setting)
    if not isinstance(setting, bool):
        torch.backends.cudnn.benchmark_limit = setting
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.benchmark_limit = saved


def autocast_context(device: torch.device, precision: str):
    """Autocast for reduced precision, a null context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def prepare(model: nn.Module, example: torch.Tensor, backend: str = "eager", precision: str = "fp32",
            channels_last: bool = False, compile_mode: str | None = None, check: bool = True) -> Runner:
    """A :class:`Runner` for ``model`` (eval mode, on ``example``'s device) under the given protocol.

    ``example`` becomes the runner's static input (converted to channels_last where asked). With
    ``check`` the graph-captured backends compare their first replay with the eager output.
    """
    device = check_protocol(backend, precision, example.device)
    model = model.eval().to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = example.detach().clone().contiguous(memory_format=memory_format)
    start = time.perf_counter()
    if backend == "torchscript" or backend == "onnxruntime":
        dtype = DTYPES[precision]
        if dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)  # leave the caller's model in fp32
        x = x.to(dtype)
        runner = _torchscript(model, x) if backend == "torchscript" else _onnxruntime(model, x)
        runner.precision = precision
        runner.info["precision_mode"] = "cast"
    else:
        amp = autocast_context(device, precision)
        fn = model
        info: dict[str, Any] = {"precision_mode": "autocast" if precision != "fp32" else "none"}
        if backend in ("compile", "compile_cuda_graph"):
            fn = torch.compile(model, mode=compile_mode or "default")
            info["compile_mode"] = compile_mode or "default"

        def forward():
            with torch.inference_mode(), amp:
                return fn(x)

        if backend in GRAPH_BACKENDS:
            runner = capture_cuda_graph(forward, x, precision, check)
        else:
            forward()  # first call: compilation, cudnn autotuning, lazy init
            runner = Runner(forward, x, backend, precision)
        runner.info.update(info)
    runner.backend = backend
    runner.precision = precision
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    runner.build_s = time.perf_counter() - start
    runner.info["channels_last"] = channels_last
    return runner


def capture_cuda_graph(forward: Callable[[], torch.Tensor], x: torch.Tensor, precision: str, check: bool) -> Runner:
    """Capture ``forward`` (which reads the static input ``x``) in a CUDA graph after a warm-up on a side
    stream; with ``check`` the first replay must match the eager output within the precision's tolerance."""
    stream = torch.cuda.Stream(device=x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the graph (autotuning, workspace allocation)
            eager_out = forward()
    torch.cuda.current_stream(x.device).wait_stream(stream)
    reference = eager_out.detach().float().clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward()

    def replay():
        graph.replay()
        return static_out

    replay()
    torch.cuda.synchronize(x.device)
    info = {"graph_checked": check}
    if check:
        err, nonfinite = replay_error(static_out, reference)
        if not err <= _GRAPH_TOLERANCE[precision]:
            raise BackendError(f"CUDA graph replay differs from eager output (max rel. error {err:.2e})")
        if nonfinite:
            info["nonfinite_output"] = nonfinite
    return Runner(replay, x, "cuda_graph", precision, info=info)


def replay_error(out: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |out - reference| over the reference's largest finite magnitude, share of non-finite outputs).

    Non-finite values (a network with random weights can overflow in fp16) must be the same in both, in the
    same places; the error is then taken over the finite ones, and is 0 where there are none."""
    out, reference = out.detach().float(), reference.detach().float()
    finite = reference.isfinite()
    nonfinite = 1.0 - finite.float().mean().item()
    if not torch.equal(finite, out.isfinite()) or not torch.equal(out[~finite].nan_to_num(),
                                                                  reference[~finite].nan_to_num()):
        return float("inf"), nonfinite
    if not finite.any():
        return 0.0, nonfinite
    scale = reference[finite].abs().max().clamp_min(1e-6)
    return ((out - reference)[finite].abs().max() / scale).item(), nonfinite


def _torchscript(model: nn.Module, x: torch.Tensor) -> Runner:
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but is the paper's protocol
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        except Exception as err:  # noqa: BLE001 - tracing failures become one clear message
            raise BackendError(f"torchscript tracing failed: {type(err).__name__}: {err}") from None

    def forward():
        with torch.no_grad():
            return frozen(x)

    for _ in range(2):  # the profiling executor optimizes on the first calls
        forward()
    return Runner(forward, x, "torchscript", "fp32")


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime providers to use for ``device``, best first, among those installed."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.type == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def _onnxruntime(model: nn.Module, x: torch.Tensor) -> Runner:
    import numpy as np
    import onnxruntime as ort
    providers = onnx_providers(x.device)
    tmp = tempfile.TemporaryDirectory(prefix="lowspace-onnx-")
    from ._onnx import write_onnx
    path = write_onnx(model, x.contiguous(), Path(tmp.name) / "model.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=providers)
    used = session.get_providers()[0]
    if used == "CPUExecutionProvider":
        feed = {"input": x.detach().cpu().contiguous().numpy()}

        def forward():
            return torch.from_numpy(session.run(None, feed)[0])
    else:
        binding = session.io_binding()
        xc = x.contiguous()
        out_shape = tuple(model(xc).shape)
        out = torch.empty(out_shape, device=x.device, dtype=x.dtype)
        np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[x.dtype]
        binding.bind_input("input", "cuda", x.device.index or 0, np_dtype, tuple(xc.shape), xc.data_ptr())
        binding.bind_output("output", "cuda", x.device.index or 0, np_dtype, out_shape, out.data_ptr())

        def forward():
            session.run_with_iobinding(binding)
            return out
    forward()
    return Runner(forward, x, "onnxruntime", "fp32", info={"onnx_provider": used, "onnx_opset": 17},
                  keepalive=(tmp, session))
