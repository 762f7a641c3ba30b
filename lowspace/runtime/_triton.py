"""Triton kernels: conv + bias + activation on channels_last tensors, as torch custom ops.

* ``torch.ops.lowspace.depthwise_conv``: a depthwise conv (one input channel per output channel);
* ``torch.ops.lowspace.stem_conv``: a dense conv with few input channels (at most :data:`STEM_MAX_IN`, as the
  network's first conv on RGB images), whose output a GEMM-shaped cuDNN kernel computes at a fraction of the
  memory bandwidth and whose activation would be one more pass over the largest activation of the network;
* ``torch.ops.lowspace.project_conv``: the 1x1 project conv of an (fused-)MBConv as one GEMM whose input is the
  previous conv's raw output, to which it adds that conv's bias and applies its activation while loading, and
  whose output gets its own bias and the block's residual before it is stored: the hidden (expanded) tensor is
  read once instead of written and read again by an activation pass, and the residual add needs no pass;
* ``torch.ops.lowspace.dw_qkv``: the attention's depthwise projection and its QKV 1x1 conv as one GEMM whose A
  operand (the projection's output, a block of channels at a time) is computed from the input as it is
  loaded: the projected map is never written, and one kernel replaces two;
* ``torch.ops.lowspace.fused_mbconv``: a whole fused MBConv (k x k conv, bias, activation, 1x1 conv, bias,
  residual) as one kernel of two chained GEMMs: the hidden (expanded) tensor is made a block of channels at a
  time in registers and consumed there by the second GEMM, never written;
* ``torch.ops.lowspace.mbconv``: a whole MBConv (1x1 expand, k x k depthwise, 1x1 project, their biases and
  activations, the residual) on a small map (at most :data:`MBCONV_MAX_POSITIONS` positions, as the last stage
  at 224 px) as one kernel: one program holds a whole image's expanded tile, the depthwise conv gathers its
  taps from it.

Each runs its Triton kernel for CUDA tensors and PyTorch's ops (``F.conv2d``, ``F.linear``) elsewhere, so a
module using it still runs (and exports) on CPU. All have fake implementations, so ``torch.compile`` keeps
them in the graph as one opaque kernel each and CUDA graphs capture them.

For the convs, one program computes a tile of ``BLOCK_P`` output positions (of one image, flattened) x
``BLOCK_C`` output channels: channels are the contiguous (coalesced) axis of channels_last tensors, the k x k
taps (and the few input channels of the stem) are unrolled, accumulation is in float32. Inputs of any strides
are accepted. The project GEMM takes rows of positions x channels (channels_last, made contiguous) and
accumulates in float32 too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton is optional: without it the op runs its PyTorch fallback.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

TRITON_ACTS = (None, "hardswish", "relu", "relu6", "silu", "gelu")
STEM_MAX_IN = 4  # input channels up to which a dense conv goes through the stem kernel
_ACT_CODES = {a: i for i, a in enumerate(TRITON_ACTS)}


def _torch_act(x, act):
    from ..arch.blocks import make_act
    return make_act(act)(x)


if triton is not None:
    @triton.jit
    def _activate(acc, ACT: tl.constexpr):
        if ACT == 1:  # hardswish
            acc = acc * tl.minimum(tl.maximum(acc + 3.0, 0.0), 6.0) / 6.0
        elif ACT == 2:  # relu
            acc = tl.maximum(acc, 0.0)
        elif ACT == 3:  # relu6
            acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)
        elif ACT == 4:  # silu
            acc = acc / (1.0 + tl.exp(-acc))
        elif ACT == 5:  # exact gelu
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        return acc

    @triton.jit
    def _conv_tile(C, HO, WO, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """A conv program's image, output rows and columns of its ``BLOCK_P`` flattened positions, its
        ``BLOCK_C`` output channels and their masks (grid: images x position blocks, channel blocks)."""
        n_pb = tl.cdiv(HO * WO, BLOCK_P)
        pid = tl.program_id(0)  # n * n_pb + position block
        p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        return pid // n_pb, p // WO, p % WO, c, p < HO * WO, c < C

    @triton.jit
    def _conv_store(acc, b_ptr, y_ptr, n, oy, ox, c, pmask, cmask, syn, syc, syh, syw,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr):
        """Bias, activation and the store of a conv program's tile."""
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = _activate(acc, ACT)
        out = y_ptr + n.to(tl.int64) * syn + (oy * syh + ox * syw)[:, None] + c[None, :] * syc
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])

    @triton.jit
    def _dw_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, HO, WO,
                   sxn, sxc, sxh, sxw, swc, swy, swx, syn, syc, syh, syw,
                   STRIDE: tl.constexpr, PAD: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        n, oy, ox, c, pmask, cmask = _conv_tile(C, HO, WO, BLOCK_P, BLOCK_C)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        x_base = x_ptr + n.to(tl.int64) * sxn + c[None, :] * sxc
        for ky in tl.static_range(K):
            iy = oy * STRIDE - PAD + ky
            row_ok = pmask & (iy >= 0) & (iy < H)
            for kx in tl.static_range(K):
                ix = ox * STRIDE - PAD + kx
                m = row_ok & (ix >= 0) & (ix < W)
                xv = tl.load(x_base + (iy * sxh + ix * sxw)[:, None], mask=m[:, None] & cmask[None, :], other=0.0)
                wv = tl.load(w_ptr + c * swc + ky * swy + kx * swx, mask=cmask, other=0.0)
                acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        _conv_store(acc, b_ptr, y_ptr, n, oy, ox, c, pmask, cmask, syn, syc, syh, syw, HAS_BIAS, ACT)

    @triton.jit
    def _stem_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, HO, WO,
                     sxn, sxc, sxh, sxw, swo, swi, swy, swx, syn, syc, syh, syw,
                     CIN: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        n, oy, ox, c, pmask, cmask = _conv_tile(C, HO, WO, BLOCK_P, BLOCK_C)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        x_base = x_ptr + n.to(tl.int64) * sxn
        for ky in tl.static_range(K):
            iy = oy * STRIDE - PAD + ky
            row_ok = pmask & (iy >= 0) & (iy < H)
            for kx in tl.static_range(K):
                ix = ox * STRIDE - PAD + kx
                m = row_ok & (ix >= 0) & (ix < W)
                for ci in tl.static_range(CIN):  # every output channel reads the same input value
                    xv = tl.load(x_base + ci * sxc + iy * sxh + ix * sxw, mask=m, other=0.0)
                    wv = tl.load(w_ptr + c * swo + ci * swi + ky * swy + kx * swx, mask=cmask, other=0.0)
                    acc += xv.to(tl.float32)[:, None] * wv.to(tl.float32)[None, :]
        _conv_store(acc, b_ptr, y_ptr, n, oy, ox, c, pmask, cmask, syn, syc, syh, syw, HAS_BIAS, ACT)


    @triton.jit
    def _gemm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's rows and columns of an (M, N) output: one program per (row block, column block), the
        column blocks of a row block consecutive, so programs running at the same time share their rows of the
        input, which then come from L2 after the first reads them."""
        n_blocks = tl.cdiv(N, BLOCK_N)
        pid = tl.program_id(0)
        rm = (pid // n_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        return rm, rn, rm < M, rn < N

    @triton.jit
    def _times_weights(acc, a, w_ptr, rk, kmask, rn, nmask, N, IEEE: tl.constexpr):
        """``acc`` plus ``a`` (float32, rounded to the weights' type as the unfused network stores it) times the
        rows ``rk`` of the (K, N) weights."""
        w = tl.load(w_ptr + rk[:, None] * N + rn[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
        if IEEE:
            return acc + tl.dot(a.to(w.dtype), w, input_precision="ieee")
        return acc + tl.dot(a.to(w.dtype), w)

    @triton.jit
    def _gemm_store(acc, b_ptr, r_ptr, y_ptr, rows, rn, rmask, nmask, N, HAS_BIAS: tl.constexpr,
                    HAS_RES: tl.constexpr):
        """The GEMM kernels' epilogue: ``acc`` plus the bias and the residual (rows ``rows`` (int64) of an
        (M, N) map), stored into the same rows of ``y``."""
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        out = rows[:, None] * N + rn[None, :]
        omask = rmask[:, None] & nmask[None, :]
        if HAS_RES:
            acc += tl.load(r_ptr + out, mask=omask, other=0.0).to(tl.float32)
        tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=omask)

    @triton.jit
    def _output_positions(rm, HO, WO, x_ptr, sxn):
        """For flattened output rows ``rm`` of a conv: their output row and column, and the start of their
        image in ``x`` (batch stride ``sxn``)."""
        image = rm // (HO * WO)
        return (rm % (HO * WO)) // WO, rm % WO, x_ptr + image.to(tl.int64) * sxn

    @triton.jit
    def _tap_input(oy, ox, t, KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, H, W, valid):
        """Where tap ``t`` (row-major in the k x k window) of output positions ``oy, ox`` reads its input, and
        whether that lies inside the H x W map (and ``valid``)."""
        iy = oy * STRIDE - PAD + t // KS
        ix = ox * STRIDE - PAD + t % KS
        return iy, ix, valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)

    @triton.jit
    def _project_kernel(h_ptr, pre_ptr, w_ptr, b_ptr, r_ptr, y_ptr, M, N, K,
                        HAS_PRE: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # h: (M, K) rows of channels (a channels_last map flattened), w: (K, N), r and y: (M, N), all contiguous
        rm, rn, mmask, nmask = _gemm_tile(M, N, BLOCK_M, BLOCK_N)
        rows = rm.to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            kmask = rk < K
            a = tl.load(h_ptr + rows[:, None] * K + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
            a = a.to(tl.float32)
            if HAS_PRE:
                a += tl.load(pre_ptr + rk, mask=kmask, other=0.0).to(tl.float32)[None, :]
            a = _activate(a, ACT)  # every activation maps 0 to 0: the masked columns stay 0
            acc = _times_weights(acc, a, w_ptr, rk, kmask, rn, nmask, N, IEEE)
        _gemm_store(acc, b_ptr, r_ptr, y_ptr, rows, rn, mmask, nmask, N, HAS_BIAS, HAS_RES)

    @triton.jit
    def _dw_qkv_kernel(x_ptr, dw_ptr, w_ptr, b_ptr, y_ptr, M, N, C, H, W, HO, WO,
                       sxn, sxc, sxh, sxw, sdc, sdy, sdx,
                       STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, HAS_BIAS: tl.constexpr,
                       IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # The attention's depthwise projection (k x k, no bias) computed block of channels by block of channels
        # as the A operand of the QKV GEMM: x (N, C, H, W) any strides, w (C, N) contiguous, y (M, N) = the
        # channels_last (N, N_out, HO, WO) output
        rm, rn, mmask, nmask = _gemm_tile(M, N, BLOCK_M, BLOCK_N)
        oy, ox, x_rows = _output_positions(rm, HO, WO, x_ptr, sxn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_K):
            rk = c0 + tl.arange(0, BLOCK_K)
            kmask = rk < C
            a = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
            for t in range(0, KS * KS):  # a loop, not unrolled: unrolled, the taps' tiles spill registers
                iy, ix, m = _tap_input(oy, ox, t, KS, STRIDE, PAD, H, W, mmask)
                at = x_rows[:, None] + (iy * sxh + ix * sxw)[:, None] + rk[None, :] * sxc
                xv = tl.load(at, mask=m[:, None] & kmask[None, :], other=0.0)
                wv = tl.load(dw_ptr + rk * sdc + (t // KS) * sdy + (t % KS) * sdx, mask=kmask, other=0.0)
                a += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
            acc = _times_weights(acc, a, w_ptr, rk, kmask, rn, nmask, N, IEEE)
        _gemm_store(acc, b_ptr, y_ptr, y_ptr, rm.to(tl.int64), rn, mmask, nmask, N, HAS_BIAS, False)

    @triton.jit
    def _fused_mbconv_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, r_ptr, y_ptr, M, CIN, HID, COUT, H, W, HO, WO,
                             CINP, sxn, sxc, sxh, sxw,
                             STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, ACT: tl.constexpr,
                             HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_RES: tl.constexpr, IEEE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
        # A fused MBConv: x (N, CIN, H, W) any strides through a k x k conv to HID channels (w1: (KS * KS * CIN,
        # HID), rows tap-major), bias and activation, then a 1x1 conv to COUT (w2: (HID, COUT)), bias and the
        # residual r; y and r (M, COUT) are channels_last maps flattened. The hidden tensor is made BLOCK_H
        # channels at a time in registers, rounded to the weights' type as the unfused network stores it, and
        # consumed at once by the second GEMM: it never leaves the chip.
        rm, rn, mmask, nmask = _gemm_tile(M, COUT, BLOCK_M, BLOCK_N)
        oy, ox, x_rows = _output_positions(rm, HO, WO, x_ptr, sxn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for h0 in range(0, HID, BLOCK_H):
            rh = h0 + tl.arange(0, BLOCK_H)
            hmask = rh < HID
            hidden = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
            for kk in range(0, KS * KS * CINP, BLOCK_K):  # taps x input channels (CINP: CIN padded to BLOCK_K)
                t = kk // CINP
                rc = kk - t * CINP + tl.arange(0, BLOCK_K)
                cmask = rc < CIN
                iy, ix, inside = _tap_input(oy, ox, t, KS, STRIDE, PAD, H, W, mmask)
                a = tl.load(x_rows[:, None] + (iy * sxh + ix * sxw)[:, None] + rc[None, :] * sxc,
                            mask=inside[:, None] & cmask[None, :], other=0.0)
                w = tl.load(w1_ptr + (t * CIN + rc)[:, None] * HID + rh[None, :],
                            mask=cmask[:, None] & hmask[None, :], other=0.0)
                if IEEE:
                    hidden = tl.dot(a, w, hidden, input_precision="ieee")
                else:
                    hidden = tl.dot(a, w, hidden)
            if HAS_B1:
                hidden += tl.load(b1_ptr + rh, mask=hmask, other=0.0).to(tl.float32)[None, :]
            hidden = _activate(hidden, ACT)  # every activation maps 0 to 0: the masked columns stay 0
            acc = _times_weights(acc, hidden, w2_ptr, rh, hmask, rn, nmask, COUT, IEEE)
        _gemm_store(acc, b2_ptr, r_ptr, y_ptr, rm.to(tl.int64), rn, mmask, nmask, COUT, HAS_B2, HAS_RES)

    @triton.jit
    def _mbconv_kernel(x_ptr, w1_ptr, b1_ptr, wd_ptr, bd_ptr, w2_ptr, b2_ptr, r_ptr, y_ptr, CIN, HID, COUT, H, W,
                       HO, WO, sxn, sxc, sxh, sxw,
                       STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, ACT1: tl.constexpr,
                       ACT2: tl.constexpr, HAS_B1: tl.constexpr, HAS_BD: tl.constexpr, HAS_B2: tl.constexpr,
                       HAS_RES: tl.constexpr, IEEE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # An MBConv on a small map: one program takes one image whole (its H * W <= BLOCK_P positions) and
        # BLOCK_N output channels. x (N, CIN, H, W) any strides through the 1x1 expand conv (w1: (CIN, HID)),
        # bias and activation, the k x k depthwise conv (wd: (KS * KS, HID)), bias and activation, then the 1x1
        # project conv (w2: (HID, COUT)), bias and the residual; y and r (N * HO * WO, COUT) are channels_last
        # maps flattened. The hidden tensor is made BLOCK_H channels at a time in registers; the depthwise conv
        # gathers each tap's neighbours from that tile, so it never leaves the chip either.
        n_cb = tl.cdiv(COUT, BLOCK_N)
        pid = tl.program_id(0)
        image = pid // n_cb
        rn = (pid % n_cb) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < COUT
        q = tl.arange(0, BLOCK_P)  # input positions: the rows of the expanded tile
        qmask = q < H * W
        x_rows = x_ptr + image.to(tl.int64) * sxn + (q // W) * sxh + (q % W) * sxw
        p = tl.arange(0, BLOCK_P)  # output positions
        pmask = p < HO * WO
        oy = p // WO
        ox = p % WO
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for h0 in range(0, HID, BLOCK_H):
            rh = h0 + tl.arange(0, BLOCK_H)
            hmask = rh < HID
            e = tl.zeros((BLOCK_P, BLOCK_H), dtype=tl.float32)
            for c0 in range(0, CIN, BLOCK_K):
                rc = c0 + tl.arange(0, BLOCK_K)
                cmask = rc < CIN
                a = tl.load(x_rows[:, None] + rc[None, :] * sxc, mask=qmask[:, None] & cmask[None, :], other=0.0)
                w = tl.load(w1_ptr + rc[:, None] * HID + rh[None, :], mask=cmask[:, None] & hmask[None, :],
                            other=0.0)
                if IEEE:
                    e = tl.dot(a, w, e, input_precision="ieee")
                else:
                    e = tl.dot(a, w, e)
            if HAS_B1:
                e += tl.load(b1_ptr + rh, mask=hmask, other=0.0).to(tl.float32)[None, :]
            # rounded to the weights' type, as the unfused network stores the expanded map
            e = _activate(e, ACT1).to(w1_ptr.dtype.element_ty).to(tl.float32)
            d = tl.zeros((BLOCK_P, BLOCK_H), dtype=tl.float32)
            for t in range(KS * KS):  # a loop, not unrolled: unrolled, the taps' index tiles spill registers
                iy, ix, ok = _tap_input(oy, ox, t, KS, STRIDE, PAD, H, W, pmask)
                src = tl.broadcast_to(tl.where(ok, iy * W + ix, 0)[:, None], (BLOCK_P, BLOCK_H))
                tap = tl.where(ok[:, None], tl.gather(e, src, 0), 0.0)
                d += tap * tl.load(wd_ptr + t * HID + rh, mask=hmask, other=0.0).to(tl.float32)[None, :]
            if HAS_BD:
                d += tl.load(bd_ptr + rh, mask=hmask, other=0.0).to(tl.float32)[None, :]
            d = _activate(d, ACT2)
            acc = _times_weights(acc, d, w2_ptr, rh, hmask, rn, nmask, COUT, IEEE)
        rows = image.to(tl.int64) * HO * WO + p
        _gemm_store(acc, b2_ptr, r_ptr, y_ptr, rows, rn, pmask, nmask, COUT, HAS_B2, HAS_RES)


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def _tiles(n: int, c: int, positions: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): 64 x 64 tiles, shrunk while the grid would not fill the GPU (~2 programs / SM)."""
    block_c = min(64, triton.next_power_of_2(c))
    block_p = min(64, triton.next_power_of_2(positions))
    while block_p * block_c > 256 and n * triton.cdiv(positions, block_p) * triton.cdiv(c, block_c) < 264:
        if block_p >= block_c:
            block_p //= 2
        else:
            block_c //= 2
    return block_p, block_c


