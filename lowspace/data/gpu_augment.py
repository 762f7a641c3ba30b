"""The class-folder transforms of :mod:`.folders` redone on decoded uint8 tensors on the device, batch-wise.

Every random choice of a sample comes from counter-based uniforms of its own seed (the seed the CPU path
uses, ``(seed, epoch, index)``), drawn on the host with numpy in one vectorized call per batch: a sample is
augmented the same way whatever batch, process or thread handles it, so resume stays exact. What the host
computes reaches the device in one transfer per step of the transform.

* :func:`resample`: PIL's two-pass resampling (``Image.resize``: the six PIL filters, antialiased, first
  pass rounded to pixel levels) of a region of every image, the whole batch at once: the images are padded
  into one buffer and each pass is one batched matrix product with per-sample filter weights, looked up
  in :class:`PassWeights` (computed once per input length, output length, offset and filter).
* :class:`DeviceTrainTransform`: random-resized crop (torchvision's box sampling) resampled with a filter
  drawn per sample, horizontal flip (folded into the weights), :class:`DeviceRandAugment`, normalization,
  random erasing (timm's box sampling, constant zero fill after normalization).
* :mod:`._resample_kernel`: the same passes as one Triton kernel each, reading the taps where they lie
  (``resample_kernel="taps"``) instead of a padded buffer times dense matrices.
* :class:`DeviceEvalTransform`: resize of the shorter side to ``ceil(size / crop_pct)``, center crop,
  normalization, as :func:`~.folders.eval_transforms`.

How this differs from the PIL transforms is in ``docs/training.md`` ("Loaders").
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import _resample_kernel
from .base import IMAGENET_MEAN, IMAGENET_STD, host_to

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM = np.uint64(0xD1B54A32D192ED03)
# the CPU path's six PIL filters, and the radius of each one's kernel (nearest takes one pixel)
PIL_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
_SUPPORT = np.array([0.0, 0.5, 1.0, 1.0, 2.0, 3.0])
CROP_ATTEMPTS = 10
# pixel values (3 per pixel) in one padded crop buffer (512 MB in half precision, about 1 GB with the gather
# and the first pass): 256 crops of up to 560 x 560 px fit in one. A batch with larger crops is resampled in
# parts, so a few very large photos cannot exhaust the GPU's memory; each part costs the host a full set of
# operations, which is what bounds the transform
MAX_BUFFER = 1 << 28
RESAMPLE_KERNELS = ("matmul", "taps")  # how resample() computes its passes (see there)
DEFAULT_RESAMPLE_KERNEL = "taps"  # faster in the loader benchmark (experiments/train_speed, part e)


def uniforms(seeds: Sequence[int], stream: int, count: int) -> np.ndarray:
    """``(len(seeds), count)`` uniforms in [0, 1): a splitmix64 hash of (seed, stream, k); pure functions of
    their arguments."""
    with np.errstate(over="ignore"):
        x = np.asarray(seeds, dtype=np.uint64).reshape(-1, 1) ^ (np.uint64(stream + 1) * _STREAM)
        x = x + (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN).reshape(1, -1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Standard normal numbers from two arrays of uniforms (Box-Muller)."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * math.pi * u2)


def to_device(arrays: Sequence[np.ndarray], device) -> list[torch.Tensor]:
    """float64 copies of ``arrays`` (their shapes kept) on ``device``, in one host-to-device transfer
    (from pinned memory, asynchronous, on CUDA)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    moved = host_to(torch.from_numpy(np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)), device)
    out, start = [], 0
    for a in arrays:
        out.append(moved[start:start + a.size].view(a.shape))
        start += a.size
    return out


