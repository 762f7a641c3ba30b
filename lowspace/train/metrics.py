"""Metrics files (JSONL rows, a CSV of the epoch rows) and the rich progress bar."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from ..io import atomic_write_text


class MetricsLog:
    """Appends rows to ``OUT/metrics.jsonl`` and rewrites ``OUT/metrics.csv`` (rows with ``kind ==
    "epoch"``) atomically. Disabled (no files) on non-main ranks."""

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.csv = self.out_dir / "metrics.csv"

    def rows(self) -> list[dict]:
        if not self.jsonl.is_file():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                continue
        return out

    def truncate(self, step: int) -> None:
        """Forget rows logged after optimizer step ``step`` (a resumed run logs them again)."""
        if not self.enabled or not self.jsonl.is_file():
            return
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        self.write_csv()

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        if row.get("kind") == "epoch":
            self.write_csv()

    def write_csv(self) -> None:
        rows = [r for r in self.rows() if r.get("kind") == "epoch"]
        if not rows:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv, buf.getvalue())


class TrainProgress:
    """A rich progress bar over optimizer steps showing loss, lr, images/s and the ETA (or nothing)."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, description: str = "train"):
        self.enabled = enabled
        self.progress = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), transient=False)
            self.task = self.progress.add_task(description, total=total, completed=done, stats="")
        self.last_time = time.perf_counter()
        self.last_images = 0

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def update(self, step: int, images: int, loss: float | None = None, lr: float | None = None,
               description: str | None = None) -> float:
        """Move to ``step``; returns images/s since the last update (``images`` is a running total)."""
        now = time.perf_counter()
        rate = (images - self.last_images) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_images = now, images
        if self.progress is not None:
            parts = []
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            if lr is not None:
                parts.append(f"lr {lr:.2e}")
            parts.append(f"{rate:,.0f} img/s")
            fields = dict(stats="  ".join(parts))
            if description:
                fields["description"] = description
            self.progress.update(self.task, completed=step, **fields)
        return rate