def _empty_output(x, weight, stride, padding):
    """The channels_last output of a conv of ``x`` with ``weight`` (out channels first, k x k), uninitialized."""
    n, _, h, w = x.shape
    k = weight.shape[-1]
    return torch.empty((n, weight.shape[0], _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)),
                       device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


def _run(kernel, x, weight, weight_strides, bias, stride, padding, act, **constexprs):
    """Launch ``kernel`` (the shared signature of both kernels) over the output's tiles; returns the output."""
    y = _empty_output(x, weight, stride, padding)
    n, c, ho, wo = y.shape
    block_p, block_c = _tiles(n, c, ho * wo)
    grid = (n * triton.cdiv(ho * wo, block_p), triton.cdiv(c, block_c))
    kernel[grid](x, weight, bias if bias is not None else weight, y, c, x.shape[2], x.shape[3], ho, wo,
                 *x.stride(), *weight_strides, *y.stride(), STRIDE=stride, PAD=padding, K=weight.shape[-1],
                 HAS_BIAS=bias is not None, ACT=_ACT_CODES[act], BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
                 **constexprs)
    return y


def _launch(x, weight, bias, stride, padding, act):
    strides = (weight.stride(0), weight.stride(2), weight.stride(3))
    return _run(_dw_kernel, x, weight, strides, bias, stride, padding, act)


