"""The switches of :func:`lowspace.runtime.deploy`: a :class:`lowspace.config.Config`, checked when built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..config import Config, option

UPSAMPLE_REWRITES = ("auto", "conv_transpose", "subpixel")
CONV1X1_KINDS = ("conv", "linear")
CONVKXK_KINDS = ("conv", "im2col")
SDPA_KERNELS = ("auto", "flash", "efficient", "cudnn", "math")
GROUPNORM_KINDS = ("auto", "native", "decomposed", "channels_last")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "tuned",
                 "tuned-autotune")
MAX_CUDNN_ALGORITHMS = 1000  # an autotuning limit N (cudnn_benchmark) is at most this


@dataclass(frozen=True)
class DeployOptions(Config):
    """Which rewrites :func:`~lowspace.runtime.deploy` applies; every one keeps the function exact.

    fold_bn: fold every eval-mode BatchNorm into the conv before it (conv bias included).
    fuse_attention: attention in channels-last friendly form: a stride-1 transposed conv becomes a plain
        conv, the depthwise projection's bias moves into the QKV conv, Q/K/V are strided views fed to
        ``scaled_dot_product_attention`` (no copies).
    upsample: stride > 1 transposed convs: ``auto`` / ``conv_transpose`` keep them; ``subpixel`` computes
        them as a 3x3 conv to ``s*s*C`` channels plus pixel shuffle (9/4 of the MACs, no transposed conv).
    conv1x1: ``conv`` (cuDNN) or ``linear`` (a matmul on the NHWC view, which inductor fuses with its
        epilogue).
    convkxk: dense (ungrouped) k x k convs, k > 1: ``conv`` (cuDNN) or ``im2col`` (the k * k shifted views of
        the zero-padded input stacked over channels, then one matmul on the NHWC view, whose long reduction
        cuBLAS may split over more of the GPU than a convolution kernel at batch 1; measured slower on an
        H200, see experiments/deploy_speed).
    sdpa: attention kernel: ``auto`` (PyTorch's choice) or one of flash, efficient, cudnn, math.
    groupnorm: ``native`` (F.group_norm), ``decomposed`` (mean/var ops that a compiler can fuse) or
        ``channels_last`` (a LayerNorm over each sample's contiguous (H, W, C) block of a channels-last input).
        ``auto``: ``channels_last`` on CUDA for the compile backends (faster on every preset and batch
        measured) and for ``cuda_graph`` (the cheap latency protocol: with it, its ranking of architectures
        agrees better with the compiled deploy protocol's), ``native`` otherwise; experiments/deploy_speed
        has the measurements.
    triton: depthwise convs (+ bias + activation) through lowspace's Triton kernel (CUDA only). ``auto``:
        on for batch size 1 on CUDA (faster there), off otherwise (slower than cuDNN inside inductor
        graphs at large batches); experiments/deploy_speed has the measurements.
    triton_stem: a dense conv with at most 4 input channels (the stem's first conv on RGB input) + bias +
        activation through lowspace's Triton stem kernel (CUDA only), instead of a cuDNN conv and a separate
        activation pass over its output.
    triton_project: the 1x1 project conv of every FusedMBConv / MBConv whose previous conv is a plain conv with
        an activation (not the Triton depthwise kernel) as lowspace's Triton project kernel (CUDA only): that
        conv's bias and activation applied while its output is loaded, the residual added before the store.
        ``autotune``: the same, its tiles measured per GEMM shape at build time (a few candidates around the
        rule's choice) instead of chosen by the rule.
    triton_attention: the attention's depthwise projection and QKV conv as lowspace's Triton dw + QKV kernel
        (CUDA only; with ``fuse_attention``, whose bias move it needs).
    triton_chain: every FusedMBConv, and every MBConv on maps of at most 64 positions, as one of lowspace's
        Triton kernels (CUDA only; with ``fold_bn``): all its convs, biases, activations and the residual in
        one kernel whose hidden tensors never leave the chip. An MBConv on a larger map runs its layers.
    compile_mode: mode of ``torch.compile`` for the compile backends: torch's modes, or ``tuned``
        (lowspace's inductor settings, no autotuning) and ``tuned-autotune`` (plus GEMM/conv autotuning).
    compile_backend: torch.compile backend (``inductor``; ``aot_eager`` / ``eager`` for debugging).
    inductor: extra ``torch._inductor.config`` options (dict), applied over the mode's.
    cudnn_benchmark: cuDNN autotuning while building on CUDA: True (torch's, up to 10 algorithms per
        convolution), False (cuDNN's heuristic choice: faster builds) or N (at most N algorithms).
    check: compare the built module with the eval-mode model once at build time.
    cache: reuse a module built in this process for the same architecture and protocol, and keep
        inductor's compiled artifacts under ``$LOWSPACE_CACHE_DIR/inductor``.

    ``DeployOptions.from_dict(options)`` builds them from ``deploy()``'s keyword options.
    """

    config_kind = "deploy options"

    fold_bn: bool = True
    fuse_attention: bool = True
    upsample: str = option("auto", choices=UPSAMPLE_REWRITES)
    conv1x1: str = option("conv", choices=CONV1X1_KINDS)
    convkxk: str = option("conv", choices=CONVKXK_KINDS)
    sdpa: str = option("auto", choices=SDPA_KERNELS)
    groupnorm: str = option("auto", choices=GROUPNORM_KINDS)
    triton: Union[bool, Literal["auto"]] = "auto"
    triton_stem: bool = False
    triton_project: Union[bool, Literal["autotune"]] = False
    triton_attention: bool = False
    triton_chain: bool = False
    compile_mode: str = option("tuned", choices=COMPILE_MODES)
    compile_backend: str = "inductor"
    inductor: dict[str, Any] = option(default_factory=dict)
    cudnn_benchmark: Union[bool, int] = option(True, ge=1, le=MAX_CUDNN_ALGORITHMS)
    check: bool = True
    cache: bool = True

    def key(self) -> tuple:
        """Hashable form (the build-cache key part)."""
        d = dataclasses.asdict(self)
        d["inductor"] = tuple(sorted((k, repr(v)) for k, v in self.inductor.items()))
        d.pop("check")
        d.pop("cache")
        return tuple(sorted(d.items()))


def resolve_options(opts: DeployOptions, batch_size: int, device_type: str, backend: str) -> DeployOptions:
    """``opts`` with ``auto`` values decided for a protocol."""
    if opts.triton == "auto":
        from importlib.util import find_spec
        use = device_type == "cuda" and batch_size == 1 and find_spec("triton") is not None
        opts = dataclasses.replace(opts, triton=use)
    if opts.groupnorm == "auto":
        use_cl = device_type == "cuda" and backend in ("cuda_graph", "compile", "compile_cuda_graph")
        opts = dataclasses.replace(opts, groupnorm="channels_last" if use_cl else "native")
    return opts
