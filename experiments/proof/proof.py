"""The phases of the proof (README.md), each resumable and using only lowspace's API and CLI.

    python experiments/proof/proof.py PHASE --results DIR [--smoke] [--deadline UNIX_S] [--shard K/N] [--data D]

PHASE: speed (a), train (b), search (c), front (d), report (e). ``rules.yaml`` fixes every choice; ``--smoke``
applies its ``smoke:`` section. A phase skips what its results already hold and starts nothing new after
``--deadline``; ``--shard K/N`` makes this process take every N-th run of train and front and every N-th study
of search (several GPUs).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


# ======================================================================== rules, records, time
def load_rules(smoke: bool) -> dict:
    rules = yaml.safe_load((HERE / "rules.yaml").read_text())
    overrides = rules.pop("smoke")
    return {**rules, **overrides} if smoke else rules


def record(device: str | None) -> dict:
    """What every result file carries: lowspace's provenance and the environment fingerprint of ``device``
    (None or auto: CUDA where present)."""
    import torch

    from lowspace.cost.fingerprint import fingerprint
    from lowspace.provenance import provenance
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return dict(provenance=provenance(), fingerprint=fingerprint(device))


def write_json(path: Path, data) -> None:
    from lowspace.io import atomic_write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


class Clock:
    """Whether new work may start (before the deadline) and which runs are this process's (its shard)."""

    def __init__(self, deadline: float | None, shard: str):
        self.deadline = deadline
        k, n = (int(v) for v in shard.split("/"))
        self.k, self.n = k, n

    def open(self) -> bool:
        return self.deadline is None or time.time() < self.deadline

    def left_s(self) -> float | None:
        return None if self.deadline is None else max(1.0, self.deadline - time.time())

    def mine(self, index: int) -> bool:
        return index % self.n == self.k


def say(text: str) -> None:
    print(f"[proof] {text}", flush=True)


# ======================================================================== a: speed
def bench_args(models: list[str], speed: dict, group: str, timm_model: bool) -> list[str]:
    """``lowspace bench`` arguments of models under one protocol group (``graph``: the backends of rules.yaml;
    ``deploy``: lowspace.deploy under its deploy_backends)."""
    args = ["bench", *models, "-b", *map(str, speed["batch_sizes"]), "--img-size", str(speed["resolution"]),
            "--precision", speed["precision"], "--device", speed["device"], "--no-cache", "--no-fvcore",
            "--no-progress"]
    args += ["--target-spread", str(speed["target_spread"])] if speed.get("target_spread") else []
    args += ["--channels-last"] if speed["channels_last"] else []
    deploy = group == "deploy"
    args += ["--backend", *speed["deploy_backends" if deploy else "backends"]] + (["--deploy"] if deploy else [])
    args += ["--reparam"] if timm_model and speed.get("reparam_peers") else []
    args += ["--max-time", str(speed["max_time_s"])] if speed.get("max_time_s") else []
    return args


def row_file(out: Path, name: str, group: str) -> Path:
    return out / "speed" / "rows" / f"{name}__{group}.json"


def prebuild(entries: list[tuple[str, str, str, bool]], rules: dict, out: Path, clock: Clock) -> None:
    """The compiled rows of the (name, model, group, is timm) entries not timed yet, built ``speed.prebuild`` at
    once before the timing (``lowspace bench --prebuild-only``, one call per kind of arguments), so that the
    timed builds come from inductor's disk cache. Their cold build times go to ``speed/prebuild/``, from
    where :func:`speed_table` adds them to the rows (``cold_build_s``)."""
    processes = rules["speed"].get("prebuild", 0)
    kinds: dict[tuple[str, bool], list[str]] = {}
    for name, model, group, is_timm in entries:
        if not row_file(out, name, group).is_file():
            kinds.setdefault((group, is_timm), []).append(model)
    from lowspace.cli import main as lowspace_cli
    for (group, is_timm), models in kinds.items():
        if processes < 1 or not clock.open():
            return
        say(f"speed: building {len(models)} models' compiled rows ({group}), {processes} at once")
        path = out / "speed" / "prebuild" / f"{group}{'-timm' if is_timm else ''}-{time.time_ns()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        lowspace_cli([*bench_args(models, rules["speed"], group, is_timm), "--prebuild", str(processes),
                      "--prebuild-only", "--results-file", str(path)])  # a failed build: its timed run says why


def bench_model(name: str, model: str, group: str, timm_model: bool, rules: dict, out: Path, clock: Clock) -> None:
    path = row_file(out, name, group)
    if path.is_file() or not clock.open():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    say(f"speed: {name} ({group})")
    from lowspace.cli import main as lowspace_cli  # `lowspace bench` in this process: no start-up per model
    rc = lowspace_cli([*bench_args([model], rules["speed"], group, timm_model), "--results-file", str(path)])
    if rc not in (0, 1):  # 1: some row failed (recorded in the file with its error); 2: bad arguments
        raise SystemExit(f"lowspace bench {model}: exit status {rc}")


def speed_models(rules: dict) -> list[tuple[str, str, str, bool]]:
    """(name, model argument, group, is timm) of phase a."""
    out = []
    for preset in rules["presets"]:
        out.append((preset, preset, "graph", False))
        if rules["speed"].get("deploy"):
            out.append((preset, preset, "deploy", False))
    out += [(p["name"], f"timm:{p['name']}", "graph", True) for p in rules["peers"]]
    return out


