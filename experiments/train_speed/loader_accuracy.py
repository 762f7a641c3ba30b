"""Does the GPU loader's augmentation change accuracy? (see README.md, "Loader accuracy")

B0 trained from scratch with the B0 recipe's augmentation (random-resized crop with a random PIL filter, flip,
RandAugment, mixup / cutmix) at 64 px on real images: Fashion-MNIST written as a JPEG class folder (1,000
training images per class, 100 of them held out for validation). The same runs and seeds with the CPU loader
(PIL and timm's transforms in DataLoader workers) and with the GPU loader (nvJPEG and lowspace's batched GPU
transforms); top-1 on the held-out images; Welch's t-test on the per-seed accuracies of the two loaders.

    PYTHONPATH=. python3 experiments/train_speed/loader_accuracy.py --out experiments/train_speed/loader_accuracy
    PYTHONPATH=. python3 experiments/train_speed/loader_accuracy.py --smoke --out /tmp/la   # CPU check, tiny

Each run trains through ``lowspace train`` in its own process into OUT/runs/<loader>_s<seed>/; finished runs
(their result.json) are kept, so a stopped run resumes. Writes OUT/results.json (rows, the test, provenance)
and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_folder(root: Path, fmnist: str | None, per_class: int, quality: int = 95) -> dict:
    """Fashion-MNIST's first ``per_class`` training images of each class as RGB JPEGs under root/train/<class>/,
    and as many test images under root/val/ (the folder layout wants one; the runs validate on held-out
    training images). Reused when root already holds them."""
    from PIL import Image

    from lowspace.data import load_fashion_mnist
    stamp = root / "written.json"
    spec = dict(per_class=per_class, quality=quality, version=1)
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return dict(spec, reused=True)
    data = load_fashion_mnist(fmnist)
    for split, part, count in (("train", data.train, per_class), ("val", data.val, max(1, per_class // 10))):
        labels = part.labels.numpy()
        for c, name in enumerate(data.classes):
            folder = root / split / name.replace("/", "-").replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate((labels == c).nonzero()[0][:count]):
                image = Image.fromarray(part.images[i, 0].numpy()).convert("RGB")
                image.save(folder / f"{k:05d}.jpg", quality=quality)
    stamp.write_text(json.dumps(spec))
    return dict(spec, reused=False)


def run_one(out: Path, folder: Path, loader: str, seed: int, args) -> dict:
    """One training run (or its stored result)."""
    run_dir = out / "runs" / f"{loader}_s{seed}"
    result = run_dir / "result.json"
    if not result.is_file():
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)  # an unfinished run restarts from scratch: the runs are short
        cmd = [sys.executable, "-m", "lowspace", "train", "b0", "--data", str(folder), "--loader", loader,
               "--seed", str(seed), "--epochs", str(args.epochs), "--resolution", str(args.resolution),
               "--batch-size", str(args.batch), "--val-per-class", str(args.val_per_class),
               "--device", args.device, "--workers", str(args.workers), "--set", "eval_model=model",
               "--out", str(run_dir), "--no-progress"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "runs" / f"{loader}_s{seed}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            return dict(loader=loader, seed=seed, error=(done.stderr.strip().splitlines() or ["?"])[-1])
    stored = json.loads(result.read_text())
    info = stored.get("info", {})
    return dict(loader=loader, seed=seed, top1=stored["top1"], best_top1=stored.get("best_top1"),
                train_s=stored.get("train_s"), images=info.get("train_images"),
                images_per_s=(info.get("train_images") or 0) / stored["train_s"] if stored.get("train_s") else None,
                commit=stored.get("provenance", {}).get("commit"))


def compare(rows: list[dict], level: float = 0.95) -> dict:
    """Mean, sd and 95 % interval of top-1 per loader, and Welch's t-test of GPU against CPU
    (``lowspace.report.significance``, the rules of every lowspace report)."""
    from lowspace.report.significance import Accuracy, compare_accuracy
    acc = {loader: Accuracy(tuple(r["top1"] for r in rows if r["loader"] == loader and r.get("top1") is not None))
           for loader in ("cpu", "gpu")}
    out: dict = {loader: dict(n=a.seeds, mean=a.mean, sd=a.std, ci95=list(a.interval(level)))
                 for loader, a in acc.items() if a.seeds}
    if acc["cpu"].seeds > 1 and acc["gpu"].seeds > 1:
        test = compare_accuracy(acc["gpu"], acc["cpu"], level)
        diff, p = test.difference, test.p_value
        if test.significant:
            verdict = f"GPU loader {'higher' if diff > 0 else 'lower'} by {abs(diff):.2f} points (p = {p:.3f})"
        else:
            verdict = f"within noise (difference {diff:+.2f} points, " + (f"p = {p:.3f})" if p is not None else
                                                                          f"{test.test})")
        out["gpu_minus_cpu"] = dict(diff=diff, p=p, significant=test.significant, verdict=verdict)
    return out


def markdown(payload: dict) -> str:
    lines = [f"# Loader accuracy: {payload['title']}", "", f"Command: `{payload['command']}`", "",
             "| loader | seed | top-1 | best top-1 | train s | img/s | commit |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(f"| {r['loader']} | {r['seed']} | failed: {r['error']} | | | | |")
            continue
        ips = f"{r['images_per_s']:,.0f}" if r.get("images_per_s") else "-"
        lines.append(f"| {r['loader']} | {r['seed']} | {r['top1']:.2f} | {r['best_top1']:.2f} | "
                     f"{r['train_s']:.1f} | {ips} | {r.get('commit') or '-'} |")
    lines += ["", "| loader | runs | mean top-1 | sd | 95 % interval |", "|---|---:|---:|---:|---|"]
    for loader in ("cpu", "gpu"):
        s = payload["summary"].get(loader)
        if s:
            lines.append(f"| {loader} | {s['n']} | {s['mean']:.2f} | {s['sd']:.2f} | "
                         f"{s['ci95'][0]:.2f} to {s['ci95'][1]:.2f} |")
    verdict = payload["summary"].get("gpu_minus_cpu", {}).get("verdict")
    lines += ["", f"**{verdict}**" if verdict else "No comparison (one loader or one seed only).", "",
              f"Provenance: `{json.dumps(payload['provenance'], default=str)}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/train_speed/loader_accuracy")
    p.add_argument("--folder", help="where the JPEG class folder goes (default OUT/../fmnist-jpeg-<n>)")
    p.add_argument("--fmnist-root", help="folder of the Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=15, help="DataLoader workers of the CPU loader")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny, CPU, CPU loader only: a check of this script")
    args = p.parse_args(argv)
    if args.smoke:
        args.per_class, args.val_per_class, args.epochs, args.resolution, args.batch = 12, 2, 1, 32, 16
        args.device, args.workers, args.seeds = "cpu", 0, "0,1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.folder or Path(os.environ.get("TMPDIR", "/tmp")) / f"lowspace-fmnist-jpeg-{args.per_class}")
    written = write_folder(folder, args.fmnist_root, args.per_class)
    loaders = ("cpu",) if args.smoke else ("cpu", "gpu")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [run_one(out, folder, loader, seed, args) for seed in seeds for loader in loaders]
    from lowspace.provenance import provenance
    payload = dict(title=f"B0, {args.resolution} px, {args.epochs} epochs, Fashion-MNIST as JPEG folders "
                         f"({args.per_class - args.val_per_class} training / {args.val_per_class} held-out images "
                         f"per class), seeds {seeds}",
                   command="PYTHONPATH=. python3 experiments/train_speed/loader_accuracy.py " + " ".join(
                       argv if argv is not None else sys.argv[1:]),
                   folder=written, rows=rows, summary=compare(rows), provenance=provenance())
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "results.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
