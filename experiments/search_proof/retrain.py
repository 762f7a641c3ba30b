"""Train reference presets and searched architectures with the short and the full proxy schedule, and time
them all on the search's latency protocol (one GPU).

Which architectures (chosen by rule, never by hand):
  * the presets B0, B1, B1.5, B3, E1, E2, E3 (reference points);
  * every Pareto-optimal complete trial of the Pareto study (at most --max-front, spread evenly along the
    front by latency);
  * --random-picks trials of the random-search study at evenly spaced latency quantiles (an unbiased sample
    for the proxy calibration: the Pareto picks were selected on the short proxy).
Architectures retrained by an earlier run of this script (rows in --resume that the current picks no longer
include, e.g. the picks of a first run on the studies at 36 trials) stay in, rebuilt from their trial, so
they are timed with the rest. Each gets the short schedule (the one the search used; skipped where the
study already has it for the same arch_id) and the full schedule (FULL below). Training runs in --jobs
processes sharing the GPU; the latency of every architecture is then timed alone, one at a time, on an idle
GPU.

    python3 experiments/search_proof/retrain.py --out experiments/search_proof/results/retrain \
        --resume experiments/search_proof/results/retrain/rows.jsonl --jobs 5

Rows go to OUT/rows.jsonl as they finish (a rerun with --resume skips finished rows).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

PRESETS = ["b0", "b1", "b15", "b3", "e1", "e2", "e3"]
# The full proxy schedule: the same for every architecture (10 epochs, all 60k Fashion-MNIST images, 64 px).
FULL = dict(epochs=10, resolutions=[64], batch_size=256, base_lr=2e-3, warmup_epochs=1.0, fast_groupnorm=False)


def pick_archs(pareto_db: str, random_db: str, max_front: int, random_picks: int,
               earlier: list[dict] = ()) -> list[dict]:
    import optuna

    from lowspace.arch import get_preset
    from lowspace.report import pareto_trials, trial_config
    from lowspace.search.settings import SearchConfig

    out = [dict(name=p, source="preset", config=get_preset(p).to_dict(), short_top1=None) for p in PRESETS]
    short = SearchConfig.from_yaml(HERE / "pareto.yaml").proxy

    def add(trial, source):
        cfg = trial_config(trial)
        out.append(dict(name=f"{source}{trial.number}", source=source, config=cfg.to_dict(),
                        short_top1=trial.user_attrs.get("accuracy")))

    pareto = optuna.load_study(study_name="pareto", storage=pareto_db)
    front = sorted(pareto_trials(pareto), key=lambda t: t.values[1])
    if len(front) > max_front:
        idx = sorted({round(i * (len(front) - 1) / (max_front - 1)) for i in range(max_front)})
        front = [front[i] for i in idx]
    for t in front:
        add(t, "pareto")
    rnd = optuna.load_study(study_name="random", storage=random_db)
    done = sorted((t for t in rnd.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.values[1])
    if done and random_picks:
        idx = sorted({round(i * (len(done) - 1) / max(1, random_picks - 1)) for i in range(random_picks)})
        for i in idx:
            add(done[i], "random")
    studies = {"pareto": pareto, "random": rnd}
    for name in dict.fromkeys(r["name"] for r in earlier):
        source = name.rstrip("0123456789")
        if source in studies and name != source:
            add(studies[source].trials[int(name[len(source):])], source)
            out[-1]["earlier"] = True
    # Known short accuracies from the Pareto study (presets were enqueued there) for the same arch_id.
    from lowspace import ArchConfig
    by_id = {}
    for t in pareto.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and "arch_id" in t.user_attrs:
            by_id.setdefault(t.user_attrs["arch_id"], t.user_attrs.get("accuracy"))
    seen = set()
    unique = []
    for row in out:
        aid = ArchConfig.from_dict(row["config"]).arch_id
        if aid in seen:
            continue
        seen.add(aid)
        row["arch_id"] = aid
        if row["short_top1"] is None:
            row["short_top1"] = by_id.get(aid)
        unique.append(row)
    return unique, short


def _recipe_fields(schedule: dict) -> dict:
    """A proxy schedule as recipe fields (the studies recorded ``resolution`` and ``lr``, since renamed)."""
    out = dict(schedule)
    if "resolution" in out:
        res = out.pop("resolution")
        out["resolutions"] = None if res in (None, "arch") else [res]
    if "lr" in out:
        out["base_lr"] = out.pop("lr")
    return out


def _train_job(args):
    row, schedule_name, schedule, data_root = args
    import torch

    from lowspace import ArchConfig
    from lowspace.data import get_dataset
    from lowspace.train import train_proxy
    cfg = ArchConfig.from_dict(row["config"])
    t = time.perf_counter()
    data = get_dataset("fashion_mnist", root=data_root or None)
    res = train_proxy(cfg, data, _recipe_fields(schedule), "cuda" if torch.cuda.is_available() else "cpu")
    return dict(name=row["name"], arch_id=row["arch_id"], schedule=schedule_name, top1=res.top1,
                best_top1=res.best_top1, history=[h.get("top1") for h in res.history], wall_s=time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pareto-db", default="sqlite:///experiments/search_proof/studies/pareto.db")
    ap.add_argument("--random-db", default="sqlite:///experiments/search_proof/studies/random.db")
    ap.add_argument("--data-root", default=".fmnist")
    ap.add_argument("--max-front", type=int, default=6)
    ap.add_argument("--random-picks", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--resume", default=None, help="an earlier rows.jsonl: finished rows are skipped")
    ap.add_argument("--time-only", action="store_true", help="no training: only time the architectures")
    ap.add_argument("--smoke", action="store_true", help="tiny schedules (a CPU check of the script only)")
    args = ap.parse_args(argv)
    if args.smoke:
        FULL.update(epochs=1, warmup_epochs=0.5, resolutions=[32], train_per_class=30, val_per_class=10)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = [json.loads(line) for line in Path(args.resume).read_text().splitlines()] \
        if args.resume and Path(args.resume).exists() else []
    archs, short = pick_archs(args.pareto_db, args.random_db, args.max_front, args.random_picks, earlier)
    if args.smoke:
        short.update(FULL)
    (out / "archs.json").write_text(json.dumps(dict(archs=archs, short=short, full=FULL), indent=1))
    rows_path = out / "rows.jsonl"
    own = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    if earlier and Path(args.resume).resolve() != rows_path.resolve():  # carry the earlier rows over
        with rows_path.open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in earlier)
    done = {(r["arch_id"], r["schedule"]) for r in [*earlier, *own]}
    jobs = [(a, "full", FULL, args.data_root) for a in archs if (a["arch_id"], "full") not in done]
    jobs += [(a, "short", short, args.data_root) for a in archs
             if a["short_top1"] is None and (a["arch_id"], "short") not in done]
    if args.time_only:
        jobs = []
    print(f"{len(archs)} architectures, {len(jobs)} training jobs", flush=True)
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for r in pool.imap_unordered(_train_job, jobs):
            with rows_path.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"[{time.perf_counter() - start:6.0f}s] {r['name']:>10} {r['schedule']:>5} top1 {r['top1']:.2f} "
                  f"({r['wall_s']:.0f}s)", flush=True)

    # Latency and throughput on the search's protocol, one architecture at a time on the idle GPU.
    import torch

    from lowspace import ArchConfig
    from lowspace.cost.count import count_macs, count_params
    from lowspace.cost.measure import measure
    from lowspace.search.settings import SearchConfig
    p = SearchConfig.from_yaml(HERE / "pareto.yaml").protocol
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from lowspace.cost.measure import warm_up
    warm_up(device, (p.precision,), (1, p.batch_size), p.backend, p.channels_last)
    cost = []
    for a in archs:
        cfg = ArchConfig.from_dict(a["config"])
        m200 = measure(cfg, device=device, batch_size=p.batch_size, precision=p.precision,
                       channels_last=p.channels_last, backend=p.backend if device == "cuda" else "eager",
                       cudnn_benchmark=p.cudnn_benchmark, cache=False)
        m1 = measure(cfg, device=device, batch_size=1, precision=p.precision, channels_last=p.channels_last,
                     backend=p.backend if device == "cuda" else "eager", cudnn_benchmark=p.cudnn_benchmark,
                     cache=False)
        cost.append(dict(name=a["name"], arch_id=a["arch_id"], source=a["source"], short_top1=a["short_top1"],
                         params=count_params(cfg), macs=count_macs(cfg, resolution=cfg.resolution),
                         latency_ms=m200.median_ms, latency_spread=m200.spread, images_per_s=m200.images_per_s,
                         batch1_ms=m1.median_ms, batch1_spread=m1.spread, fingerprint=m200.fingerprint,
                         protocol=m200.protocol))
        print(f"{a['name']:>10} {m200.median_ms:8.3f} ms/200 ({m200.images_per_s:,.0f} img/s)  "
              f"b1 {m1.median_ms:.3f} ms", flush=True)
    (out / "cost.json").write_text(json.dumps(cost, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