def _launch_stem(x, weight, bias, stride, padding, act):
    return _run(_stem_kernel, x, weight, weight.stride(), bias, stride, padding, act, CIN=weight.shape[1])


_FILL_PROGRAMS = 264  # about 2 programs per SM of an H100 / H200 (132 SMs)


def _gemm_tiles(m: int, n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of the project GEMM: 128 x up to 128 x up to 64; while the grid would not
    fill the GPU, the rows shrink (down to 16), then the columns (down to 16, as ``tl.dot`` needs)."""
    block_n = max(16, min(128, triton.next_power_of_2(n)))
    block_k = max(16, min(64, triton.next_power_of_2(k)))
    block_m = 128
    while block_m > 16 and triton.cdiv(m, block_m) * triton.cdiv(n, block_n) < _FILL_PROGRAMS:
        block_m //= 2
    while block_n > 16 and triton.cdiv(m, block_m) * triton.cdiv(n, block_n) < _FILL_PROGRAMS:
        block_n //= 2
    return block_m, block_n, block_k


def _warps(block_m: int, block_n: int) -> int:
    return 8 if block_m * block_n >= 128 * 128 else 4


def _tile_candidates(m: int, n: int, k: int) -> list[tuple[int, int, int]]:
    """The tiles ``tune`` measures for one GEMM shape: :func:`_gemm_tiles`' (first) and its neighbours (half or
    twice the rows or the columns), so a column count that is not a power of two (B1.5's 160 and 320) or a
    small grid (batch 1) can find a better fit."""
    bm, bn, bk = _gemm_tiles(m, n, k)
    widest = max(16, min(128, triton.next_power_of_2(n)))
    out = [(bm, bn, bk)]
    for rows, cols in ((bm, bn // 2), (bm // 2, bn), (bm, bn * 2), (bm * 2, bn)):
        if 16 <= rows <= 128 and 16 <= cols <= widest and (rows, cols, bk) not in out:
            out.append((rows, cols, bk))
    return out


def _prune_tiles(configs, named_args, **kwargs):
    """The configs of :func:`_tile_candidates` for this call's shape, in its order."""
    by_tiles = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]): c for c in configs}
    return [by_tiles[t] for t in _tile_candidates(named_args["M"], named_args["N"], named_args["K"])]


