"""Running a calibration's training jobs: the adapters to the training, data and cost engines (every call
into them is in this module's first section), the resumable row store, and the worker processes."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import ConfigError, LowspaceError
from ..provenance import utc_timestamp


# ==================================================================== adapters to the other engines
# the schedule fields the calibration itself reads or writes (fields of the proxy training recipe)
EPOCHS, WARMUP, IMAGES, RESOLUTIONS, LR = "epochs", "warmup_epochs", "train_per_class", "resolutions", "base_lr"
SEED, VAL_CAP, EVAL_EVERY = "seed", "val_per_class", "eval_every"


def make_schedule(options: Mapping[str, Any], where: str):
    """A validated proxy training recipe from a mapping of changed fields; errors name ``where.<field>``."""
    from ..train import proxy_recipe
    return proxy_recipe(dict(options), path=where)


def schedule_options(schedule) -> dict:
    """Every field of a schedule as plain values (lists for tuples), without its name."""
    options = schedule.to_dict()
    options.pop("name", None)
    return options


def train_once(cfg, data, options: Mapping[str, Any], device: str) -> dict:
    """Train ``cfg`` on ``data`` with the schedule ``options``; top-1/top-5 on the data's val split."""
    from ..train import train_proxy
    result = train_proxy(cfg, data, make_schedule(options, "schedule"), device)
    return dict(top1=result.top1, top5=result.top5, best_top1=result.best_top1, epochs_run=result.epochs_run,
                train_s=result.train_s, trained_params=result.info.get("params"),
                diverged=bool(result.info.get("diverged")),
                # where the time outside the training steps went (set-up, CUDA-graph capture, evaluation)
                **{k: result.info.get(k) for k in ("setup_s", "capture_s", "capture_parts_s", "eval_s", "total_s")})


def load_data(options: Mapping[str, Any]):
    """The data set named by a search config's ``data`` section (``dataset`` plus loader options)."""
    from ..data import get_dataset
    opts = dict(options)
    return get_dataset(opts.pop("dataset", "fashion_mnist"), **opts)


def count_cost(cfg, resolution: int | None) -> tuple[int, int]:
    """(parameters, MACs at ``resolution``) of an ArchConfig."""
    from ..cost.count import count_macs, count_params
    return int(count_params(cfg)), int(count_macs(cfg, resolution=resolution or cfg.resolution))


def environment(device: str) -> dict:
    """The environment fingerprint of ``device`` (versions, device model, driver)."""
    from ..cost.fingerprint import fingerprint
    return fingerprint(device)


# ==================================================================== the held-out validation split
def validation_split(data, per_class: int, seed: int):
    """``data`` with its val split replaced by ``per_class`` training images of each class (seeded) and its
    train split by the rest (:func:`lowspace.data.hold_out`, as the search's proxy); the data set's own
    val/test split is not used."""
    from ..data import hold_out
    return hold_out(data, per_class, seed=seed)


def data_identity(data, per_class: int, seed: int) -> str:
    """A short hash of the images, labels and held-out split a run sees, whatever path they were read from
    (so rows stay valid when the data set moves)."""
    digest = hashlib.sha256(json.dumps([data.name, list(data.classes), data.in_chans, per_class, seed]).encode())
    digest.update(bytes(str(data.train.label_list()), "ascii"))
    images = getattr(data.train, "images", None)
    if images is not None:
        digest.update(images.contiguous().cpu().numpy().tobytes())
    else:
        digest.update("\n".join(os.path.relpath(p, data.train.root) for p, _ in data.train.samples).encode())
    return digest.hexdigest()[:16]


def class_counts(data) -> list[int]:
    """Training images per class."""
    counts = [0] * data.num_classes
    for label in data.train.label_list():
        counts[label] += 1
    return counts


# ==================================================================== jobs and rows
@dataclass(frozen=True)
class Job:
    """One training run: an architecture on a schedule with a seed."""

    arch: str
    arch_id: str
    config: dict
    schedule: str
    options: dict
    seed: int
    key: str


def job_key(arch_id: str, options: Mapping[str, Any], seed: int, data_key: str) -> str:
    """The identity of a run: architecture, schedule values, seed and data; equal keys = the same run.
    Fields at the training recipe's default value are left out, so that a field added to the recipe later
    (at a default that changes nothing) keeps the rows of an unfinished calibration valid; a changed
    default changes the key of every run that relied on it."""
    defaults = _recipe_defaults()
    changed = {k: v for k, v in options.items() if k not in defaults or _plain(v) != defaults[k]}
    blob = json.dumps([arch_id, changed, seed, data_key], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _plain(value: Any) -> Any:
    """Tuples as lists (the rows store JSON)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@lru_cache(maxsize=1)
def _recipe_defaults() -> dict[str, Any]:
    return {k: _plain(v) for k, v in schedule_options(make_schedule({}, "defaults")).items()}


class RowStore:
    """A JSONL file of finished runs, appended one line at a time under a file lock (several processes or
    machines may append); a line torn by a kill is ignored on reading and sealed before the next append."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.read() if r.get("status") == "ok" and "key" in r}

    def append(self, row: Mapping[str, Any]) -> None:
        from filelock import FileLock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True, default=str, allow_nan=False) + "\n"
        with FileLock(str(self.path) + ".lock"):
            with open(self.path, "a+b") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())


# ==================================================================== one job, in whichever process runs it
_STATE: dict[str, Any] = {}