# timm's benchmark.py column names where they exist, then lowspace's
TIMM_COLUMNS = {"model": "model", "images_per_s": "infer_samples_per_sec", "median_ms": "infer_step_time",
                "batch_size": "infer_batch_size", "resolution": "infer_img_size", "params": "param_count"}
EXTRA_COLUMNS = ("implementation", "backend", "deploy", "reparam", "precision", "channels_last", "p10_ms", "p90_ms",
                 "spread", "build_s", "cold_build_s", "status", "device_name", "fingerprint_key")
# what a prebuilt row and its timed row share
BUILD_KEY = ("model", "backend", "deploy", "reparam", "precision", "channels_last", "batch_size", "resolution")


def speed_table(out: Path, device: str) -> list[dict]:
    """Every bench row of ``out/speed/rows`` as one CSV (timm's column names) and one JSON with the records."""
    import csv
    from lowspace.cost.bench import read_results
    cold = {tuple(r[k] for k in BUILD_KEY): r["cold_build_s"]  # the later prebuild of the same row wins
            for path in sorted((out / "speed" / "prebuild").glob("*.json")) for r in read_results(path)
            if r["cold_build_s"] is not None}
    rows = []
    for path in sorted((out / "speed" / "rows").glob("*.json")):
        name, group = path.stem.split("__")
        made_by = json.loads(path.read_text()).get("provenance") or {}  # the code that timed this file's rows
        for r in read_results(path):
            r["cold_build_s"] = r.get("cold_build_s") or cold.get(tuple(r.get(k) for k in BUILD_KEY))
            row = {new: r.get(old) for old, new in TIMM_COLUMNS.items()}
            row["param_count"] = round(r["params"] / 1e6, 3) if r.get("params") else None
            row.update({k: r.get(k) for k in EXTRA_COLUMNS}, name=name, group=group)
            row.update(lowspace=made_by.get("lowspace"), commit=made_by.get("commit"), source=made_by.get("source"))
            rows.append(row)
    prov = record(device)
    if rows:
        with open(out / "speed" / "speed.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write_json(out / "speed" / "speed.json", dict(record=prov, rows=rows))
    return rows


def published(rules: dict, out: Path, png: bool) -> list[dict]:
    """Published ImageNet top-1 (rules.yaml ``published``) against the throughput of the row dominance claims
    use (:func:`claim_row`): ``speed/published.{json,md,html,png}``; names not timed yet are left out."""
    from lowspace.report.plots import published_figure, write_figure
    rows, claims = speed_rows(out), rules["speed"]["claims"]
    distilled = {p["name"]: p["distilled"] for p in rules["peers"]}
    table = []
    for name, pub in (rules.get("published") or {}).items():
        row = claim_row(rows, name, claims)
        if row is None:
            continue
        how = f"{'deploy' if row['group'] == 'deploy' else 'model'}, {row['backend']}, batch {row['infer_batch_size']}"
        table.append(dict(name=name, kind="preset" if name in rules["presets"] else "peer",
                          distilled=distilled.get(name, False), top1=pub["top1"], px=pub["px"], source=pub["source"],
                          images_per_s=row["infer_samples_per_sec"],
                          latency_ms=row["infer_step_time"], row=how))
    if not table:
        return table
    speed = out / "speed"
    write_json(speed / "published.json", dict(record=record(rules["speed"]["device"]), rows=table))
    lines = ["# Published ImageNet-1k top-1 against measured throughput", "",
             "| name | kind | published top-1 (%) | at px | distilled | source | img/s | measured as |",
             "|---|---|---:|---:|---|---|---:|---|"]
    lines += [f"| {r['name']} | {r['kind']} | {r['top1']:.2f} | {r['px']} | {'yes' if r['distilled'] else 'no'} | "
              f"{r['source']} | {r['images_per_s']:,.0f} | {r['row']} |"
              for r in sorted(table, key=lambda r: -r["images_per_s"])]
    (speed / "published.md").write_text("\n".join(lines) + "\n")
    import pandas as pd
    write_figure(published_figure(pd.DataFrame(table)), speed / "published.html",
                 speed / "published.png" if png else None, plotlyjs="cdn")
    return table


def phase_speed(rules: dict, out: Path, clock: Clock, png: bool) -> None:
    entries = speed_models(rules)
    prebuild(entries, rules, out, clock)
    for name, model, group, is_timm in entries:
        bench_model(name, model, group, is_timm, rules, out, clock)
    speed_table(out, rules["speed"]["device"])
    published(rules, out, png)


# ======================================================================== b, d: final runs
def final_runs(entries: list, rules: dict, out: Path, clock: Clock, device: str | None, data: str) -> None:
    """Each entry trained with every seed of rules.yaml and tested once (lowspace.report.evaluate_final, one
    seed at a time so a deadline or a shard applies per run; finished runs are read back)."""
    from lowspace.data import get_dataset
    from lowspace.report.evaluate import evaluate_final
    from lowspace.train import proxy_recipe
    recipe = proxy_recipe(rules["schedule"])
    dataset = None
    index = -1
    for entry in entries:
        for seed in rules["seeds"]:
            index += 1
            if not clock.mine(index) or not clock.open():
                continue
            dataset = dataset or get_dataset(data, seed=recipe.seed)
            evaluate_final([entry], dataset, recipe, repeats=1, seed=seed, device=device, out_dir=out,
                           progress=lambda line: say(f"train: {line}"))


def collect(entries: list, out: Path) -> list:
    """The finished runs of ``entries`` under ``out/runs`` as FinalResults (unfinished seeds left out)."""
    from lowspace.report.evaluate import FinalResult
    results = []
    for entry in entries:  # names are preset keys, timm names and <study>-t<trial>: evaluate_final keeps them
        result = FinalResult(entry)
        for path in sorted((out / "runs" / entry.name).glob("seed*/result.json")):
            stored = json.loads(path.read_text())
            validation = stored["info"].get("validation") or {}
            result.runs.append(dict(seed=int(path.parent.name.removeprefix("seed")), top1=stored["top1"],
                                    top5=stored["top5"], images=validation.get("images"),
                                    resolution=stored["info"].get("resolution"), train_s=stored["train_s"],
                                    commit=stored.get("provenance", {}).get("commit"),
                                    device=(stored.get("environment") or {}).get("device")))
        if result.runs:
            results.append(result)
    return results


def latency_label(rules: dict) -> str:
    """What the latency of the final plots is (rules.yaml speed.claims)."""
    claims = rules["speed"]["claims"]
    return (f"latency at batch {claims['batch_size']}, ms per batch (LowFormer: deploy path, "
            f"{claims['deploy_backend']}; peers: their faster row)")


def write_finals(results: list, out: Path, title: str, rules: dict, device: str, png: bool) -> None:
    from lowspace.report.evaluate import final_frame, write_final_report
    if not results:
        return
    write_final_report(results, out, title, rules["significance"], png=png, plotlyjs="cdn",  # small committed HTML
                       latency_label=latency_label(rules))
    frame = final_frame(results, rules["significance"])
    write_json(out / "final.json", dict(record=record(device), schedule=rules["schedule"], seeds=rules["seeds"],
                                        rows=json.loads(frame.to_json(orient="records"))))


def reference_entries(rules: dict) -> list:
    from lowspace.arch import resolve_config
    from lowspace.report.evaluate import Entry
    from lowspace.train import TimmModel
    presets = [Entry(p, resolve_config(p), "preset") for p in rules["presets"]]
    return presets + [Entry(p["name"], TimmModel.named(p["name"]), "peer") for p in rules["peers"]]


def speed_rows(out: Path) -> list[dict]:
    path = out / "speed" / "speed.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def with_latency(entries: list, rules: dict, out: Path) -> list:
    """``entries`` with the latency dominance claims use (:func:`claim_latency`; nan where not measured)."""
    from dataclasses import replace
    rows, claims = speed_rows(out), rules["speed"]["claims"]
    found = {e.name: claim_latency(rows, e.name, claims) for e in entries}
    return [replace(e, latency_ms=found[e.name][0], latency_spread=found[e.name][1]) if found[e.name]
            else replace(e, latency_ms=math.nan, latency_spread=None) for e in entries]


def phase_train(rules: dict, out: Path, clock: Clock, device: str | None, data: str, png: bool) -> None:
    entries = reference_entries(rules)
    final_runs(entries, rules, out / "train", clock, device, data)
    write_finals(collect(with_latency(entries, rules, out), out / "train"), out / "train",
                 "Presets and peers on the full proxy schedule", rules, device, png)


# ======================================================================== c: searches
def studies(rules: dict, out: Path, wider: bool = True) -> list[tuple[str, int, str, str]]:
    """(method, seed, storage, study name) of every study of the proof: the compared methods (the pareto ones
    first), then, with ``wider``, the search of the wider space (search.wider), which no method is compared with."""
    search = rules["search"]
    runs = [(m, s) for m in search["methods"] for s in search["seeds"]]
    if wider and search.get("wider"):
        runs += [(search["wider"]["name"], s) for s in search["wider"]["seeds"]]
    return [(m, s, f"sqlite:///{(out / 'studies' / f'{m}-s{s}.db').resolve()}", f"{m}-s{s}") for m, s in runs]


def search_command(search: dict, method: str) -> tuple[str, list[str]]:
    """The search config of a study's method and the ``--set`` arguments that make it (the wider space's)."""
    wider = search.get("wider") or {}
    if method in search["methods"]:
        return search["methods"][method], []
    # A string field takes the text as it is (``space=wide``); anything else goes as YAML (JSON is YAML).
    sets = [a for key, value in wider["set"].items()
            for a in ("--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}")]
    return search["methods"][wider["method"]], sets


def reference_latency(rules: dict, out: Path) -> float:
    """The hypervolume reference latency, by the rule of rules.yaml (search.reference), from phase a's rows:
    ``factor`` x the slowest preset's deploy latency at ``batch_size`` under ``backend`` (the searches'
    protocol). Every study records it when created."""
    rule = rules["search"]["reference"]
    rows = [r for r in speed_rows(out) if r["name"] in rules["presets"] and r["group"] == "deploy"
            and r["backend"] == rule["backend"] and r["infer_batch_size"] == rule["batch_size"] and r["status"] == "ok"]
    if not rows:
        raise SystemExit(f"phase search: the hypervolume reference needs phase speed's deploy rows of the presets at "
                         f"batch {rule['batch_size']} under {rule['backend']} in {out / 'speed'}; run phase speed "
                         "first")
    return rule["factor"] * max(r["infer_step_time"] for r in rows)


def created(storage: str) -> bool:
    """Whether a study's SQLite file exists (its first search run creates it)."""
    return Path(storage.removeprefix("sqlite:///")).is_file()


def spent_reason(storage: str, name: str, budget_gpu_s: float) -> str:
    """Why study ``name`` needs no more trials ("" when it does, or when it does not exist yet)."""
    from lowspace.search import budget_reason
    return budget_reason(load(storage, name), budget_gpu_s) if created(storage) else ""


def unfinished_studies(rules: dict, out: Path) -> list[str]:
    """The studies of phase search that still need trials, each as "name (why)" ([] once all are done). With
    search.n_trials (the smoke run) a study is done once it exists."""
    from lowspace.search import budget_reason, spent_gpu_s
    search, left = rules["search"], []
    for _method, _seed, storage, name in studies(rules, out):
        if not created(storage):
            left.append(f"{name} (not started)")
            continue
        if search.get("n_trials"):
            continue
        study = load(storage, name)
        if not budget_reason(study, search["budget_gpu_s"]):
            left.append(f"{name} ({spent_gpu_s(study):,.0f} of {search['budget_gpu_s']:,} GPU-seconds)")
    return left


def phase_search(rules: dict, out: Path, clock: Clock, data: str, extra: list[str], png: bool) -> None:
    from lowspace.cli import main as lowspace_cli
    from lowspace.provenance import utc_timestamp
    search = rules["search"]
    (out / "studies").mkdir(parents=True, exist_ok=True)
    reference = reference_latency(rules, out)
    for index, (method, seed, storage, name) in enumerate(studies(rules, out)):
        if not clock.mine(index):
            continue
        if not search.get("n_trials") and (done := spent_reason(storage, name, search["budget_gpu_s"])):
            say(f"search: {name} done ({done})")
            continue
        if not clock.open():
            return
        config, sets = search_command(search, method)
        args = ["search", "--config", config, "--seed", str(seed), "--study-name", name,
                "--storage", storage, "--budget-gpu-s", str(search["budget_gpu_s"]),
                "--workers", str(search["workers"]), "--data", data, "--out", str(out / "studies" / name)]
        args += ["--n-trials", str(search["n_trials"])] if search.get("n_trials") else []
        args += ["--timeout", f"{clock.left_s():.0f}"] if clock.deadline is not None else []
        args += [] if png else ["--no-png"]
        args += [*sets, "--set", f"report.reference_latency_ms={reference:.6g}", *extra]
        say(f"search: {name}")
        path = out / "studies" / f"{name}.record.json"
        # Recorded before the search starts, so a run that is killed (its trials kept) is on record too.
        record_run(path, dict(
            method=method, seed=seed, config=config, set=sets[1::2], budget_gpu_s=search["budget_gpu_s"],
            reference_latency_ms=reference), dict(
            record=record(rules["speed"]["device"]), command=args, shard=f"{clock.k}/{clock.n}",
            visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), started=utc_timestamp(), ended=None))
        if lowspace_cli(args) != 0:
            raise SystemExit(f"lowspace search {name} failed (see above)")
        end_run(path)