def _tuned_project_kernel():
    """The project kernel behind Triton's autotuner (made on first use): for each (M, N, K) and dtype it
    times :func:`_tile_candidates` once, on the first call, and keeps the fastest."""
    global _PROJECT_TUNED
    if _PROJECT_TUNED is None:
        import inspect
        sides = (16, 32, 64, 128)
        configs = [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=_warps(bm, bn), num_stages=3)
                   for bm in sides for bn in sides for bk in (16, 32, 64)]
        accepts = inspect.signature(triton.autotune).parameters
        extra = {"cache_results": True} if "cache_results" in accepts else {}
        if "do_bench" in accepts:  # a short timing per candidate (5 ms warm-up, 20 ms of repetitions)
            from triton.testing import do_bench
            extra["do_bench"] = lambda fn, quantiles: do_bench(fn, warmup=5, rep=20, quantiles=quantiles)
        else:  # older Triton
            extra.update(warmup=5, rep=20)
        _PROJECT_TUNED = triton.autotune(configs, key=["M", "N", "K"], **extra,
                                         prune_configs_by={"early_config_prune": _prune_tiles})(_project_kernel)
    return _PROJECT_TUNED


_PROJECT_TUNED = None


def _launch_project(h, pre_bias, weight_t, bias, residual, act, tune: bool = False):
    """``h`` (N, K, H, W) -> (N, N_out, H, W), channels_last; ``weight_t`` is (K, N_out). ``tune``: tiles
    measured per shape (:func:`_tuned_project_kernel`) rather than :func:`_gemm_tiles`' choice."""
    h = h.contiguous(memory_format=torch.channels_last)
    n, k, hh, ww = h.shape
    out_ch = weight_t.shape[1]
    y = torch.empty((n, out_ch, hh, ww), device=h.device, dtype=h.dtype, memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    m = n * hh * ww
    weight_t = weight_t.contiguous()
    args = (h, pre_bias if pre_bias is not None else weight_t, weight_t, bias if bias is not None else weight_t,
            residual if residual is not None else y, y, m, out_ch, k)
    flags = dict(HAS_PRE=pre_bias is not None, ACT=_ACT_CODES[act], HAS_BIAS=bias is not None,
                 HAS_RES=residual is not None, IEEE=h.dtype == torch.float32)
    if tune:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(out_ch, meta["BLOCK_N"]),)
        _tuned_project_kernel()[grid](*args, **flags)
        return y
    block_m, block_n, block_k = _gemm_tiles(m, out_ch, k)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(out_ch, block_n),)
    _project_kernel[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          num_warps=_warps(block_m, block_n), num_stages=3)
    return y


