"""``deploy``: copy, reparameterize, cast, compile and capture a model for one inference protocol, with a build
cache."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ._backends import DTYPES, BackendError, Runner, capture_cuda_graph, check_protocol, cudnn_autotuning, prepare
from ..errors import ConfigError
from ._options import DeployOptions, resolve_options

COMPILE_BACKENDS = ("compile", "compile_cuda_graph")
# lowspace's inductor settings for the ``tuned`` modes (chosen in experiments/deploy_speed).
TUNED_INDUCTOR = {"conv_1x1_as_mm": True}
TUNED_AUTOTUNE = {**TUNED_INDUCTOR, "max_autotune": True, "coordinate_descent_tuning": False,
                  "max_autotune_gemm_backends": "TRITON,ATEN", "max_autotune_conv_backends": "ATEN"}
# Max |deployed - eval model| / max|eval model| accepted by the build-time check (fp32 on both sides).
_CHECK_TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2}  # CUDA fp32 convs may run in TF32
MEMORY_CACHE_SIZE = int(os.environ.get("LOWSPACE_DEPLOY_CACHE_SIZE", "4"))


def cache_dir() -> Path:
    """lowspace's cache folder: ``$LOWSPACE_CACHE_DIR`` or the user cache directory."""
    if os.environ.get("LOWSPACE_CACHE_DIR"):
        return Path(os.environ["LOWSPACE_CACHE_DIR"])
    import platformdirs
    return Path(platformdirs.user_cache_dir("lowspace"))


@dataclasses.dataclass
class _Core:
    """What a build produces; shared by the DeployedModels of one cache key."""

    net: nn.Module
    runner: Runner
    example_shape: tuple
    dtype: torch.dtype
    memory_format: torch.memory_format
    call: Callable[[torch.Tensor], torch.Tensor]
    info: dict[str, Any]
    uncaptured: Callable[[], Any] | None = None  # the forward before graph capture (profiling)
    holders: weakref.WeakSet = dataclasses.field(default_factory=weakref.WeakSet)


_MEMORY: "collections.OrderedDict[tuple, _Core]" = collections.OrderedDict()


def clear_cache() -> None:
    """Forget the modules built in this process (frees their GPU memory and CUDA graphs)."""
    _MEMORY.clear()


class DeployedModel(nn.Module):
    """An inference-only module computing the same function as the eval-mode model.

    Attributes:
        module: the reparameterized eager network (a copy of the model, in the deployed precision and
            memory format).
        build_s: seconds this :func:`deploy` call took (near zero on a cache hit).
        info: what was applied: rewrites, backend, precision, compile settings, cache hit, check error.

    Calling it with an input of the deployed shape runs the built path (graph replay / compiled code);
    other shapes run ``module`` eagerly. Inputs are cast to the deployed precision; outputs come back in
    the input's dtype.
    """

    def __init__(self, core: _Core, build_s: float, info: dict[str, Any]):
        super().__init__()
        self.module = core.net
        self._core = core
        self.build_s = build_s
        self.info = info
        core.holders.add(self)

    def runner(self) -> Runner:
        """A :class:`~lowspace.runtime.Runner` on the static input (one forward per call), for timing."""
        r = self._core.runner
        return Runner(r.fn, r.input, r.backend, r.precision, self.build_s, dict(self.info), keepalive=self._core)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core = self._core
        xd = x.to(device=core.runner.input.device, dtype=core.dtype).contiguous(memory_format=core.memory_format)
        with torch.inference_mode():
            if tuple(x.shape) == core.example_shape:
                y = core.call(xd)
            else:
                y = core.net(xd)
            return y.to(x.dtype).clone()


def _auto_protocol(backend: str, precision: str, device) -> tuple[str, str]:
    """``auto`` backend and precision resolved for the device: CUDA graph + fp16 on CUDA, eager + fp32 elsewhere."""
    try:
        cuda = torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return backend, precision  # check_protocol names the bad device
    if backend == "auto":
        backend = "cuda_graph" if cuda else "eager"
    if precision == "auto":
        precision = "fp16" if cuda else "fp32"
    return backend, precision