def record_run(path: Path, study: dict, run: dict) -> None:
    """A study's record: what defines it, and one entry per run of the search that added trials to it (a
    study grows over several runs, each with its commit, environment and command; ``ended`` stays null for a
    run that failed or was stopped before its search returned)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, **study, "runs": [*old.get("runs", []), run]})


def end_run(path: Path) -> None:
    """Mark the last run of a study's record as ended normally."""
    from lowspace.provenance import utc_timestamp
    old = json.loads(path.read_text())
    write_json(path, {**old, "runs": [*old["runs"][:-1], {**old["runs"][-1], "ended": utc_timestamp()}]})


def load(storage: str, name: str):
    from lowspace.search.storage import load_study
    return load_study(storage, name)


# ======================================================================== d: front members
def spaced(items: list, k: int) -> list:
    """At most ``k`` of ``items`` (sorted), evenly spaced, the first and last always among them."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def front_entries(rules: dict, out: Path) -> list:
    """The rule of rules.yaml (front.rule): each study's front without presets, at most max_per_study spaced
    in latency, each architecture once."""
    from lowspace.report.evaluate import Entry, study_entries
    chosen, seen = [], set()
    for _method, _seed, storage, name in studies(rules, out):
        if not created(storage):
            continue
        members = [e for e in study_entries(load(storage, name), presets=False) if e.kind == "front"]
        members = sorted(members, key=lambda e: (e.latency_ms is None, e.latency_ms or 0.0, e.trial))
        for e in spaced(members, rules["front"]["max_per_study"]):
            if e.config.arch_id in seen:
                continue
            seen.add(e.config.arch_id)
            chosen.append(Entry(f"{name}-t{e.trial}", e.config, "front", e.trial, e.latency_ms, e.latency_spread))
    return chosen


def wait_for_rows(paths: list[Path], clock: Clock, poll_s: float = 5.0) -> bool:
    """Wait until every bench results file exists (True) or the deadline passes (False)."""
    while not all(p.is_file() for p in paths):
        if not clock.open():
            return False
        time.sleep(poll_s)
    return True


def phase_front(rules: dict, out: Path, clock: Clock, device: str | None, data: str, png: bool) -> None:
    if left := unfinished_studies(rules, out):  # the rule picks from final fronts, never from partial ones
        raise SystemExit("phase front: the front members are chosen once every study of phase search has its "
                         f"GPU-seconds; not yet: {', '.join(left)}. Run phase search first")
    entries = front_entries(rules, out)
    configs = out / "front" / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    write_json(out / "front" / "chosen.json", dict(record=record(device), rule=rules["front"],
                                                   members=[dict(name=e.name, arch_id=e.config.arch_id,
                                                                 trial=e.trial, latency_ms=e.latency_ms)
                                                            for e in entries]))
    for e in entries:
        path = configs / f"{e.name}.yaml"
        if not path.is_file():
            e.config.to_yaml(path)
    timed = [(e.name, str(configs / f"{e.name}.yaml"), "deploy", False) for e in entries]
    if clock.k == 0:  # shard 0 times every member; the others train only once it is done, so no timing overlaps
        prebuild(timed, rules, out, clock)  # with training in another process on the GPU
        for name, model, group, is_timm in timed:
            bench_model(name, model, group, is_timm, rules, out, clock)
        speed_table(out, rules["speed"]["device"])
    elif not wait_for_rows([row_file(out, name, group) for name, _, group, _ in timed], clock):
        return
    final_runs(entries, rules, out / "front", clock, device, data)
    write_finals(collect(with_latency(entries, rules, out), out / "front"), out / "front",
                 "Front members on the full proxy schedule", rules, device, png)


# ======================================================================== e: report
def claim_row(rows: list[dict], name: str, claims: dict) -> dict | None:
    """The speed row a dominance claim uses (rules.yaml speed.claims): the deploy row of a LowFormer architecture
    under ``deploy_backend``, else (a peer) the fastest row, at ``batch_size``."""
    mine = [r for r in rows if r["name"] == name and r["infer_batch_size"] == claims["batch_size"]
            and r["status"] == "ok"]
    deploy = [r for r in mine if r["group"] == "deploy" and r["backend"] == claims["deploy_backend"]]
    return min(deploy or mine, key=lambda r: r["infer_step_time"], default=None)


def claim_latency(rows: list[dict], name: str, claims: dict) -> tuple[float, float] | None:
    """(ms, spread) of :func:`claim_row`."""
    pick = claim_row(rows, name, claims)
    return (pick["infer_step_time"], pick["spread"]) if pick else None


def dominance(rules: dict, found: list, references: list) -> list[dict]:
    """Each retrained front member (``found``) against each preset and trained peer (``references``) at
    rules.yaml's level."""
    from lowspace.report.significance import compare
    table = []
    for a in found:
        for b in references:
            la, lb = (a.entry.latency_ms, a.entry.latency_spread), (b.entry.latency_ms, b.entry.latency_spread)
            if math.isnan(la[0]) or math.isnan(lb[0]):
                continue
            c = compare(a.accuracy, la[0], la[1], b.accuracy, lb[0], lb[1], rules["significance"])
            table.append(dict(searched=a.entry.name, against=b.entry.name, kind=b.entry.kind, verdict=c.verdict,
                              accuracy_difference=c.accuracy.difference, p_value=c.accuracy.p_value,
                              test=c.accuracy.test, latency=c.latency, searched_ms=la[0], against_ms=lb[0],
                              sentence=c.sentence(a.entry.name, b.entry.name)))
    return table


