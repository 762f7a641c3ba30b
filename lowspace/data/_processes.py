"""The GPU loader spread over processes: each decodes and transforms every N-th micro-batch with a decoder and
an interpreter of its own, and hands the batch to the training process (CUDA IPC on the GPU, shared memory
on the CPU). One process's decoder takes a process-wide lock and its transform runs Python between kernel
launches, so a single process cannot keep a fast step fed; ``N`` processes can, when the host has the cores.

The batches arrive in the order of the single-process loader, identical to it (each sample's augmentation
is seeded by ``(seed, epoch, index)``, whichever process makes it). The processes start with the first epoch
and serve every later one.
"""
from __future__ import annotations

import os
import queue
import sys
import traceback
import weakref
from collections import deque
from typing import Iterator

import torch
import torch.multiprocessing as mp

from .base import DataError

_POLL_S = 1.0  # how often a waiting consumer checks that the process it waits on is alive


def _serve(part: int, parts: int, make_loader, commands, results, stop) -> None:
    """A loader process: for each ``(epoch, start)`` command, this part's batches, then ``("done",)`` (or
    the error that ended them)."""
    torch.set_num_threads(1)
    loader = make_loader()
    reported = 0
    while (command := commands.get()) is not None:
        epoch, start = command
        try:
            for x, y in loader.epoch(epoch, start, part=(part, parts)):
                # the decode thread may record a skip at any moment: count exactly what is sent
                new = loader.skipped[reported:]
                reported += len(new)
                results.put(("batch", x, y, new))
                x = y = None
                if stop.is_set():
                    break
            results.put(("done",))
        except DataError as err:
            results.put(("data_error", str(err)))
        except BaseException as err:  # noqa: BLE001 - reported to the training process, which raises it
            results.put(("error", f"{type(err).__name__}: {err}", traceback.format_exc()[-2000:]))


def _run_process(part: int, parts: int, make_loader, commands, results, stop) -> None:
    """A loader process's entry point: :func:`_serve`, then an exit that skips the C++ exit handlers.

    CUDA IPC keeps each block sent to the training process alive here until it is released; a normal exit frees
    what is left from C++ exit handlers, which can run after the CUDA driver began shutting down (seen under
    MPS) and then abort the process with a trace. By then the work is done and the queue flushed, and the
    driver frees the process's memory itself."""
    code = 0
    try:
        _serve(part, parts, make_loader, commands, results, stop)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        results.close()
        results.join_thread()
    except BaseException:  # noqa: BLE001 - printed, then the exit code says it
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class LoaderProcesses:
    """``parts`` processes serving a :class:`~.gpu_decode.DeviceFolderLoader` (``loader``, whose copy each
    process gets). :meth:`epoch` yields ``(x, y)`` as the loader's own ``epoch`` does."""

    def __init__(self, loader, parts: int):
        self.loader, self.parts = loader, parts
        self.cuda = loader.device.type == "cuda"
        context = mp.get_context("spawn")  # CUDA cannot be used in a forked child
        self.stop = context.Event()
        self.commands = [context.SimpleQueue() for _ in range(parts)]
        self.results = [context.Queue(maxsize=loader.prefetch) for _ in range(parts)]
        make_loader = loader.for_process(parts)
        self.processes = [context.Process(target=_run_process, name=f"lowspace-loader-{k}", daemon=True,
                                          args=(k, parts, make_loader, self.commands[k], self.results[k], self.stop))
                          for k in range(parts)]
        for p in self.processes:
            p.start()
        self._finalizer = weakref.finalize(self, _shut_down, self.processes, self.commands)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's ``(x, y)`` of ``epoch`` from micro-batch ``start`` on, taken from the processes in turn."""
        self.stop.clear()
        for c in self.commands:
            c.put((epoch, start))
        held: deque = deque()  # received batches kept until the GPU work that reads them has finished
        finished = set()
        try:
            k = 0
            while True:
                item = self._get(k, finished)
                if item[0] == "done":
                    return
                _, x, y, skipped = item
                self._note_skipped(skipped)
                yield x, y
                self._release(held, x, y)
                k = (k + 1) % self.parts
        finally:
            self.stop.set()
            self._drain(finished)  # on CUDA it ends with a device synchronize, so nothing reads the held batches
            held.clear()

    def _get(self, k: int, finished: set[int]):
        """The next item of process ``k`` (``k`` joins ``finished`` at its end mark); a failure there is raised
        here, naming the process."""
        process = self.processes[k]
        while True:
            try:
                item = self.results[k].get(timeout=_POLL_S)
                break
            except queue.Empty:
                pass
            except (OSError, EOFError):  # a batch whose sender died cannot be passed on
                process.join(timeout=_POLL_S)
                if process.is_alive():
                    raise
            if not process.is_alive():
                finished.add(k)
                raise RuntimeError(f"loader process {process.name} exited (code {process.exitcode}) "
                                   f"before finishing the epoch")
        if item[0] != "batch":
            finished.add(k)
        if item[0] == "data_error":
            raise DataError(item[1])
        if item[0] == "error":
            raise RuntimeError(f"loader process {self.processes[k].name} failed: {item[1]}\n{item[2]}")
        return item

    def _note_skipped(self, skipped: list[str]) -> None:
        for path in skipped:
            if path not in self.loader.skipped:
                self.loader.skipped.append(path)

    def _release(self, held: deque, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep ``(x, y)`` until the work queued on them is done: the sending process may reuse the memory as
        soon as the last reference here is dropped, even while a kernel here still reads it."""
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.loader.device))
        held.append((x, y, event))
        while held and (held[0][2] is None or held[0][2].query()):
            held.popleft()
        if len(held) > 2 * self.loader.prefetch + 4:  # bounded: the senders cannot run ahead without limit
            held.popleft()[2].synchronize()

    def _drain(self, finished: set[int]) -> None:
        """After an epoch (whole or stopped early): read every process's remaining items up to its end mark,
        so the next epoch starts clean."""
        for k in range(self.parts):
            while k not in finished:
                try:
                    self._get(k, finished)  # adds k at its end mark, its error or its death
                except (DataError, RuntimeError, OSError, EOFError):
                    pass
        if self.cuda:
            torch.cuda.synchronize(self.loader.device)

    def close(self) -> None:
        self._finalizer()


def _shut_down(processes, commands) -> None:
    for p, c in zip(processes, commands):
        if p.is_alive():
            c.put(None)
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