def _init_worker(devices: list[str], counter, threads: int, data_spec: dict, store: str, shared_by: int) -> None:
    """Pin this worker process to a device (round robin over ``devices``) and a share of the CPU threads."""
    import torch
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = devices[index % len(devices)]
    torch.set_num_threads(max(1, threads))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        _warm_up(device)
    _STATE.update(device=device, data_spec=data_spec, store=RowStore(store), shared_by=shared_by)


def _warm_up(device: str) -> None:
    """Create the CUDA context and the cuDNN / cuBLAS handles, so the first run's time does not include them."""
    import torch
    x = torch.randn(2, 8, 16, 16, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv(x).float().square().mean().backward()
    torch.cuda.synchronize(device)


def _worker_data(spec: dict):
    """The data set of ``spec``, loaded once per worker and checked to be the one the runs are keyed by."""
    key = json.dumps(spec, sort_keys=True, default=str)
    if _STATE.get("data_key") != key:
        data = load_data(spec["data"])
        if data_identity(data, spec["val_per_class"], spec["split_seed"]) != spec["identity"]:
            raise LowspaceError(f"data {spec['data']}: a worker read other images than the calibration planned "
                                f"with (did the data change while it ran?)")
        _STATE.update(data=validation_split(data, spec["val_per_class"], spec["split_seed"]), data_key=key)
    return _STATE["data"]


def run_job(job: Job, device: str | None = None, data=None, data_spec: dict | None = None,
            store: RowStore | None = None) -> dict:
    """Train one job, append its row to the store (status ``failed`` with the error if training raised) and
    return it. The worker writes the row itself, so a job that finishes is kept whatever the parent does."""
    import torch

    from .. import __version__
    from ..provenance import provenance
    from ..arch.config import ArchConfig
    device = device or _STATE["device"]
    if data is None:
        data = _worker_data(data_spec or _STATE["data_spec"])
    cuda = device.startswith("cuda")
    row = dict(key=job.key, arch=job.arch, arch_id=job.arch_id, config=job.config, schedule=job.schedule,
               schedule_config=job.options, seed=job.seed, device=device,
               runs_sharing_device=_STATE.get("shared_by", 1), lowspace_version=__version__,
               data=data.describe(), validation=data.info.get("validation"))
    try:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        metrics = train_once(ArchConfig.from_dict(job.config), data, job.options, device)
        if cuda:
            torch.cuda.synchronize(device)
        row.update(metrics, gpu_s=time.perf_counter() - start)
        ok = metrics["top1"] is not None and math.isfinite(metrics["top1"]) and not metrics["diverged"]
        row.update(status="ok" if ok else "failed", error=None if ok else "training diverged")
    except Exception as err:  # noqa: BLE001 - recorded in the row; the calibration goes on
        text = str(err).strip().splitlines()
        row.update(status="failed", error=f"{type(err).__name__}: {text[0][:500] if text else ''}")
        if cuda:
            torch.cuda.empty_cache()
    row.update(fingerprint=environment(device), provenance=provenance(),
               finished_at=utc_timestamp())
    row = _finite(row)
    (store or _STATE["store"]).append(row)
    return row


def _finite(row: dict) -> dict:
    """NaN / inf metrics become None (the rows are strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# ==================================================================== running many jobs
def worker_devices(device: str) -> list[str]:
    """The devices workers are pinned to: every visible GPU for ``cuda``, else the one device given."""
    import torch
    if device == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("--device", device, "no CUDA device is visible; use cpu or auto")
        return [f"cuda:{i}" for i in range(n)]
    return [device]


def run_jobs(jobs: Iterable[Job], store: RowStore, devices: list[str], workers: int, data_spec: dict,
             data=None, time_limit_s: float | None = None,
             on_row: Callable[[dict, int, int], None] | None = None) -> dict[str, int]:
    """Run ``jobs`` in order (one worker: in this process on ``devices[0]``; else ``workers`` spawned
    processes pinned to ``devices`` round robin), each appending its row to ``store`` as it finishes. No job
    starts after ``time_limit_s``. Returns counts: ran, failed, left (not started)."""
    jobs = list(jobs)
    counts = dict(ran=0, failed=0, left=0)
    start = time.monotonic()

    def out_of_time() -> bool:
        return time_limit_s is not None and time.monotonic() - start >= time_limit_s

    def record(row: dict) -> None:
        counts["ran"] += 1
        counts["failed"] += row["status"] != "ok"
        if on_row is not None:
            on_row(row, counts["ran"], len(jobs))

    if workers == 1:
        if devices[0].startswith("cuda"):
            _warm_up(devices[0])
        for i, job in enumerate(jobs):
            if out_of_time():
                counts["left"] = len(jobs) - i
                break
            record(run_job(job, devices[0], data=data, data_spec=data_spec, store=store))
        return counts
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = list(reversed(jobs))
    running: set[Future] = set()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(devices, ctx.Value("i", 0), threads, data_spec, str(store.path),
                                       math.ceil(workers / len(devices)))) as pool:
        try:
            while pending or running:
                while pending and len(running) < workers and not out_of_time():
                    running.add(pool.submit(run_job, pending.pop()))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        record(future.result())
                    except BrokenProcessPool as err:
                        raise LowspaceError(f"a training worker process died ({err}); the finished runs are "
                                            f"kept: re-run to continue") from None
        except BaseException:
            for future in running:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    counts["left"] = len(pending)
    return counts