def goal_table(table: list[dict], found: list, references: list) -> list[dict]:
    """Per searched architecture: how many presets and peers it dominates, is within noise of, trades off
    with or is dominated by, and the pairs it does not win (those a reference without a latency cannot
    give count as not won)."""
    rows = []
    for a in found:
        mine = {t["against"]: t for t in table if t["searched"] == a.entry.name}
        misses = [dict(against=b.entry.name, verdict=mine[b.entry.name]["verdict"] if b.entry.name in mine
                       else "not compared (no latency)",
                       accuracy_difference=mine.get(b.entry.name, {}).get("accuracy_difference"),
                       searched_ms=a.entry.latency_ms, against_ms=b.entry.latency_ms)
                  for b in references if mine.get(b.entry.name, {}).get("verdict") != "dominates"]
        counts = {v: sum(t["verdict"] == v for t in mine.values())
                  for v in ("dominates", "within noise", "trade-off", "is dominated by")}
        rows.append(dict(searched=a.entry.name, accuracy=a.accuracy.mean, latency_ms=a.entry.latency_ms,
                         references=len(references), **counts, goal=not misses, misses=misses))
    return sorted(rows, key=lambda r: (-r["dominates"], r["latency_ms"]))


def goal_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- nothing to compare yet"]
    lines = ["| searched | test accuracy | latency ms | dominates | within noise | trade-off | dominated by |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['searched']} | {r['accuracy']:.2f} % | {r['latency_ms']:.3g} | {r['dominates']} of "
              f"{r['references']} | {r['within noise']} | {r['trade-off']} | {r['is dominated by']} |" for r in rows]
    winners = [r["searched"] for r in rows if r["goal"]]
    if winners:
        return lines + ["", "Dominates every preset and trained peer: " + ", ".join(winners)]
    best = rows[0]

    def miss(m: dict) -> str:
        diff = m["accuracy_difference"]
        acc = f"accuracy {diff:+.2f} points" if diff is not None else "accuracy not compared"
        return f"{m['against']} ({m['verdict']}; {acc}; {m['searched_ms']:.3g} vs {m['against_ms']:.3g} ms)"
    return lines + ["", f"Dominates every preset and trained peer: none. The closest, {best['searched']}, "
                        f"dominates {best['dominates']} of {best['references']}; it does not dominate "
                        + "; ".join(miss(m) for m in best["misses"]) + "."]


