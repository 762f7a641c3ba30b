"""One pass of :func:`.gpu_augment.resample` as a Triton kernel that reads its taps straight from the images.

The matrix form (``resample_kernel="matmul"``) copies every crop into a padded buffer and multiplies it by dense
pass matrices that are zero outside each output pixel's few taps. This kernel instead computes, for every output
pixel, the weighted sum of its ``taps`` input pixels along one axis, reading them where they lie: in the batch's
flat uint8 tensor for the first pass, in the first pass's uint8 output for the second. Per sample it takes a base
offset and element strides (channel, row, column), so any layout serves; weights and first taps are those of
:class:`.gpu_augment.PassWeights`. Accumulation is float32; the result is rounded to pixel levels like PIL's.
"""
from __future__ import annotations

import os

import torch

try:  # Triton is optional: without it the matrix form runs.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK_OTHER, BLOCK_SIZE = 16, 32  # tile: positions along the axis kept x positions along the axis resampled


def available(device: torch.device) -> bool:
    """Whether the kernel runs for tensors on ``device``: CUDA with Triton, or any device under Triton's
    interpreter (``TRITON_INTERPRET=1``, how the tests run it on a CPU)."""
    return triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:
    @triton.jit
    def _level(acc):
        return tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)  # a pixel level; PIL rounds halves up

    @triton.jit
    def _tap_pass_kernel(src_ptr, layout_ptr, w_ptr, first_ptr, out_ptr, taps, size,
                         swn, sws, sfn, osn, osc, osy, osx,
                         AXIS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr):
        n = tl.program_id(2)
        o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)  # positions along the axis kept
        s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)  # output positions along the axis resampled
        row = layout_ptr + n * 6  # base, channel, row and column strides, kept length, resampled length
        base, sc = tl.load(row), tl.load(row + 1)
        sy, sx = tl.load(row + 2), tl.load(row + 3)
        other, length = tl.load(row + 4), tl.load(row + 5)
        omask = o < other
        smask = s < size
        first = tl.load(first_ptr + n * sfn + s, mask=smask, other=0).to(tl.int64)
        if AXIS == 1:  # columns resampled: s runs along x, o along y
            s_step, o_step = sx, sy
        else:
            s_step, o_step = sy, sx
        acc0 = tl.zeros((BLOCK_O, BLOCK_S), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_O, BLOCK_S), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_O, BLOCK_S), dtype=tl.float32)
        for k in range(0, taps):
            w = tl.load(w_ptr + n * swn + s * sws + k, mask=smask, other=0.0).to(tl.float32)
            tap = first + k
            m = omask[:, None] & (smask & (tap < length))[None, :]
            at = src_ptr + base + o.to(tl.int64)[:, None] * o_step + (tap * s_step)[None, :]
            acc0 += tl.load(at, mask=m, other=0).to(tl.float32) * w[None, :]
            acc1 += tl.load(at + sc, mask=m, other=0).to(tl.float32) * w[None, :]
            acc2 += tl.load(at + 2 * sc, mask=m, other=0).to(tl.float32) * w[None, :]
        if AXIS == 1:
            dst = out_ptr + n.to(tl.int64) * osn + o[:, None] * osy + s[None, :] * osx
        else:
            dst = out_ptr + n.to(tl.int64) * osn + s[None, :] * osy + o[:, None] * osx
        m = omask[:, None] & smask[None, :]
        ty = out_ptr.dtype.element_ty
        tl.store(dst, _level(acc0).to(ty), mask=m)
        tl.store(dst + osc, _level(acc1).to(ty), mask=m)
        tl.store(dst + 2 * osc, _level(acc2).to(ty), mask=m)


def tap_pass(src: torch.Tensor, layout: torch.Tensor, weights: torch.Tensor, first: torch.Tensor,
             out: torch.Tensor, axis: str) -> torch.Tensor:
    """Resample along ``axis`` (``"rows"`` or ``"cols"``) into ``out`` ``(N, 3, Y, X)``, one sample per row of
    ``layout`` (int64 ``(N, 6)``: offset of the sample's first pixel in ``src`` (any dtype, flat), its channel,
    row and column strides in elements, its length along the other axis, its length along ``axis``).
    ``weights`` ``(N, size, taps)`` and ``first`` ``(N, size)`` are the pass's taps; ``out``'s extent along
    ``axis`` is ``size``, and only the first (kept length) positions along the other axis are written."""
    n, size, taps = weights.shape
    resampled_cols = axis == "cols"
    other_max = out.shape[2] if resampled_cols else out.shape[3]
    weights, first = weights.contiguous(), first.contiguous()
    grid = (triton.cdiv(other_max, BLOCK_OTHER), triton.cdiv(size, BLOCK_SIZE), n)
    _tap_pass_kernel[grid](src, layout, weights, first, out, taps, size,
                           weights.stride(0), weights.stride(1), first.stride(0), *out.stride(),
                           AXIS=1 if resampled_cols else 0, BLOCK_O=BLOCK_OTHER, BLOCK_S=BLOCK_SIZE)
    return out

