"""Table of base vs new from experiments/regression/run.sh's output folder (writes OUT/summary.md)."""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def deploy_rows(out: Path, tag: str) -> dict:
    """(model, batch) -> ms of every deploy round of ``tag``, in round order."""
    rows: dict = {}
    for r in _deploy_results(out, tag):
        if r.get("status") == "ok":
            rows.setdefault((r["model"], r["batch"]), []).append(r["ms"])
    return rows


def _deploy_results(out: Path, tag: str):
    """Every row of ``tag``'s deploy rounds, round by round."""
    for folder in sorted((out / tag).glob("deploy_*"), key=lambda p: int(p.name.split("_")[-1])):
        yield from (_json(folder / "results.json") or {"rows": []})["rows"]


def profiles(out: Path, tag: str) -> dict:
    """(model, batch) -> (kernels, kernel us) per forward of the last profiled deploy round of ``tag``."""
    return {(r["model"], r["batch"]): (r["profile"]["kernels_per_forward"], r["profile"]["device_us"])
            for r in _deploy_results(out, tag) if r.get("profile")}


def _ms(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def train_rows(out: Path, tag: str, part: str) -> dict:
    data = _json(out / tag / f"train_{part}" / f"part_{part}.json")
    if data is None:
        return {}
    if part == "a":
        return {r["variant"]: r for r in data["rows"]}
    return {(r["batch"], r["fast_groupnorm"]): r for r in data["results"] if "steady_epoch_train_s" in r}


def table(out: Path) -> str:
    lines = ["# Base vs new, side by side", "",
             f"Commits: base {os.environ.get('BASE_COMMIT', '?')}, new {os.environ.get('NEW_COMMIT', '?')}.",
             "Ratio > 1 means new is faster.", "",
             "| what | base | new | new speed / base |", "|---|---:|---:|---:|"]
    base, new = deploy_rows(out, "base"), deploy_rows(out, "new")
    for key in sorted(base.keys() & new.keys()):
        b, n = statistics.median(base[key]), statistics.median(new[key])
        rounds = f" (median of {len(base[key])} rounds: base {_ms(base[key])}, new {_ms(new[key])})" \
            if len(base[key]) > 1 else ""
        lines.append(f"| deploy {key[0]} batch {key[1]}, ms{rounds} | {b:.3f} | {n:.3f} | {b / n:.3f} |")
    base, new = profiles(out, "base"), profiles(out, "new")
    for key in sorted(base.keys() & new.keys()):
        (bk, bu), (nk, nu) = base[key], new[key]
        lines.append(f"| deploy {key[0]} batch {key[1]}, kernels / kernel us per forward | {bk:.0f} / {bu:.0f} "
                     f"| {nk:.0f} / {nu:.0f} | {bu / nu:.3f} |")
    base, new = train_rows(out, "base", "a"), train_rows(out, "new", "a")
    for key in sorted(base.keys() & new.keys()):
        b, n = base[key]["images_per_s"], new[key]["images_per_s"]
        if b and n:
            lines.append(f"| train step (part a) {key}, img/s | {b:,.0f} | {n:,.0f} | {n / b:.3f} |")
    base, new = train_rows(out, "base", "c"), train_rows(out, "new", "c")
    for key in sorted(base.keys() & new.keys()):
        b, n = base[key]["steady_epoch_train_s"], new[key]["steady_epoch_train_s"]
        lines.append(f"| Fashion-MNIST epoch (part c) batch {key[0]} fast_gn={key[1]}, s | {b:.3f} | {n:.3f} "
                     f"| {b / n:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    out = Path(sys.argv[1])
    text = table(out)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