def space_lines(rows: list[dict], wider: str) -> list[str]:
    """The goal's second question, whether the wider space closes the gap: the closest architecture of each
    space (``rows`` as :func:`goal_table` sorts them), and what the wider one's does against the other's."""
    spaces = {"LowFormer space": [r for r in rows if not r["searched"].startswith(f"{wider}-")],
              f"wider space (`{wider}`)": [r for r in rows if r["searched"].startswith(f"{wider}-")]}
    if not all(spaces.values()):
        return []
    lines = [f"- {space}: {len(mine)} retrained; the closest, {mine[0]['searched']}, dominates "
             f"{mine[0]['dominates']} of {mine[0]['references']}" for space, mine in spaces.items()]
    narrow, wide = spaces.values()
    if any(r["goal"] for r in narrow):
        verdict = "The LowFormer space meets the goal already."
    elif any(r["goal"] for r in wide):
        verdict = "The wider space closes the gap."
    elif wide[0]["dominates"] > narrow[0]["dominates"]:
        verdict = "The wider space narrows the gap without closing it."
    else:
        verdict = "The wider space does not narrow the gap."
    return ["", "Does a wider space close the gap?", "", *lines, "", verdict]


def method_lines(rules: dict, equal: list[dict]) -> list[str]:
    """The first method against each other one at the least GPU-seconds any study spent (rules.yaml
    search.claim_seeds): a verdict by Welch's t-test over the search seeds, or, with fewer seeds, the
    difference of the means and no claim."""
    from lowspace.report.fronts import format_gpu_s
    from lowspace.report.significance import compare_means
    if not equal:
        return []
    at = max(e["gpu_s"] for e in equal)
    final = {e["group"]: list(e["per_study"].values()) for e in equal if e["gpu_s"] == at}
    first, *others = [m for m in rules["search"]["methods"] if m in final]
    need = rules["search"]["claim_seeds"]
    lines = []
    for other in others:
        a, b = final[first], final[other]
        head = f"- {first} - {other} at {format_gpu_s(at)} GPU-seconds:"
        if min(len(a), len(b)) < need:
            lines.append(f"{head} hypervolume {sum(a) / len(a) - sum(b) / len(b):+.4f} (means of {len(a)} and "
                         f"{len(b)} seeds); no claim: a claim needs {need} search seeds per method")
            continue
        test = compare_means(a, b, rules["significance"])
        if test is None:
            lines.append(f"{head} hypervolume untested (no spread over seeds): within noise")
            continue
        verdict = f"{first} {'higher' if test.difference > 0 else 'lower'}" if test.significant else "within noise"
        lines.append(f"{head} {test.describe('', 'hypervolume', 4)}: {verdict}")
    return lines