def _dw_qkv_tiles(m: int, n: int, k: int) -> tuple[int, int, int]:
    """The project GEMM's rows and columns (:func:`_gemm_tiles`), but at most 32 channels per step: the
    projection's input tile and its addresses then fit in registers next to the accumulator (with 64, ptxas
    spills on Hopper)."""
    block_m, block_n, _ = _gemm_tiles(m, n, k)
    return block_m, block_n, max(16, min(32, triton.next_power_of_2(k)))


def _dw_qkv_warps(block_m: int, block_n: int) -> int:
    return 8 if block_m * block_n >= 128 * 64 else 4


def _launch_dw_qkv(x, dw_weight, stride, padding, weight_t, bias):
    """``x`` (N, C, H, W) through a depthwise k x k conv (``dw_weight`` (C, 1, k, k), no bias) and a 1x1 conv
    with ``weight_t`` (C, N_out) and ``bias``: (N, N_out, HO, WO), channels_last, in one kernel."""
    n, c, hh, ww = x.shape
    k = dw_weight.shape[-1]
    ho, wo = _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)
    out_ch = weight_t.shape[1]
    y = torch.empty((n, out_ch, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    m = n * ho * wo
    weight_t = weight_t.contiguous()
    block_m, block_n, block_k = _dw_qkv_tiles(m, out_ch, c)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(out_ch, block_n),)
    _dw_qkv_kernel[grid](x, dw_weight, weight_t, bias if bias is not None else weight_t, y, m, out_ch, c, hh, ww,
                         ho, wo, *x.stride(), dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3),
                         STRIDE=stride, PAD=padding, KS=k, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=_dw_qkv_warps(block_m, block_n),
                         num_stages=3)
    return y


def _dw_qkv_torch(x, dw_weight, stride, padding, weight_t, bias):
    """What the dw + QKV kernel computes, in PyTorch."""
    a = F.conv2d(x, dw_weight, None, stride, padding, 1, dw_weight.shape[0])
    return _with_residual(_pointwise_torch(a, weight_t, bias), None)


def _fused_mbconv_tiles(m: int, cin: int, cout: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_H, BLOCK_N, BLOCK_K) of the fused MBConv kernel: all output channels in one block up to
    256 (wider outputs are made in column blocks, each computing the hidden tensor again), 64 hidden and 32
    input channels per step, 64 rows (32 with 256 columns), fewer while the grid would not fill the GPU. With
    8 warps these tiles compile for Hopper without spilling registers (the tests check it): both
    accumulators and the gathered input's 64-bit addresses live in registers."""
    block_n = max(16, min(256, triton.next_power_of_2(cout)))
    block_m = 64 if block_n <= 128 else 32
    while block_m > 16 and triton.cdiv(m, block_m) * triton.cdiv(cout, block_n) < _FILL_PROGRAMS:
        block_m //= 2
    return block_m, 64, block_n, max(16, min(32, triton.next_power_of_2(cin)))