def deploy(model, precision: str = "auto", batch_size: int = 1, resolution: int = 224, backend: str = "auto",
           channels_last: bool = True, device: str | torch.device | None = None, **options) -> DeployedModel:
    """Build the fast inference form of ``model`` for one protocol: copy it, reparameterize the copy
    (:func:`reparameterize`), cast it, then compile and/or capture it for one static input. A build is
    checked against the eval-mode model and kept in a per-process cache; see ``docs/runtime.md``.

    Args:
        model: a lowspace ``LowFormer`` (any training state; its eval-mode function is deployed), or
            anything ``lowspace.create_model`` accepts (preset name, YAML path, ArchConfig; random weights).
            Other modules get no rewrites, only the precision cast, memory format and capture.
        precision: ``fp32``, ``fp16`` or ``bf16``; weights and activations are cast (no autocast).
            ``auto``: fp16 on CUDA, fp32 elsewhere.
        batch_size, resolution: the static input the build is specialized and captured for.
        backend: ``eager``, ``cuda_graph``, ``compile``, ``compile_cuda_graph`` (CUDA graphs need CUDA), or
            ``torchscript`` / ``onnxruntime`` (runners on the reparameterized module). ``auto``: a CUDA graph
            on CUDA, eager elsewhere, so a model on the CPU deploys without naming a backend.
        channels_last: run in the channels_last memory format.
        device: where to run; default the model's device (a config: CUDA if available).
        **options: see :class:`~lowspace.runtime.DeployOptions` (fold_bn, fuse_attention, upsample,
            conv1x1, convkxk, sdpa, groupnorm, triton, triton_stem, triton_project, triton_attention, triton_chain,
            compile_mode, compile_backend, inductor, check, cache).
    """
    start = time.perf_counter()
    try:
        opts = DeployOptions.from_dict(options)
    except ConfigError as err:
        raise err.within("deploy") from None
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "a positive integer")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
        raise ConfigError("resolution", resolution, "an integer >= 8")
    model = _as_module(model)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    backend, precision = _auto_protocol(backend, precision, device)
    dev = check_protocol(backend, precision, device)
    opts = resolve_options(opts, batch_size, dev.type, backend)
    channels = in_chans(model)
    shape = (batch_size, channels, resolution, resolution)
    key = _cache_key(model, precision, shape, backend, channels_last, dev, opts)

    net = _build_net(model, opts, dev)  # float32: checked before the cast
    core = _MEMORY.get(key) if key is not None and opts.cache else None
    cache_state = "miss"
    if core is not None:
        _MEMORY.move_to_end(key)
        import copy
        cast = _cast(copy.deepcopy(net), precision, channels_last)
        if _same_weights(core.net, cast):
            cache_state = "memory"
        elif not any(True for _ in core.holders):
            with torch.no_grad():
                for dst, src in zip(core.net.state_dict().values(), cast.state_dict().values()):
                    dst.copy_(src)
            cache_state = "memory (weights reloaded)"
        else:
            core = None  # in use with other weights: build a second one
    if core is None:
        check_err = _check_rewrite(model, net, dev, shape) if opts.check else None
        with cudnn_autotuning(opts.cudnn_benchmark) if dev.type == "cuda" else contextlib.nullcontext():
            core = _build_core(_cast(net, precision, channels_last), shape, dev, backend, precision, channels_last,
                               opts)
        core.info["check_error"] = check_err
        if key is not None and opts.cache:
            _MEMORY[key] = core
            while len(_MEMORY) > max(1, MEMORY_CACHE_SIZE):
                _MEMORY.popitem(last=False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    build_s = time.perf_counter() - start
    info = dict(core.info, cache=cache_state, build_s=build_s)
    return DeployedModel(core, build_s, info)


# ------------------------------------------------------------------------------------------ helpers
def _as_module(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..arch.factory import create_model
    return create_model(model)


def _is_lowformer(model: nn.Module) -> bool:
    from ..arch.model import LowFormer
    return isinstance(model, LowFormer)


def in_chans(model: nn.Module) -> int:
    """Input channels of ``model``: its config's, else those of its first 4-D (conv) weight."""
    if _is_lowformer(model):
        return model.cfg.in_chans
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    if weight is None:
        raise ConfigError("model", type(model).__name__, "a module whose first layer is a Conv2d")
    return weight.shape[1]


def _cache_key(model, precision, shape, backend, channels_last, dev, opts: DeployOptions):
    if not _is_lowformer(model):
        return None
    return (model.cfg.arch_id, precision, shape, backend, channels_last, str(dev), opts.key())


@torch.no_grad()
def reparameterize(model: nn.Module, options: DeployOptions | None = None) -> nn.Module:
    """Rewrite ``model`` in place for inference: every submodule with a ``reparameterize(options)`` method
    (lowspace's blocks) calls it, parents before their children, as timm's ``reparameterize_model`` walks.
    The eval-mode function stays the same up to float rounding. Returns ``model``."""
    for child in model.children():
        if hasattr(child, "reparameterize"):
            child.reparameterize(options)
        reparameterize(child, options)
    return model


def _build_net(model: nn.Module, opts: DeployOptions, dev) -> nn.Module:
    """A float32 inference copy of ``model`` on ``dev``, reparameterized if it is a lowspace model."""
    import copy
    net = copy.deepcopy(model).eval().float().to(dev).requires_grad_(False)
    for p in net.parameters():
        p.grad = None
    return reparameterize(net, opts) if _is_lowformer(net) else net


def _cast(net: nn.Module, precision: str, channels_last: bool) -> nn.Module:
    net = net.to(DTYPES[precision])
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _check_rewrite(model, net, dev, shape) -> float | None:
    """Max |rewritten - eval model| relative to the logits' scale, both in fp32, on a batch of 2."""
    if not _is_lowformer(model):
        return None
    import copy
    ref = copy.deepcopy(model).eval().to(dev).float()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((min(2, shape[0]),) + shape[1:], generator=gen).to(dev)
    with torch.inference_mode():
        want, got = ref(x), net(x)
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
    if not err <= _CHECK_TOLERANCE.get(dev.type, 2e-2):
        raise BackendError(f"deployed module differs from the eval-mode model (max rel. error {err:.2e}); "
                           "please report this architecture")
    return err


def inductor_options(opts: DeployOptions) -> dict[str, Any]:
    """The ``torch._inductor`` options a compile mode stands for, with the user's on top."""
    if opts.compile_mode == "tuned":
        base = dict(TUNED_INDUCTOR)
    elif opts.compile_mode == "tuned-autotune":
        base = dict(TUNED_AUTOTUNE)
    else:
        from torch._inductor import list_mode_options
        base = dict(list_mode_options(opts.compile_mode))
    return {**base, **opts.inductor}


def use_compile_cache() -> str:
    """Keep inductor's on-disk caches under lowspace's cache folder unless the user (or an earlier compile in
    this process) chose a place; returns the folder. Processes started after this call share it."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _build_core(net, shape, dev, backend, precision, channels_last, opts: DeployOptions) -> _Core:
    dtype = DTYPES[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=dev, dtype=dtype).contiguous(memory_format=fmt)
    info: dict[str, Any] = {"backend": backend, "precision": precision, "precision_mode": "cast",
                            "batch_size": shape[0], "resolution": shape[-1], "channels_last": channels_last,
                            "device": str(dev), "rewrites": describe_rewrites(net),
                            "options": dataclasses.asdict(opts)}
    if dev.type == "cuda":
        info["cudnn_benchmark"] = opts.cudnn_benchmark
    if backend in ("torchscript", "onnxruntime"):
        runner = prepare(net, x, backend, precision, channels_last)
        info.update(runner.info)
        return _Core(net, runner, shape, dtype, fmt, lambda t: net(t), info, runner.fn)
    fn: Callable = net
    if backend in COMPILE_BACKENDS:
        ind = inductor_options(opts) if opts.compile_backend == "inductor" else {}
        info.update(compile_mode=opts.compile_mode, compile_backend=opts.compile_backend, inductor_options=ind)
        if opts.cache:
            info["compile_cache_dir"] = use_compile_cache()
        _raise_recompile_limits()
        try:
            fn = torch.compile(_fresh_forward(net), backend=opts.compile_backend, options=ind or None, fullgraph=True,
                               dynamic=False)
        except Exception as err:  # noqa: BLE001 - bad inductor options etc. become one clear message
            raise BackendError(f"torch.compile failed: {type(err).__name__}: {err}") from None

    def forward():
        with torch.inference_mode():
            return fn(x)

    def call(t):
        return fn(t)

    if backend in ("cuda_graph", "compile_cuda_graph"):
        runner = capture_cuda_graph(forward, x, precision, check=opts.check)
        runner.backend = backend
        static_in, replay = runner.input, runner.fn

        def call(t):  # noqa: F811 - graph replay for inputs of the captured shape
            static_in.copy_(t)
            return replay()
    else:
        forward()  # compilation / lazy initialisation happens here
        runner = Runner(forward, x, backend, precision)
    runner.info.update(info)
    info.update(runner.info)
    return _Core(net, runner, shape, dtype, fmt, call, info, forward)


def _fresh_forward(net: nn.Module) -> Callable:
    """``net``'s forward as a function with a code object of its own.

    Dynamo caches compiled code per code object and fails a ``fullgraph`` build once one code object has
    ``recompile_limit`` (8) entries: compiling the model's ``forward`` for every architecture of a search
    would hit it. A copied code object per build (torch's own trick for nested calls) keeps each graph
    with its deployed model; the function lives in this file, so torch does not wrap it in its shared
    ``inner`` frame, as torch 2.11 does for exec'd code.
    """
    def forward(x):
        return net(x)

    forward.__code__ = forward.__code__.replace(co_name="deployed_forward")  # a new code object
    return forward


def _raise_recompile_limits() -> None:
    """Safety net for many builds in one process (also covers torch versions that share frames)."""
    import torch._dynamo.config as dyn
    for name, value in (("recompile_limit", 1024), ("cache_size_limit", 1024),
                        ("accumulated_recompile_limit", 8192), ("accumulated_cache_size_limit", 8192)):
        if isinstance(getattr(dyn, name, None), int) and getattr(dyn, name) < value:
            setattr(dyn, name, value)


def describe_rewrites(net: nn.Module) -> list[str]:
    """The rewrites present in a built network (none for modules other than lowspace models)."""
    if not _is_lowformer(net):
        return []
    from ..arch.blocks import inference_rewrites
    return inference_rewrites(net)