def search_statistics(rules: dict, out: Path, png: bool) -> tuple[list[dict], dict, list[dict], str]:
    """Hypervolume per method (mean and interval over search seeds, one reference point) at the end and at
    equal GPU-seconds, both as the budget counts them (with its figure) and as wall time on the device
    (``spent`` and ``occupied`` rows), distinct architectures, and cost per counted trial by stage (duplicates
    counted apart)."""
    from lowspace.report.fronts import (equal_gpu_s_table, group_statistics, hypervolume_over_gpu_s,
                                        resolve_reference)
    from lowspace.report.plots import hypervolume_gpu_figure, write_figure
    from lowspace.report.tables import trials_frame
    found = [(m, s, load(st, n), n) for m, s, st, n in studies(rules, out, wider=False)
             if created(st)]
    if not found:
        return [], {"spent": [], "occupied": []}, [], "no study"
    frames = {n: trials_frame(study) for _, _, study, n in found}
    reference = resolve_reference({n: study for _, _, study, n in found}, frames, ["accuracy", "latency"])

    def curves_by_method(seconds: str) -> dict:
        curves = {m: {n: hypervolume_over_gpu_s(frames[n], ["accuracy", "latency"], reference, seconds)
                      for mm, _, _, n in found if mm == m} for m in rules["search"]["methods"]}
        return {m: c for m, c in curves.items() if c}
    curves = curves_by_method("spent")
    equal = {seconds: json.loads(equal_gpu_s_table(c, level=rules["significance"]).to_json(orient="records"))
             for seconds, c in (("spent", curves), ("occupied", curves_by_method("occupied")))}
    write_figure(hypervolume_gpu_figure(curves, reference, title="Hypervolume over GPU-seconds, per method"),
                 out / "report" / "hypervolume_gpu.html", (out / "report" / "hypervolume_gpu.png") if png else None,
                 plotlyjs="cdn")
    hv, cost = [], []
    for method in rules["search"]["methods"]:
        mine = {n: frames[n] for m, _, _, n in found if m == method}
        if not mine:
            continue
        stats = group_statistics(mine, ["accuracy", "latency"], reference, rules["significance"])
        mean, low, high = stats.summary("hypervolume")
        counted = [f[f["counted"]] for f in mine.values()]
        hv.append(dict(method=method, seeds=len(mine), hypervolume=mean, ci_low=low, ci_high=high,
                       per_seed={n: s["hypervolume"] for n, s in stats.per_study.items()},
                       counted_trials=int(sum(len(c) for c in counted)),
                       distinct_architectures=int(sum(c["arch_id"].nunique() for c in counted)),
                       duplicates=int(sum(f["duplicate"].sum() for f in mine.values()))))
        cost += [study_cost(n, method, f) for n, f in mine.items()]
    compared = {n for _, _, _, n in studies(rules, out, wider=False)}
    cost += [study_cost(n, m, trials_frame(load(st, n))) for m, _, st, n in studies(rules, out)
             if n not in compared and created(st)]  # the wider space's
    return hv, equal, cost, reference.describe()