def crop_boxes(heights: np.ndarray, widths: np.ndarray, u: np.ndarray, scale, ratio) -> np.ndarray:
    """``(N, 4)`` int boxes (top, left, height, width): torchvision's random-resized-crop sampling (10
    attempts at an area in ``scale`` and a log-uniform aspect ratio in ``ratio``, else a central crop of
    the clamped ratio) from ``u`` of shape ``(N, 4 * CROP_ATTEMPTS)``."""
    h_img, w_img = heights.reshape(-1, 1).astype(np.float64), widths.reshape(-1, 1).astype(np.float64)
    u = u.reshape(len(heights), CROP_ATTEMPTS, 4)
    area = h_img * w_img * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    aspect = np.exp(math.log(ratio[0]) + u[..., 1] * (math.log(ratio[1]) - math.log(ratio[0])))
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    ok = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
    top = np.floor(u[..., 2] * (h_img - h + 1))
    left = np.floor(u[..., 3] * (w_img - w + 1))
    first = ok.argmax(1)
    rows = np.arange(len(heights))
    boxes = np.stack([top[rows, first], left[rows, first], h[rows, first], w[rows, first]], 1)
    # no attempt fitted: the whole image cut to the nearest allowed aspect ratio, centred
    in_ratio = widths / heights
    fw = np.where(in_ratio < ratio[0], widths, np.where(in_ratio > ratio[1], np.round(heights * ratio[1]), widths))
    fh = np.where(in_ratio < ratio[0], np.round(widths / ratio[0]), heights)
    fallback = np.stack([(heights - fh) // 2, (widths - fw) // 2, fh, fw], 1)
    boxes = np.where(ok.any(1, keepdims=True), boxes, fallback)
    return boxes.astype(np.int64)


def _pil_kernel(d: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """PIL's filter kernels (box, triangle, hamming, bicubic a=-0.5, lanczos 3) at distances ``d``, the
    kernel of each element chosen by ``filters`` (an index into :data:`PIL_FILTERS`, broadcast to ``d``)."""
    a = d.abs()
    sinc = torch.sinc(a)  # sin(pi a) / (pi a)
    box = ((d > -0.5) & (d <= 0.5)).to(d.dtype)
    triangle = (1.0 - a).clamp(min=0.0)
    hamming = torch.where(a < 1, sinc * (0.54 + 0.46 * torch.cos(math.pi * a)), torch.zeros_like(a))
    cubic = torch.where(a < 1, (1.5 * a - 2.5) * a * a + 1.0, -0.5 * (((a - 5.0) * a + 8.0) * a - 4.0))
    cubic = torch.where(a < 2, cubic, torch.zeros_like(a))
    lanczos = torch.where(a < 3, sinc * torch.sinc(a / 3), torch.zeros_like(a))
    out = torch.where(filters == 1, box, triangle)
    out = torch.where(filters == 3, hamming, out)
    out = torch.where(filters == 4, cubic, out)
    return torch.where(filters == 5, lanczos, out)


def tap_weights(params: torch.Tensor, centers: torch.Tensor, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of one resampling pass along one axis, as PIL computes them (``ImagingResample``;
    ``ImagingScaleAffine`` for nearest): ``(N, size, taps)`` weights of the input pixels ``first + k``, and
    ``first`` ``(N, size)``.

    ``params`` ``(N, 4)`` per sample: input length, filter scale (the downscaling factor, at least 1),
    filter index, kernel radius in input pixels; ``centers`` ``(N, size)``: where each output pixel sits in
    the input. ``taps`` bounds the input pixels any output pixel reads (more taps add zero weights)."""
    length, filterscale, filters, support = (p.unsqueeze(1) for p in params.unbind(1))
    nearest = filters == 0
    first = torch.where(nearest, centers.floor(), (centers - support + 0.5).floor()).clamp(min=0)
    first = torch.minimum(first, length - 1)
    stop = torch.where(nearest, first + 1, torch.minimum((centers + support + 0.5).floor(), length))
    x = first.unsqueeze(2) + torch.arange(taps, dtype=params.dtype, device=params.device)  # (N, size, taps)
    w = _pil_kernel((x - centers.unsqueeze(2) + 0.5) / filterscale.unsqueeze(2), filters.unsqueeze(2))
    w = torch.where(nearest.unsqueeze(2), (x == first.unsqueeze(2)).to(w.dtype), w) * (x < stop.unsqueeze(2))
    total = w.sum(2, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total), first


def dense_weights(w: torch.Tensor, first: torch.Tensor, padded: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, size, padded)`` pass matrices from :func:`tap_weights`' output (taps past the input carry zero
    weight and land on its last pixel)."""
    n, size, taps = w.shape
    index = (first.long().unsqueeze(2) + torch.arange(taps, device=w.device)).clamp_(max=padded - 1)
    return torch.zeros(n, size, padded, dtype=dtype, device=w.device).scatter_add_(2, index, w.to(dtype))


class PassWeights:
    """The weights of resampling passes kept on the device per key (input length, resized length, offset,
    filter), for each output size, device and dtype: a key is computed once with :func:`tap_weights`, and a
    batch costs a lookup and a scatter instead of evaluating six filter kernels for every sample. A flip
    reverses the output order of the stored weights. A table starts over beyond ``max_keys`` keys or
    ``max_values`` stored weights (very large photos need many taps per key)."""

    def __init__(self, max_keys: int = 1 << 13, max_values: int = 1 << 26):
        self.max_keys, self.max_values = max_keys, max_values
        self._tables: dict[tuple, dict] = {}
        self._lock = threading.Lock()  # a transform may serve two loaders' threads at once
        self.looked_up = self.computed = 0  # keys asked for, and those of them computed (not yet stored)

    def __getstate__(self) -> dict:  # a copy for another process starts empty (and with a lock of its own)
        return dict(max_keys=self.max_keys, max_values=self.max_values)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def passes(self, heights, widths, resized, offsets, flips, filters, size: int, rows: int, cols: int,
               device: torch.device, dtype: torch.dtype, dense: bool = True) -> tuple:
        """The row and column pass matrices ``(N, size, rows)``, ``(N, size, cols)`` of :func:`resample`'s
        arguments (one host-to-device transfer for both); with ``dense=False`` their taps instead, a
        ``(weights (N, size, taps), first (N, size))`` pair per pass."""
        keys = [np.stack([np.rint(a).astype(np.int64) for a in (length, resized[:, k], offsets[:, k], filters)], 1)
                for k, length in enumerate((heights, widths))]
        with self._lock:
            table = self._tables.setdefault((str(device), size, dtype), dict(index={}, w=None, first=None, taps=0))
            found = self._rows(table, np.concatenate(keys), size, device, dtype)
            stored_w, stored_first = table["w"], table["first"]
        n = len(heights)
        moved, flip = to_device([found, np.asarray(flips, dtype=np.float64)], device)
        idx = moved.long()
        flip = flip.bool().view(-1, 1)
        out = []
        for part, padded, flipped in ((idx[:n], rows, None), (idx[n:], cols, flip)):
            w, first = stored_w.index_select(0, part), stored_first.index_select(0, part)
            if flipped is not None:
                w = torch.where(flipped.unsqueeze(2), w.flip(1), w)
                first = torch.where(flipped, first.flip(1), first)
            out.append(dense_weights(w, first, padded, dtype) if dense else (w, first))
        return out[0], out[1]

    def _rows(self, table: dict, keys: np.ndarray, size: int, device, dtype) -> np.ndarray:
        """The table row of every key, computing the keys it lacks (after starting over when they would
        not fit)."""
        index = table["index"]
        rows, new = self._lookup(index, keys)
        full = table["w"] is not None and table["w"].numel() > self.max_values
        if new and (len(index) + len(new) > self.max_keys or full):
            index.clear()
            table.update(w=None, first=None, taps=0)
            rows, new = self._lookup(index, keys)
        if new:
            self._add(table, np.array(list(new), dtype=np.int64), size, device, dtype)
            index.update(new)
        self.looked_up += len(keys)
        self.computed += len(new)
        return rows

    @staticmethod
    def _lookup(index: dict, keys: np.ndarray) -> tuple[np.ndarray, dict]:
        """Rows of ``keys`` in ``index``, and the keys it lacks with the rows they will take."""
        rows, new = np.empty(len(keys), dtype=np.int64), {}
        for k, key in enumerate(map(tuple, keys.tolist())):
            row = index.get(key)
            if row is None:
                row = new.setdefault(key, len(index) + len(new))
            rows[k] = row
        return rows, new

    @staticmethod
    def _add(table: dict, keys: np.ndarray, size: int, device, dtype) -> None:
        length, resized, offset, filters = keys.T
        params, centers, taps = _axis_params(length, resized, offset, np.zeros(len(keys)), filters, size)
        params, centers = to_device([params, centers], device)
        taps = max(taps, table["taps"])
        w, first = tap_weights(params, centers, taps)
        w, first = w.to(dtype), first.to(torch.int32)
        if table["w"] is not None:
            old = table["w"]
            if old.shape[2] < taps:  # stored keys take zero weights for the new taps
                old = torch.cat([old, old.new_zeros(*old.shape[:2], taps - old.shape[2])], 2)
            w, first = torch.cat([old, w]), torch.cat([table["first"], first])
        table.update(w=w, first=first, taps=taps)


def _axis_params(length: np.ndarray, resized: np.ndarray, offset: np.ndarray, flip: np.ndarray,
                 filters: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For one axis: the ``(N, 4)`` ``params`` and ``(N, size)`` ``centers`` of :func:`tap_weights`
    and its ``taps``. Output ``k`` is pixel ``offset + k`` of the resized axis (``offset + size - 1 - k``
    when flipped)."""
    length = np.asarray(length, dtype=np.float64)
    scale = length / resized
    support = _SUPPORT[filters] * np.maximum(scale, 1.0)
    taps = int(np.max(np.ceil(support) * 2 + 1))
    out = np.arange(size).reshape(1, -1)
    out = np.where(np.asarray(flip).reshape(-1, 1) > 0, size - 1 - out, out) + np.asarray(offset).reshape(-1, 1)
    out = out.astype(np.int64)
    centers = (out + 0.5) * scale.reshape(-1, 1)
    if (filters == 0).any():  # PIL's nearest steps through the output adding the scale: its rounding
        steps = np.repeat(scale.reshape(-1, 1), int(out.max()) + 1, 1)
        steps[:, 0] *= 0.5
        stepped = np.take_along_axis(np.cumsum(steps, 1), out, 1)
        centers = np.where((filters == 0).reshape(-1, 1), stepped, centers)
    params = np.stack([length, np.maximum(scale, 1.0), filters, support], 1)
    return params, centers, taps


class _Flat:
    """A batch's images laid end to end in one flat uint8 tensor, made once per batch, followed by as
    many zeros as the widest image has columns, so a run of ``cols`` pixels from any pixel stays inside."""

    def __init__(self, images: Sequence[torch.Tensor]):
        self.device = images[0].device
        self.sides = np.array([(im.shape[-2], im.shape[-1]) for im in images], dtype=np.int64)
        sizes = 3 * self.sides[:, 0] * self.sides[:, 1]
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        tail = torch.zeros(int(self.sides[:, 1].max()), dtype=torch.uint8, device=self.device)
        self.flat = torch.cat([im.reshape(-1) for im in images] + [tail])

    def crops(self, which: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """The ``boxes`` (top, left, height, width) of images ``which`` in one uint8 buffer ``(N, rows, 3,
        cols)`` (rows, channels, columns; the largest box's size), so the host issues a few operations per
        batch rather than several per image. Every (image, row, channel) of the buffer is one run of
        ``cols`` pixels of the flat tensor, so the gather's index has one entry per run, not per pixel. Past
        a box's own height and width the buffer holds other pixels (rows past its height repeat its last
        row): the resampling passes give them zero weight."""
        top, left, height, width = (boxes[:, k].astype(np.int64) for k in range(4))
        rows, cols = int(height.max()), int(width.max())
        sides = self.sides[which]
        start = self.starts[which] + top * sides[:, 1] + left  # first pixel of each box
        row_off = start[:, None] + np.minimum(np.arange(rows)[None, :], height[:, None] - 1) * sides[:, 1:2]
        plane = np.arange(3)[None, :] * (sides[:, 0] * sides[:, 1])[:, None]
        moved = host_to(torch.from_numpy(np.concatenate([row_off.ravel(), plane.ravel()])), self.device)
        row_t, plane_t = moved[:row_off.size].view(row_off.shape), moved[row_off.size:].view(plane.shape)
        runs = self.flat.unfold(0, cols, 1)  # a view: run k is flat[k:k + cols]
        return runs[row_t[:, :, None] + plane_t[:, None, :]]


def _pass(buffer: torch.Tensor, weights: torch.Tensor, axis: str) -> torch.Tensor:
    """One pass over ``buffer`` ``(N, rows, 3, cols)`` (padded; the weights are zero there):
    ``(N, size, 3, cols)`` for ``rows``, ``(N, rows, 3, size)`` for ``cols``; rounded to pixel levels like
    PIL's uint8 passes."""
    n, rows, _, cols = buffer.shape
    if axis == "rows":  # (N, size, rows) @ (N, rows, 3 * cols): all channels at once thanks to the layout
        out = torch.bmm(weights, buffer.reshape(n, rows, 3 * cols)).view(n, -1, 3, cols)
    else:  # (N, rows * 3, cols) @ (N, cols, size)
        out = torch.bmm(buffer.reshape(n, rows * 3, cols), weights.transpose(1, 2)).view(n, rows, 3, -1)
    return out.add_(0.5).floor_().clamp_(0, 255)  # PIL rounds halves up


def resample(images: Sequence[torch.Tensor], boxes: np.ndarray, resized: np.ndarray, offsets: np.ndarray,
             filters: np.ndarray, flips: np.ndarray, size: int, weights: PassWeights | None = None,
             kernel: str = DEFAULT_RESAMPLE_KERNEL) -> torch.Tensor:
    """PIL's ``image.crop(box).resize(resized, filter)`` cut to ``size`` x ``size`` at ``offsets``, for the
    whole batch: ``(N, 3, size, size)`` float32 pixel levels (integers in [0, 255], as PIL's uint8).

    ``images``: uint8 ``(3, H, W)``; ``boxes`` ``(N, 4)`` (top, left, height, width); ``resized`` and
    ``offsets`` ``(N, 2)`` (rows, columns): the size the box is resized to and where the output starts in
    it; ``filters`` ``(N,)`` indices into :data:`PIL_FILTERS`; ``flips`` ``(N,)``: mirror the columns.
    ``kernel="taps"`` (the default): each pass is one Triton kernel reading its taps where they lie
    (:mod:`._resample_kernel`; CUDA with Triton only, else the matrix form runs), summing in float32.
    ``kernel="matmul"``, the matrix form: the boxes are copied into one padded buffer and each pass is one
    batched matrix product (half precision on CUDA: exact for pixel levels, weights to 11 bits, sums rounded
    to fp16, so a sum within rounding of a half level may land one level from the kernel's). Both round each
    pass to levels like PIL's uint8 passes. PIL resamples the columns first, except when the rows shrink and
    the columns grow: those samples go as a group of their own, and so do parts of a batch whose buffer would
    exceed :data:`MAX_BUFFER` values. ``weights``: the :class:`PassWeights` to look the pass weights up in (a
    transform keeps one across batches; default a new one)."""
    resized, offsets = np.asarray(resized), np.asarray(offsets)
    filters, flips = np.asarray(filters), np.asarray(flips)
    rows_first = (resized[:, 0] < boxes[:, 2]) & (resized[:, 1] > boxes[:, 3])
    groups = [g for g in (np.nonzero(~rows_first)[0], np.nonzero(rows_first)[0]) if len(g)]
    groups = [g[part] for g in groups for part in size_parts(boxes[g])]
    flat, weights = _Flat(images), weights if weights is not None else PassWeights()
    group = _resample_taps if kernel == "taps" and _resample_kernel.available(flat.device) else _resample_group
    parts = [group(flat, g, boxes[g], resized[g], offsets[g], filters[g], flips[g], size, bool(rows_first[g[0]]),
                   weights) for g in groups]
    if len(parts) == 1:
        return parts[0]
    order = host_to(torch.from_numpy(np.argsort(np.concatenate(groups))), parts[0].device)
    return torch.cat(parts).index_select(0, order)


def size_parts(boxes: np.ndarray) -> list[np.ndarray]:
    """Indices of ``boxes`` in parts whose padded buffers hold at most :data:`MAX_BUFFER` values, boxes of
    similar size together (less padding); one part when the whole batch fits."""
    height, width = boxes[:, 2], boxes[:, 3]
    if 3 * len(boxes) * int(height.max()) * int(width.max()) <= MAX_BUFFER:
        return [np.arange(len(boxes))]
    parts, current, widest = [], [], 0
    for i in np.lexsort((width, height)):  # by height, then width: a part's tallest box is its last
        wider = max(widest, int(width[i]))
        if current and 3 * (len(current) + 1) * int(height[i]) * wider > MAX_BUFFER:
            parts.append(np.array(current))
            current, wider = [], int(width[i])
        current.append(i)
        widest = wider
    parts.append(np.array(current))
    return parts


def _pass_dtype(device: torch.device) -> torch.dtype:
    """The resampling passes' weights (and the matrix form's buffer): half precision on CUDA (pixel levels
    exact, weights to 11 bits), float32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def _resample_group(flat: _Flat, which: np.ndarray, boxes: np.ndarray, resized: np.ndarray, offsets: np.ndarray,
                    filters: np.ndarray, flips: np.ndarray, size: int, rows_first: bool,
                    weights: PassWeights) -> torch.Tensor:
    """:func:`resample` of the images ``which`` of ``flat``, which share one pass order, in one buffer."""
    device = flat.device
    height, width = boxes[:, 2].astype(np.int64), boxes[:, 3].astype(np.int64)
    dtype = _pass_dtype(device)
    buffer = flat.crops(which, boxes).to(dtype)  # rows, channels, columns: see _pass
    rows, cols = buffer.shape[1], buffer.shape[3]
    row_w, col_w = weights.passes(height, width, resized, offsets, flips, filters, size, rows, cols, device, dtype)
    if rows_first:
        out = _pass(_pass(buffer, row_w, "rows"), col_w, "cols")
    else:
        out = _pass(_pass(buffer, col_w, "cols"), row_w, "rows")
    return out.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)


def _resample_taps(flat: _Flat, which: np.ndarray, boxes: np.ndarray, resized: np.ndarray, offsets: np.ndarray,
                   filters: np.ndarray, flips: np.ndarray, size: int, rows_first: bool,
                   weights: PassWeights) -> torch.Tensor:
    """:func:`_resample_group` by :func:`._resample_kernel.tap_pass`: the first pass reads the boxes in the
    flat tensor, the second the first's uint8 output."""
    device, n = flat.device, len(which)
    top, left, height, width = (boxes[:, k].astype(np.int64) for k in range(4))
    dtype = _pass_dtype(device)
    rows, cols = weights.passes(height, width, resized, offsets, flips, filters, size, 0, 0, device, dtype,
                                dense=False)
    sides = flat.sides[which]
    base = flat.starts[which] + top * sides[:, 1] + left
    in_flat = np.stack([base, sides[:, 0] * sides[:, 1], sides[:, 1], np.ones(n, np.int64)], 1)
    if rows_first:
        mid = torch.empty(n, 3, size, int(width.max()), dtype=torch.uint8, device=device)
        order = (("rows", rows, width, height), ("cols", cols, np.full(n, size), width))
    else:
        mid = torch.empty(n, 3, int(height.max()), size, dtype=torch.uint8, device=device)
        order = (("cols", cols, height, width), ("rows", rows, np.full(n, size), height))
    in_mid = np.stack([np.arange(n) * mid.stride(0), *(np.full(n, st) for st in mid.stride()[1:])], 1)
    layouts = np.concatenate([np.concatenate([strides, np.stack([kept, length], 1)], 1)
                              for strides, (_, _, kept, length) in zip((in_flat, in_mid), order)])
    layouts = host_to(torch.from_numpy(np.ascontiguousarray(layouts, dtype=np.int64)), device)
    out = torch.empty(n, 3, size, size, dtype=torch.float32, device=device)
    (axis1, (w1, f1), _, _), (axis2, (w2, f2), _, _) = order
    _resample_kernel.tap_pass(flat.flat, layouts[:n], w1, f1, mid, axis1)
    return _resample_kernel.tap_pass(mid, layouts[n:], w2, f2, out, axis2)


class _Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 255] floats to normalized ones, in place."""
        if x.device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            self._cache[x.device] = ((1.0 / (255.0 * std)).to(x.device), (-mean / std).to(x.device))
        scale, shift = self._cache[x.device]
        return x.mul_(scale).add_(shift)


def _filter_index(name: str) -> int:
    if name not in PIL_FILTERS:
        raise ConfigError("interpolation", name, f"one of {', '.join(PIL_FILTERS)}")
    return PIL_FILTERS.index(name)


def _resample_kernel_name(name: str) -> str:
    if name not in RESAMPLE_KERNELS:
        raise ConfigError("gpu_resample", name, f"one of {', '.join(RESAMPLE_KERNELS)}")
    return name


def _sizes(images: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([im.shape[-2] for im in images]), np.array([im.shape[-1] for im in images])


class DeviceEvalTransform:
    """Shorter side to ``ceil(size / crop_pct)`` (``interpolation``), center crop ``size``, normalize; as the
    CPU eval transform. ``__call__(images, seeds, size)``: a list of uint8 ``(3, H, W)`` -> ``(N, 3, S, S)``.
    ``resample_kernel``: how :func:`resample` computes its passes (``matmul`` or ``taps``)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.95, interpolation: str = "bicubic",
                 resample_kernel: str = DEFAULT_RESAMPLE_KERNEL):
        self.crop_pct = crop_pct
        self.filter = _filter_index(interpolation)
        self.kernel = _resample_kernel_name(resample_kernel)
        self.normalize = _Normalize(mean, std)
        self.weights = PassWeights()

    def __call__(self, images: list[torch.Tensor], seeds: Sequence[int], size: int) -> torch.Tensor:
        short = math.ceil(size / self.crop_pct)
        h, w = _sizes(images)
        # torchvision's Resize(int): the shorter side becomes `short`, the longer one is truncated
        new_h = np.where(h <= w, short, (short * h / w).astype(np.int64))
        new_w = np.where(h <= w, (short * w / h).astype(np.int64), short)
        offsets = np.stack([np.round((new_h - size) / 2.0), np.round((new_w - size) / 2.0)], 1)
        boxes = np.stack([np.zeros_like(h), np.zeros_like(w), h, w], 1)
        n = len(images)
        x = resample(images, boxes, np.stack([new_h, new_w], 1), offsets, np.full(n, self.filter), np.zeros(n), size,
                     self.weights, self.kernel)
        return self.normalize(x)


class DeviceTrainTransform:
    """The training transform on the device (see the module docstring); arguments as
    :func:`~.folders.train_transforms`, plus ``resample_kernel`` (:func:`resample`'s ``kernel``).
    ``__call__(images, seeds, size)``."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, randaugment: str | None = None, reprob: float = 0.0,
                 interpolation: str = "random", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 resample_kernel: str = DEFAULT_RESAMPLE_KERNEL):
        names = PIL_FILTERS if interpolation == "random" else (interpolation,)
        self.kernel = _resample_kernel_name(resample_kernel)
        self.filters = np.array([_filter_index(n) for n in names])
        self.scale, self.ratio, self.hflip, self.reprob = tuple(scale), tuple(ratio), hflip, reprob
        fill = tuple(min(255, round(255 * m)) for m in mean)
        self.randaugment = DeviceRandAugment(randaugment, fill) if randaugment else None
        self.normalize = _Normalize(mean, std)
        self.weights = PassWeights()

    def __call__(self, images: list[torch.Tensor], seeds: Sequence[int], size: int) -> torch.Tensor:
        heights, widths = _sizes(images)
        boxes = crop_boxes(heights, widths, uniforms(seeds, 0, 4 * CROP_ATTEMPTS), self.scale, self.ratio)
        u = uniforms(seeds, 1, 2)
        pick = np.minimum((u[:, 0] * len(self.filters)).astype(int), len(self.filters) - 1)
        n = len(images)
        x = resample(images, boxes, np.full((n, 2), size), np.zeros((n, 2)), self.filters[pick],
                     (u[:, 1] < self.hflip).astype(np.float64), size, self.weights, self.kernel)
        if self.randaugment is not None:
            x = self.randaugment(x, seeds)
        x = self.normalize(x)
        if self.reprob > 0:
            x = erase(x, seeds, self.reprob)
        return x


def erase(x: torch.Tensor, seeds: Sequence[int], prob: float, min_area: float = 0.02, max_area: float = 1 / 3,
          min_aspect: float = 0.3) -> torch.Tensor:
    """timm's random erasing (one box, constant zero fill) per sample with probability ``prob``, batch-wise."""
    n, _, h, w = x.shape
    u = uniforms(seeds, 3, 1 + 4 * CROP_ATTEMPTS)
    chosen = u[:, 0] < prob
    u = u[:, 1:].reshape(n, CROP_ATTEMPTS, 4)
    area = (min_area + u[..., 0] * (max_area - min_area)) * h * w
    aspect = np.exp(math.log(min_aspect) + u[..., 1] * (math.log(1 / min_aspect) - math.log(min_aspect)))
    bh, bw = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    ok = (bw < w) & (bh < h)
    first = ok.argmax(1)
    rows = np.arange(n)
    bh, bw = bh[rows, first], bw[rows, first]
    top = np.floor(u[rows, first, 2] * (h - bh + 1))
    left = np.floor(u[rows, first, 3] * (w - bw + 1))
    use = chosen & ok.any(1)
    if not use.any():
        return x
    box = np.stack([top, top + bh, left, left + bw], 1)
    box[~use] = 0
    box_t, = to_device([box], x.device)
    ys = torch.arange(h, device=x.device).view(1, h)
    xs = torch.arange(w, device=x.device).view(1, w)
    rows_in = (ys >= box_t[:, 0:1]) & (ys < box_t[:, 1:2])
    cols_in = (xs >= box_t[:, 2:3]) & (xs < box_t[:, 3:4])
    return x.masked_fill_(rows_in.view(n, 1, h, 1) & cols_in.view(n, 1, 1, w), 0.0)


# ------------------------------------------------------------------------------------------ RandAugment
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_SIGNED = _GEOMETRIC + ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing")
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")


def _op_argument(name: str, level: np.ndarray, sign: np.ndarray, translate_pct: float) -> np.ndarray:
    """The argument of op ``name`` at magnitude ``level`` (0..1 for magnitude 0..10), as timm's level maps."""
    signed = np.where(sign, -1.0, 1.0)
    if name == "Rotate":
        return 30.0 * level * signed
    if name in ("ShearX", "ShearY"):
        return 0.3 * level * signed
    if name in ("TranslateXRel", "TranslateYRel"):
        return translate_pct * level * signed
    if name == "Posterize":
        return np.floor(level * 4)
    if name == "PosterizeIncreasing":
        return 4 - np.floor(level * 4)
    if name == "Solarize":
        return np.minimum(256, np.floor(level * 256))
    if name == "SolarizeIncreasing":
        return 256 - np.minimum(256, np.floor(level * 256))
    if name == "SolarizeAdd":
        return np.minimum(128, np.floor(level * 110))
    if name in _ENHANCE:
        return level * 1.8 + 0.1
    if name.removesuffix("Increasing") in _ENHANCE:
        return np.maximum(0.1, 1.0 + 0.9 * level * signed)
    return np.zeros_like(level)  # AutoContrast, Equalize, Invert


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255)


def _sharpen_base(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (a 3x3 window of ones with 5 at the centre, over 13) inside the border, the image
    itself on it. The window sum is a pooling, not a convolution: with cuDNN autotuning on (as in training)
    a convolution would be benchmarked again for every new number of sharpened images, which varies per batch."""
    window = F.avg_pool2d(x, 3, stride=1, divisor_override=1)  # sums of pixel levels: exact in float32
    out = x.clone()
    out[..., 1:-1, 1:-1] = (window + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return out


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's per-channel histogram equalization."""
    n, c, h, w = x.shape
    q = x.round().clamp(0, 255).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    last = hist.gather(1, q.amax(1, keepdim=True))
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    before = hist.cumsum(1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp(min=1), rounding_mode="floor")
    out = torch.where(step > 0, lut.clamp(max=255).gather(1, q), q.float())
    return out.view(n, c, h, w)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, ((x - lo) * (255.0 / span.clamp(min=1e-6))).floor(), x)


def _color_op(name: str, x: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    a = arg.view(-1, 1, 1, 1)
    base = name.removesuffix("Increasing")
    if base == "Brightness":
        return _blend(torch.zeros_like(x), x, arg)
    if base == "Color":
        return _blend(_gray(x).expand_as(x), x, arg)
    if base == "Contrast":
        return _blend(_gray(x).mean((1, 2, 3), keepdim=True).round().expand_as(x), x, arg)
    if base == "Sharpness":
        return _blend(_sharpen_base(x), x, arg)
    if base == "Posterize":
        step = torch.pow(2.0, 8 - a)
        return torch.where(a >= 8, x, torch.floor(x / step) * step)
    if base == "Solarize":
        return torch.where(x >= a, 255 - x, x)
    if name == "SolarizeAdd":
        return torch.where(x < 128, (x + a).clamp(max=255), x)
    if name == "Invert":
        return 255 - x
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return _equalize(x)
    raise AssertionError(name)


def _affine(name: str, arg: np.ndarray) -> np.ndarray:
    """``(k, 2, 3)`` output -> input maps in normalized coordinates of PIL's affine ops on a square image."""
    k = len(arg)
    theta = np.zeros((k, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if name == "Rotate":  # counter-clockwise about the centre
        rad = np.radians(arg)
        theta[:, 0, 0], theta[:, 0, 1] = np.cos(rad), -np.sin(rad)
        theta[:, 1, 0], theta[:, 1, 1] = np.sin(rad), np.cos(rad)
    elif name in ("ShearX", "ShearY"):  # PIL shears about the top-left corner
        row, col = (0, 1) if name == "ShearX" else (1, 0)
        theta[:, row, col] = arg
        theta[:, row, 2] = arg
    else:  # translation by a fraction of the side
        theta[:, 0 if name == "TranslateXRel" else 1, 2] = 2.0 * arg
    return theta


class DeviceRandAugment:
    """timm's RandAugment (the ops, probabilities and magnitudes its string gives) per sample, batch-wise:
    the samples that drew the same op in a layer go through it together; geometric ops (rotate, shear,
    translate) of a layer share one bicubic ``grid_sample`` with the mean colour as fill."""

    SUPPORTED = _GEOMETRIC + _ENHANCE + tuple(f"{n}Increasing" for n in _ENHANCE) + (
        "Posterize", "PosterizeIncreasing", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "AutoContrast",
        "Equalize", "Invert")

    def __init__(self, spec: str, fill: tuple[int, ...] = (124, 116, 104), translate_pct: float = 0.45):
        from timm.data import rand_augment_transform
        try:
            policy = rand_augment_transform(spec, dict(translate_pct=translate_pct, img_mean=fill))
        except Exception as err:  # noqa: BLE001 - timm asserts on bad strings
            raise ConfigError("randaugment", spec, f"a timm RandAugment string ({err})") from None
        missing = sorted({op.name for op in policy.ops} - set(self.SUPPORTED))
        if missing:
            raise ConfigError("randaugment", spec, f"ops the GPU loader has (not {', '.join(missing)}); use "
                                                   f"--loader cpu")
        self.ops = policy.ops
        self.layers = policy.num_layers
        self.weights = None if policy.choice_weights is None else np.asarray(policy.choice_weights, dtype=np.float64)
        self.translate_pct = translate_pct
        self.fill = torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1)
        self._fills: dict[torch.device, torch.Tensor] = {}

    def choices(self, seeds: Sequence[int]) -> tuple[np.ndarray, ...]:
        """Per sample and layer: op index, applied or not, level (0..1), sign flip; each ``(N, layers)``."""
        u = uniforms(seeds, 2, 5 * self.layers).reshape(len(seeds), self.layers, 5)
        n_ops = len(self.ops)
        if self.weights is None:  # with replacement, uniform
            which = np.minimum((u[..., 0] * n_ops).astype(int), n_ops - 1)
        else:  # weighted, without replacement: the largest keys u^(1/w) (needs layers <= ops)
            keys = np.log(uniforms(seeds, 4, n_ops)) / self.weights
            which = np.argsort(-keys, 1)[:, :self.layers]
        prob = np.array([op.prob for op in self.ops])[which]
        applied = u[..., 1] < prob
        magnitude = np.array([op.magnitude for op in self.ops], dtype=np.float64)[which]
        std = np.array([op.magnitude_std or 0.0 for op in self.ops])[which]
        upper = np.array([op.magnitude_max or 10.0 for op in self.ops])[which]
        drawn = np.where(np.isinf(std), u[..., 2] * magnitude,
                         magnitude + np.where(std > 0, std, 0.0) * normal(u[..., 2], u[..., 3]))
        level = np.clip(drawn, 0.0, upper) / 10.0
        return which, applied, level, u[..., 4] > 0.5

    def __call__(self, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        groups = self._groups(seeds)
        if not groups:
            return x
        # the rows and arguments of every op group reach the device in one transfer
        moved = to_device([a for _, _, rows, arg in groups for a in (rows, arg)], x.device)
        for layer in range(self.layers):
            geometric: list[tuple[torch.Tensor, torch.Tensor]] = []
            for k, (at, name, _, _) in enumerate(groups):
                if at != layer:
                    continue
                idx, arg = moved[2 * k].long(), moved[2 * k + 1].float()
                if name in _GEOMETRIC:
                    geometric.append((idx, arg))
                else:
                    x[idx] = _color_op(name, x.index_select(0, idx), arg)
            if geometric:
                x = self._warp(x, torch.cat([i for i, _ in geometric]), torch.cat([t for _, t in geometric]))
        return x

    def _groups(self, seeds: Sequence[int]) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
        """(layer, op name, rows, argument) for each op a layer applies to some samples; geometric ops
        carry their ``(k, 2, 3)`` affine maps as the argument."""
        which, applied, level, sign = self.choices(seeds)
        groups = []
        for layer in range(self.layers):
            for op_index in np.unique(which[applied[:, layer], layer]):
                rows = np.nonzero(applied[:, layer] & (which[:, layer] == op_index))[0]
                name = self.ops[op_index].name
                arg = _op_argument(name, level[rows, layer], sign[rows, layer], self.translate_pct)
                groups.append((layer, name, rows, _affine(name, arg) if name in _GEOMETRIC else arg))
        return groups

    def _warp(self, x: torch.Tensor, idx: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Samples ``idx`` of ``x`` through the ``(k, 2, 3)`` output -> input maps ``theta`` (bicubic,
        filled with the mean colour)."""
        fill = self._fills.get(x.device)
        if fill is None:
            fill = self._fills[x.device] = self.fill.to(x.device)
        part = x.index_select(0, idx) - fill
        grid = F.affine_grid(theta.to(x.dtype), list(part.shape), align_corners=False)
        warped = F.grid_sample(part, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
        x[idx] = (warped + fill).clamp_(0, 255)
        return x
