"""The training step: forward (autocast), loss, backward, clip by value, optimizer step; eager or as one
CUDA graph.

Graph mode captures the *whole* step once per input shape and replays it afterwards: one launch per step
instead of hundreds, which is what small, low-resolution proxy models are bound by. How it is made safe:

* the optimizer is AdamW with ``capturable=True`` and a device-tensor lr (:func:`~.optim.create_optimizer`),
  so the step count and learning rate live on the GPU and the lr scheduler fills the lr in place;
* warm-up iterations run eagerly on a side stream first (lazy init, cuDNN autotuning, optimizer state),
  then the parameters, buffers and optimizer state are restored from a snapshot, so capturing changes
  nothing;
* once, the captured step is compared with an eager step on the same batch from the same state (loss,
  gradients and the parameter update, within a tolerance for the precision); a mismatch or a failed
  capture falls back to eager steps with a warning recorded in ``info``;
* inputs are copied into static buffers; the returned loss is a static tensor that the next replay
  overwrites (consume it, e.g. add it to a running sum, before the next call).

Graph mode applies to single-process steps without gradient accumulation; others run eagerly.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, Hashable, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (loss, gradients, parameter update): relative errors accepted between a graph replay and an eager step
_CHECK_TOLERANCE = {"fp32": (1e-3, 1e-3, 0.05), "bf16": (2e-2, 3e-2, 0.15), "fp16": (2e-2, 3e-2, 0.15)}

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def is_stochastic(model: nn.Module) -> bool:
    """Whether a training-mode forward of ``model`` draws random numbers (drop path, dropout)."""
    for m in model.modules():
        if isinstance(m, DropPath) and m.drop_prob > 0:
            return True
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
    return False


class TrainStep:
    """Callable ``step(batches, variant=None) -> loss`` for one optimizer step.

    Args:
        model: the raw model (its parameters and buffers are what the optimizer and snapshots touch).
        optimizer: the optimizer over ``model``'s parameters (capturable for graph mode).
        loss_fn: ``loss_fn(logits, target, images) -> scalar``.
        net: what is called for the forward (DDP- or compile-wrapped model); default ``model``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 without a grad scaler is the caller's risk).
        clip_value: clip gradients by value (None: no clipping).
        cuda_graph: capture the step in CUDA graphs (CUDA only).
        check: compare the first replay of each graph with an eager step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                 net: nn.Module | None = None, precision: str = "fp32", clip_value: float | None = None,
                 cuda_graph: bool = False, check: bool = True, warmup_iters: int = 3):
        self.model = model
        self.net = net if net is not None else model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.precision = precision
        self.clip_value = clip_value
        self.device = next(model.parameters()).device
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.check = check
        self.warmup_iters = warmup_iters
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [b for b in model.buffers()]
        self.graphs: dict[Hashable, tuple] = {}
        self.info: dict = {"cuda_graph": "on" if self.cuda_graph else "off", "graph_checks": [], "capture_s": 0.0,
                           # capture_s in parts: eager warm-up steps (cuDNN autotuning), the eager reference
                           # step of the check, the capture itself with one replay, the comparison
                           "capture_parts_s": dict(warmup=0.0, reference=0.0, capture=0.0, compare=0.0)}

    # ------------------------------------------------------------------------------------------ eager
    def _autocast(self, graph: bool = False):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], cache_enabled=not graph)

    def _forward_loss(self, x: torch.Tensor, target: torch.Tensor, graph: bool = False) -> torch.Tensor:
        with self._autocast(graph):
            logits = self.net(x)
            return self.loss_fn(logits, target, x)

    def _clip_and_step(self) -> None:
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)
        self.optimizer.step()

    def eager(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step over ``batches`` (gradient accumulation; DDP syncs on the last one only).

        As in the official trainer, the micro-batch losses are *not* divided by their number: the gradients
        of the summed loss are clipped and stepped (the lr scales with the accumulation instead). Returns the
        mean micro-batch loss."""
        self.optimizer.zero_grad(set_to_none=True)
        n = len(batches)
        total = None
        for i, (x, target) in enumerate(batches):
            sync = i == n - 1 or not hasattr(self.net, "no_sync")
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss = self._forward_loss(x, target)
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        self._clip_and_step()
        return total / n if n > 1 else total

    # ------------------------------------------------------------------------------------------ graphs
    def __call__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], variant: Hashable = None) -> torch.Tensor:
        if not self.cuda_graph or len(batches) != 1:
            return self.eager(batches)
        x, target = batches[0]
        key = (tuple(x.shape), x.stride(), x.dtype, tuple(target.shape), target.dtype, variant)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(x, target)
            if entry is None:  # capture failed or did not match: eager from now on
                return self.eager(batches)
            self.graphs[key] = entry
        graph, static_x, static_t, static_loss = entry
        static_x.copy_(x)
        static_t.copy_(target)
        graph.replay()
        return static_loss

    def invalidate(self) -> None:
        """Drop the captured graphs (e.g. after changing drop-path rates, which capture bakes in)."""
        self.graphs.clear()

    def _snapshot(self):
        with torch.no_grad():
            params = [p.detach().clone() for p in self.params]
            buffers = [b.clone() for b in self.buffers]
            state = {}
            for p in self.params:
                st = self.optimizer.state.get(p)
                if st:
                    state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        return params, buffers, state

    def _restore(self, snap) -> None:
        params, buffers, state = snap
        with torch.no_grad():
            for p, s in zip(self.params, params):
                p.copy_(s)
            for b, s in zip(self.buffers, buffers):
                b.copy_(s)
            for p in self.params:
                st = self.optimizer.state.get(p)
                if not st:
                    continue
                saved = state.get(p)
                for k, v in st.items():
                    if torch.is_tensor(v):
                        v.copy_(saved[k]) if saved is not None else v.zero_()

    def _capture(self, x: torch.Tensor, target: torch.Tensor):
        start = time.perf_counter()
        static_x, static_t = x.clone(), target.clone()
        snap = self._snapshot()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable.*")
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(self.warmup_iters):
                        self.eager([(static_x, static_t)])
                torch.cuda.current_stream(self.device).wait_stream(side)
                self._restore(snap)
                mark = self._part("warmup", start)
                reference = None
                compare = self.check and not is_stochastic(self.model)
                if compare:
                    loss = self.eager([(static_x, static_t)])
                    reference = (loss.float().clone(), [p.grad.float().clone() if p.grad is not None else None
                                                        for p in self.params],
                                 [p.detach().float().clone() for p in self.params])
                    self._restore(snap)
                mark = self._part("reference", mark)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._forward_loss(static_x, static_t, graph=True)
                loss.backward()
                self._clip_and_step()
                static_loss = loss.detach()
            graph.replay()
            mark = self._part("capture", mark)
            if reference is not None:
                errors = self._compare(reference, static_loss, snap)
                self.info["graph_checks"].append(errors)
                tol = _CHECK_TOLERANCE[self.precision]
                if not all(e <= t for e, t in zip(errors, tol)):
                    raise RuntimeError(f"captured step differs from the eager step (relative errors loss "
                                       f"{errors[0]:.2e}, grads {errors[1]:.2e}, update {errors[2]:.2e}; "
                                       f"tolerance {tol})")
            else:
                self.info["graph_checks"].append("skipped (stochastic layers)" if self.check else "off")
            self._restore(snap)
            self._part("compare", mark)
        except Exception as err:  # noqa: BLE001 - any capture problem: fall back to eager, say why
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.device)
            self._restore(snap)
            self.optimizer.zero_grad(set_to_none=True)
            self.cuda_graph = False
            self.info["cuda_graph"] = f"off: {type(err).__name__}: {err}"[:500]
            warnings.warn(f"CUDA-graph training step disabled, running eagerly ({self.info['cuda_graph']})",
                          stacklevel=3)
            return None
        finally:
            self.info["capture_s"] += time.perf_counter() - start
        return graph, static_x, static_t, static_loss

    def _part(self, name: str, since: float) -> float:
        """Add the time since ``since`` (the device synchronized) to capture part ``name``; returns now."""
        torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.info["capture_parts_s"][name] += now - since
        return now

    def _compare(self, reference, static_loss, snap) -> tuple[float, float, float]:
        ref_loss, ref_grads, ref_params = reference
        return step_errors(ref_loss, ref_grads, ref_params, static_loss, [p.grad for p in self.params],
                           [p.detach() for p in self.params], snap[0])


def step_errors(ref_loss: torch.Tensor, ref_grads: Sequence[torch.Tensor | None], ref_params: Sequence[torch.Tensor],
                loss: torch.Tensor, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor],
                initial: Sequence[torch.Tensor]) -> tuple[float, float, float]:
    """Relative errors of a step against a reference step from the same ``initial`` parameters: of the loss,
    of all gradients together (L2) and of the parameter update (L2). The sums stay on the device and are read
    with one synchronization: reading them tensor by tensor waits once per tensor for the GPU's queue, seconds
    when other processes share it."""
    zero = ref_loss.new_zeros((), dtype=torch.float32)
    pairs = [(g.float(), r) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    grad_num = sum(((g - r).pow(2).sum() for g, r in pairs), zero)
    grad_den = sum((r.pow(2).sum() for _, r in pairs), zero)
    upd_num = sum(((p.float() - r).pow(2).sum() for p, r in zip(params, ref_params)), zero)
    upd_den = sum(((r - p0.float()).pow(2).sum() for r, p0 in zip(ref_params, initial)), zero)
    loss_diff = (loss.float() - ref_loss.float()).abs()
    loss_diff, loss_ref, grad_num, grad_den, upd_num, upd_den = torch.stack(
        [loss_diff, ref_loss.float().abs(), grad_num, grad_den, upd_num, upd_den]).tolist()
    loss_err = loss_diff / max(loss_ref, 1e-6)
    grad_err = (grad_num / grad_den) ** 0.5 if grad_den > 0 else 0.0
    upd_err = (upd_num / upd_den) ** 0.5 if upd_den > 0 else 0.0
    return loss_err, grad_err, upd_err