def study_cost(name: str, method: str, frame) -> dict:
    """What a study's GPU-seconds bought: GPU-minutes per trial by stage and by outcome (full schedule, screened
    out), distinct architectures evaluated per GPU-hour, and duplicates (cache hits: results reused, no GPU time)
    counted apart."""
    from lowspace.report.fronts import occupied_s
    finished = frame[frame["finished"].notna()]
    duplicate = finished["duplicate"].fillna(False).astype(bool)
    evaluated = finished[~duplicate & finished["state"].isin(["COMPLETE", "PRUNED"])]
    hours = float(finished["gpu_s"].sum()) / 3600
    device_hours = float(occupied_s(finished).max()) / 3600 if len(finished) and "started" in finished else None
    stages = [k for k in evaluated if k.startswith("time_") and k.endswith("_s")]

    def minutes(rows) -> dict:
        return {k.removeprefix("time_").removesuffix("_s"): float(rows[k].mean()) / 60 for k in stages} if len(rows) \
            else {}
    outcome = {"full schedule": evaluated[evaluated["state"] == "COMPLETE"],
               "screened out": evaluated[evaluated["state"] == "PRUNED"]}
    return dict(study=name, method=method, gpu_hours=hours, device_hours=device_hours, evaluated=len(evaluated),
                full_schedule=int(frame["counted"].sum()), screened_out=len(outcome["screened out"]),
                cache_hits=int(duplicate.sum()), failed=int((finished["state"] == "FAIL").sum() - duplicate.sum()),
                gpu_minutes_per_trial={k: minutes(v) for k, v in outcome.items() if len(v)},
                evaluated_per_gpu_hour=len(evaluated) / hours if hours else None,
                full_schedule_per_gpu_hour=int(frame["counted"].sum()) / hours if hours else None)