def fused_mbconv_rows(w1: torch.Tensor) -> torch.Tensor:
    """A k x k conv weight (HID, CIN, k, k) as the fused MBConv kernel reads it: (k * k * CIN, HID), rows
    tap-major."""
    hid, cin, k, _ = w1.shape
    return w1.permute(2, 3, 1, 0).reshape(k * k * cin, hid).contiguous()


def _conv_weight(w1_rows: torch.Tensor, k: int) -> torch.Tensor:
    """The (HID, CIN, k, k) conv weight of :func:`fused_mbconv_rows`' layout."""
    rows, hid = w1_rows.shape
    return w1_rows.reshape(k, k, rows // (k * k), hid).permute(3, 2, 0, 1)


def _launch_fused_mbconv(x, w1_rows, b1, k, stride, padding, act, w2_t, b2, residual):
    """``x`` (N, CIN, H, W) through a k x k conv (weights ``w1_rows``, :func:`fused_mbconv_rows`; bias ``b1``)
    and ``act``, then a 1x1 conv with ``w2_t`` (HID, COUT) and ``b2``, plus ``residual``: (N, COUT, HO, WO),
    channels_last, in one kernel."""
    n, cin, hh, ww = x.shape
    hid = w1_rows.shape[1]
    ho, wo = _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)
    cout = w2_t.shape[1]
    y = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    m = n * ho * wo
    w1_rows, w2_t = w1_rows.contiguous(), w2_t.contiguous()
    block_m, block_h, block_n, block_k = _fused_mbconv_tiles(m, cin, cout)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(cout, block_n),)
    _fused_mbconv_kernel[grid](
        x, w1_rows, b1 if b1 is not None else w2_t, w2_t, b2 if b2 is not None else w2_t,
        residual if residual is not None else y, y, m, cin, hid, cout, hh, ww, ho, wo,
        triton.cdiv(cin, block_k) * block_k, *x.stride(), STRIDE=stride, PAD=padding, KS=k, ACT=_ACT_CODES[act],
        HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_RES=residual is not None, IEEE=x.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=8, num_stages=3)
    return y


def _fused_mbconv_torch(x, w1_rows, b1, k, stride, padding, act, w2_t, b2, residual):
    """What the fused MBConv kernel computes, in PyTorch."""
    h = _torch_act(F.conv2d(x, _conv_weight(w1_rows, k), b1, stride, padding), act)
    return _with_residual(_pointwise_torch(h, w2_t, b2), residual)


MBCONV_MAX_POSITIONS = 64  # the largest map (H * W) the MBConv kernel takes whole in one program