def pareto_reports(rules: dict, out: Path, png: bool) -> None:
    """``lowspace pareto`` of the pareto studies against each baseline method (their seeds as groups)."""
    found = [(m, st, n) for m, _, st, n in studies(rules, out, wider=False)
             if created(st)]
    main = [(st, n) for m, st, n in found if m == "pareto"]
    for method in [m for m in rules["search"]["methods"] if m != "pareto"]:
        base = [(st, n) for m, st, n in found if m == method]
        if not main or not base:
            continue
        args = ["pareto", *[st for st, _ in main]] + [a for _, n in main for a in ("--study-name", n)]
        args += ["--baseline", *[st for st, _ in base]] + [a for _, n in base for a in ("--baseline-study-name", n)]
        args += ["--out", str(out / "report" / f"pareto_vs_{method}"), "--significance", str(rules["significance"]),
                 "--cdn"]
        args += [] if png else ["--no-png"]
        from lowspace.cli import main as lowspace_cli
        if lowspace_cli(args) != 0:
            raise SystemExit(f"lowspace pareto (pareto vs {method}) failed (see above)")


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def phase_report(rules: dict, out: Path, device: str, png: bool) -> None:
    from lowspace.report.fronts import format_gpu_s
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    pareto_reports(rules, out, png)
    hv, equal, cost, reference = search_statistics(rules, out, png)
    unfinished = unfinished_studies(rules, out)
    found = collect(with_latency(front_entries(rules, out), rules, out), out / "front")
    references = collect(with_latency(reference_entries(rules), rules, out), out / "train")
    table = dominance(rules, found, references)
    if found or references:  # the front plot: searched architectures with the presets and peers, error bars
        from lowspace.report.evaluate import write_final_report
        write_final_report(references + found, report, "Searched architectures, presets and trained peers",
                           rules["significance"], png=png, plotlyjs="cdn", latency_label=latency_label(rules))
    methods, goal = method_lines(rules, equal["spent"]), goal_table(table, found, references)
    write_json(report / "report.json", dict(record=record(device), rules=rules, unfinished=unfinished,
                                            reference=reference, hypervolume=hv, methods=methods,
                                            hypervolume_at_equal_gpu_s=equal, cost=cost, dominance=table,
                                            goal=goal))
    level = f"{rules['significance'] * 100:g} %"
    lines = ["# The proof: what the numbers say", ""]
    if unfinished:
        lines += [f"**Preliminary: phase search is not finished** ({', '.join(unfinished)}). Nothing below is the "
                  "proof's result.", ""]
    lines += [f"Hypervolume reference: {reference}.", "",
             "| method | seeds | hypervolume (mean, CI over seeds) | counted trials | distinct architectures |"
             " duplicates |", "|---|---|---|---|---|---|"]
    lines += [f"| {h['method']} | {h['seeds']} | {h['hypervolume']:.4f} ({h['ci_low']:.4f} to {h['ci_high']:.4f}) | "
              f"{h['counted_trials']} | {h['distinct_architectures']} | {h['duplicates']} |" for h in hv]
    lines += ["", *methods]
    lines += ["", "## Hypervolume at equal GPU-seconds", "",
              "Each study read at fractions of the least GPU-seconds any study spent (`hypervolume_gpu.html`): "
              "as the budget counts them (every trial's seconds, the four workers sharing the GPU each counting "
              "their own) and, as a check, as wall time during which the study had a trial running on the GPU.", ""]
    for seconds, title in (("spent", "GPU-seconds (budget)"), ("occupied", "wall seconds on the GPU")):
        lines += [f"| method | seeds | {title} | hypervolume (mean, CI over seeds) | per seed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {e['group']} | {e['studies']} | {format_gpu_s(e['gpu_s'])} | {e['hypervolume']:.4f} "
                  f"({_fmt(e['ci_low'])} to {_fmt(e['ci_high'])}) | "
                  + ", ".join(f"{v:.4f}" for v in e["per_study"].values()) + " |" for e in equal[seconds]]
        lines.append("")
    (report / "dominance.md").write_text("\n".join(
        [f"# Searched architectures against every preset and trained peer ({level})", ""]
        + ([f"- {t['sentence']}" for t in table] or ["- nothing to compare yet"])) + "\n")
    lines += ["", f"## The goal: dominate every preset and trained peer ({level}; pairs in `dominance.md`)", ""]
    lines += goal_lines(goal) + space_lines(goal, rules["search"]["wider"]["name"])
    lines += ["", "## Cost (GPU-minutes per trial by stage; duplicates reuse a result and spend none)", ""]
    for c in cost:
        per_hour = c["evaluated_per_gpu_hour"]
        wall = f" ({c['device_hours'] * 60:.1f} minutes of wall time on the GPU)" if c.get("device_hours") else ""
        lines.append(f"- {c['study']}: {c['gpu_hours']:.2f} GPU-hours{wall}, {c['evaluated']} architectures evaluated "
                     f"({c['full_schedule']} on the full schedule, {c['screened_out']} screened out), "
                     f"{c['cache_hits']} cache hits, {c['failed']} failed"
                     + (f"; {per_hour:.0f} evaluated and {c['full_schedule_per_gpu_hour']:.0f} full-schedule "
                        "per GPU-hour" if per_hour else ""))
        lines += [f"  - {outcome}: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                  for outcome, stages in c["gpu_minutes_per_trial"].items()]
    (report / "summary.md").write_text("\n".join(lines) + "\n")
    say(f"report: {report / 'summary.md'}")


# ======================================================================== entry point
def check_timing_device(phase: str, rules: dict) -> None:
    """Phases speed and front time models on rules.yaml's speed.device: refuse, before any work, a CUDA device
    that this machine lacks."""
    import torch
    if phase in ("speed", "front") and rules["speed"]["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"phase {phase}: rules.yaml speed.device is 'cuda' and this machine has no CUDA device; "
                         "run it on a GPU machine (SMOKE=1 runs every phase at toy scale on the CPU)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("speed", "train", "search", "front", "report"))
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--smoke", action="store_true", help="rules.yaml's smoke section (a toy run on the CPU)")
    p.add_argument("--deadline", type=float, default=None, help="start no new work after this UNIX time")
    p.add_argument("--shard", default="0/1",
                   help="K/N: this process takes every N-th run of train and front and every N-th study of search")
    p.add_argument("--data", default=None, help="data set (default: rules.yaml's)")
    p.add_argument("--device", default=None, help="training device (default: CUDA if available)")
    p.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `lowspace search --set` (smoke: a toy space and data)")
    args = p.parse_args(argv)
    rules = load_rules(args.smoke)
    clock = Clock(args.deadline, args.shard)
    data = args.data or rules["data"]
    out, png = args.results, not args.smoke
    device = args.device or ("cpu" if args.smoke else None)
    check_timing_device(args.phase, rules)
    if args.phase == "speed":
        phase_speed(rules, out, clock, png)
    elif args.phase == "train":
        phase_train(rules, out, clock, device, data, png)
    elif args.phase == "search":
        phase_search(rules, out, clock, data, [a for kv in args.search_set for a in ("--set", kv)], png)
    elif args.phase == "front":
        phase_front(rules, out, clock, device, data, png)
    else:
        phase_report(rules, out, device, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