def _mbconv_tiles(cin: int, cout: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_H, BLOCK_N, BLOCK_K) of the MBConv kernel: the whole map in 64 rows, 32 hidden and 32
    input channels per step, up to 256 output channels per program (wider outputs in column blocks, each
    making the hidden tensor again). With 8 warps they compile for Hopper without spilling registers (the
    tests check it)."""
    return (MBCONV_MAX_POSITIONS, 32, max(16, min(256, triton.next_power_of_2(cout))),
            max(16, min(32, triton.next_power_of_2(cin))))


def _launch_mbconv(x, w1_t, b1, act1, dw_taps, bd, k, stride, padding, act2, w2_t, b2, residual):
    """``x`` (N, CIN, H, W), H * W <= :data:`MBCONV_MAX_POSITIONS`, through a 1x1 conv (``w1_t`` (CIN, HID),
    ``b1``) and ``act1``, a k x k depthwise conv (``dw_taps`` (k * k, HID), ``bd``) and ``act2``, then a 1x1
    conv (``w2_t`` (HID, COUT), ``b2``), plus ``residual``: (N, COUT, HO, WO), channels_last, in one kernel."""
    n, cin, hh, ww = x.shape
    if hh * ww > MBCONV_MAX_POSITIONS:
        raise ValueError(f"the MBConv kernel takes maps of at most {MBCONV_MAX_POSITIONS} positions; got {hh} x {ww}")
    hid, cout = w1_t.shape[1], w2_t.shape[1]
    ho, wo = _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)
    y = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    w1_t, dw_taps, w2_t = w1_t.contiguous(), dw_taps.contiguous(), w2_t.contiguous()
    block_p, block_h, block_n, block_k = _mbconv_tiles(cin, cout)
    none = w2_t  # a placeholder pointer for absent biases and residual (never read)
    _mbconv_kernel[(n * triton.cdiv(cout, block_n),)](
        x, w1_t, b1 if b1 is not None else none, dw_taps, bd if bd is not None else none, w2_t,
        b2 if b2 is not None else none, residual if residual is not None else y, y, cin, hid, cout, hh, ww, ho, wo,
        *x.stride(), STRIDE=stride, PAD=padding, KS=k, ACT1=_ACT_CODES[act1], ACT2=_ACT_CODES[act2],
        HAS_B1=b1 is not None, HAS_BD=bd is not None, HAS_B2=b2 is not None, HAS_RES=residual is not None,
        IEEE=x.dtype == torch.float32, BLOCK_P=block_p, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=8, num_stages=2)
    return y


def _mbconv_torch(x, w1_t, b1, act1, dw_taps, bd, k, stride, padding, act2, w2_t, b2, residual):
    """What the MBConv kernel computes, in PyTorch."""
    hid = w1_t.shape[1]
    h = _torch_act(_pointwise_torch(x, w1_t, b1), act1)
    h = _torch_act(F.conv2d(h, dw_taps.t().reshape(hid, 1, k, k), bd, stride, padding, 1, hid), act2)
    return _with_residual(_pointwise_torch(h, w2_t, b2), residual)


def _project_torch(h, pre_bias, weight_t, bias, residual, act):
    """What the project kernel computes, in PyTorch: activation of (h + pre_bias), a 1x1 conv, the residual."""
    a = h if pre_bias is None else h + pre_bias.view(1, -1, 1, 1)
    return _with_residual(_pointwise_torch(_torch_act(a, act), weight_t, bias), residual)


def _pointwise_torch(h, weight_t, bias):
    """A 1x1 conv of ``h`` (N, K, H, W) with ``weight_t`` (K, N_out), in PyTorch: a linear over the channels."""
    return F.linear(h.permute(0, 2, 3, 1), weight_t.t(), bias).permute(0, 3, 1, 2)


def _with_residual(y, residual):
    """``y`` plus ``residual`` (if any), channels_last: how the PyTorch forms of the GEMM kernels end."""
    return (y if residual is None else y + residual).contiguous(memory_format=torch.channels_last)


def _conv_act(x, weight, bias, stride, padding, groups, act):
    """What the kernels compute, in PyTorch (the ops off CUDA): conv2d, the activation, channels_last out."""
    y = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return _torch_act(y, act).contiguous(memory_format=torch.channels_last)


def _kernel_act(act: str | None) -> str:
    """``act`` as the ops take it ("" for none), or a ValueError naming what the kernels have."""
    if act not in _ACT_CODES:
        raise ValueError(f"activation {act!r}: the kernel has {', '.join(map(str, TRITON_ACTS))}")
    return act or ""


# Inductor must hand the op the strides seen when tracing (channels_last): with a free layout it may pick
# NCHW for the producer, and channel-strided loads made the kernel several times slower
# (experiments/deploy_speed).
_TAGS = tuple(getattr(torch._C.Tag, t) for t in ("needs_exact_strides",) if hasattr(torch._C.Tag, t)) or \
    (torch._C.Tag.needs_fixed_stride_order,)


@torch.library.custom_op("lowspace::depthwise_conv", mutates_args=(), tags=_TAGS)
def _depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                    act: str) -> torch.Tensor:
    act_ = act or None
    if x.is_cuda and triton is not None:
        if x.numel() >= 1 << 20 and not x.is_contiguous(memory_format=torch.channels_last):
            # Channel-strided loads of a large NCHW input cost several times a copy.
            x = x.contiguous(memory_format=torch.channels_last)
        return _launch(x, weight, bias, stride, padding, act_)
    return _conv_act(x, weight, bias, stride, padding, weight.shape[0], act_)


@_depthwise_conv.register_fake
def _(x, weight, bias, stride, padding, act):
    return _empty_output(x, weight, stride, padding)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                   act: str | None) -> torch.Tensor:
    """Depthwise conv (weight (C, 1, k, k)) + bias + activation (one of :data:`TRITON_ACTS`); Triton on CUDA,
    PyTorch elsewhere."""
    return _depthwise_conv(x, weight, bias, stride, padding, _kernel_act(act))


@torch.library.custom_op("lowspace::stem_conv", mutates_args=(), tags=_TAGS)
def _stem_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
               act: str) -> torch.Tensor:
    act_ = act or None
    if x.is_cuda and triton is not None:
        return _launch_stem(x, weight, bias, stride, padding, act_)
    return _conv_act(x, weight, bias, stride, padding, 1, act_)


@_stem_conv.register_fake
def _(x, weight, bias, stride, padding, act):
    return _empty_output(x, weight, stride, padding)


def stem_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
              act: str | None) -> torch.Tensor:
    """Dense conv with at most :data:`STEM_MAX_IN` input channels (weight (C, Cin, k, k)) + bias + activation
    (one of :data:`TRITON_ACTS`); Triton on CUDA, PyTorch elsewhere."""
    act = _kernel_act(act)
    if weight.shape[1] > STEM_MAX_IN:
        raise ValueError(f"stem_conv takes at most {STEM_MAX_IN} input channels; got {weight.shape[1]}")
    return _stem_conv(x, weight, bias, stride, padding, act)


@torch.library.custom_op("lowspace::project_conv", mutates_args=(), tags=_TAGS)
def _project_conv(h: torch.Tensor, pre_bias: torch.Tensor | None, weight_t: torch.Tensor, bias: torch.Tensor | None,
                  residual: torch.Tensor | None, act: str, tune: bool) -> torch.Tensor:
    act_ = act or None
    if h.is_cuda and triton is not None:
        return _launch_project(h, pre_bias, weight_t, bias, residual, act_, tune)
    return _project_torch(h, pre_bias, weight_t, bias, residual, act_)


@_project_conv.register_fake
def _(h, pre_bias, weight_t, bias, residual, act, tune):
    n, _, hh, ww = h.shape
    return torch.empty((n, weight_t.shape[1], hh, ww), device=h.device, dtype=h.dtype,
                       memory_format=torch.channels_last)


def project_conv(h: torch.Tensor, pre_bias: torch.Tensor | None, weight_t: torch.Tensor, bias: torch.Tensor | None,
                 residual: torch.Tensor | None, act: str | None, tune: bool = False) -> torch.Tensor:
    """``act(h + pre_bias)`` through a 1x1 conv with weight ``weight_t`` (in, out) and ``bias``, plus
    ``residual``: one Triton GEMM on CUDA, PyTorch elsewhere; ``act`` one of :data:`TRITON_ACTS`. ``tune``:
    the GEMM's tiles measured per shape on its first call rather than chosen by a rule."""
    return _project_conv(h, pre_bias, weight_t, bias, residual, _kernel_act(act), tune)


@torch.library.custom_op("lowspace::dw_qkv", mutates_args=(), tags=_TAGS)
def _dw_qkv(x: torch.Tensor, dw_weight: torch.Tensor, stride: int, padding: int, weight_t: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    if x.is_cuda and triton is not None:
        return _launch_dw_qkv(x, dw_weight, stride, padding, weight_t, bias)
    return _dw_qkv_torch(x, dw_weight, stride, padding, weight_t, bias)


@_dw_qkv.register_fake
def _(x, dw_weight, stride, padding, weight_t, bias):
    n, _, hh, ww = x.shape
    k = dw_weight.shape[-1]
    return torch.empty((n, weight_t.shape[1], _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)),
                       device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


def dw_qkv(x: torch.Tensor, dw_weight: torch.Tensor, stride: int, padding: int, weight_t: torch.Tensor,
           bias: torch.Tensor | None) -> torch.Tensor:
    """The attention's depthwise projection (``dw_weight`` (C, 1, k, k), no bias) and its QKV 1x1 conv
    (``weight_t`` (C, out), ``bias``) as one Triton kernel on CUDA, whose projection output never leaves the
    chip; PyTorch elsewhere. Returns (N, out, HO, WO), channels_last."""
    return _dw_qkv(x, dw_weight, stride, padding, weight_t, bias)


@torch.library.custom_op("lowspace::fused_mbconv", mutates_args=(), tags=_TAGS)
def _fused_mbconv(x: torch.Tensor, w1_rows: torch.Tensor, b1: torch.Tensor | None, k: int, stride: int,
                  padding: int, act: str, w2_t: torch.Tensor, b2: torch.Tensor | None,
                  residual: torch.Tensor | None) -> torch.Tensor:
    act_ = act or None
    if x.is_cuda and triton is not None:
        return _launch_fused_mbconv(x, w1_rows, b1, k, stride, padding, act_, w2_t, b2, residual)
    return _fused_mbconv_torch(x, w1_rows, b1, k, stride, padding, act_, w2_t, b2, residual)


@_fused_mbconv.register_fake
def _(x, w1_rows, b1, k, stride, padding, act, w2_t, b2, residual):
    n, _, hh, ww = x.shape
    return torch.empty((n, w2_t.shape[1], _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)),
                       device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


def fused_mbconv(x: torch.Tensor, w1_rows: torch.Tensor, b1: torch.Tensor | None, k: int, stride: int, padding: int,
                 act: str | None, w2_t: torch.Tensor, b2: torch.Tensor | None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """A fused MBConv: ``act(conv(x, w1, b1))`` (a dense k x k conv, its weights as :func:`fused_mbconv_rows`
    lays them out) through a 1x1 conv with ``w2_t`` (HID, COUT) and ``b2``, plus ``residual``: one Triton kernel
    on CUDA whose hidden tensor never leaves the chip, PyTorch elsewhere; ``act`` one of :data:`TRITON_ACTS`.
    Returns (N, COUT, HO, WO), channels_last."""
    return _fused_mbconv(x, w1_rows, b1, k, stride, padding, _kernel_act(act), w2_t, b2, residual)


@torch.library.custom_op("lowspace::mbconv", mutates_args=(), tags=_TAGS)
def _mbconv(x: torch.Tensor, w1_t: torch.Tensor, b1: torch.Tensor | None, act1: str, dw_taps: torch.Tensor,
            bd: torch.Tensor | None, k: int, stride: int, padding: int, act2: str, w2_t: torch.Tensor,
            b2: torch.Tensor | None, residual: torch.Tensor | None) -> torch.Tensor:
    args = (x, w1_t, b1, act1 or None, dw_taps, bd, k, stride, padding, act2 or None, w2_t, b2, residual)
    if x.is_cuda and triton is not None:
        return _launch_mbconv(*args)
    return _mbconv_torch(*args)


@_mbconv.register_fake
def _(x, w1_t, b1, act1, dw_taps, bd, k, stride, padding, act2, w2_t, b2, residual):
    n, _, hh, ww = x.shape
    return torch.empty((n, w2_t.shape[1], _out_size(hh, k, stride, padding), _out_size(ww, k, stride, padding)),
                       device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


def mbconv(x: torch.Tensor, w1_t: torch.Tensor, b1: torch.Tensor | None, act1: str | None, dw_taps: torch.Tensor,
           bd: torch.Tensor | None, k: int, stride: int, padding: int, act2: str | None, w2_t: torch.Tensor,
           b2: torch.Tensor | None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """An MBConv on a map of at most :data:`MBCONV_MAX_POSITIONS` positions: a 1x1 conv (``w1_t`` (CIN, HID),
    ``b1``) and ``act1``, a k x k depthwise conv (``dw_taps`` (k * k, HID), ``bd``) and ``act2``, a 1x1 conv
    (``w2_t`` (HID, COUT), ``b2``), plus ``residual``: one Triton kernel on CUDA whose hidden tensors never
    leave the chip, PyTorch elsewhere; activations among :data:`TRITON_ACTS`. Returns (N, COUT, HO, WO),
    channels_last."""
    return _mbconv(x, w1_t, b1, _kernel_act(act1), dw_taps, bd, k, stride, padding, _kernel_act(act2), w2_t, b2,
                   residual)
