"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case is a command line that must stop with exit
status 2 and one error line naming the problem, before any study, run, report or cache entry is written.

The cases run in-process through ``lowspace.cli.main``, each in an empty working directory; see
tests/bad_inputs/README.md for the case format.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from lowspace.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).parent.parent
CASE_KEYS = {"id", "argv", "expect", "write", "copy", "links", "dirs", "data", "weights", "setup", "xfail",
             "unsafe", "skip_if"}


def _load_cases() -> list:
    doc = yaml.safe_load((CORPUS / "cases.yaml").read_text())
    prefixes, cases, seen = doc["prefixes"], [], set()
    for case in doc["cases"]:
        unknown = set(case) - CASE_KEYS
        assert not unknown and case["id"] not in seen, f"case {case['id']}: unknown keys {unknown} or repeated id"
        seen.add(case["id"])
        assert all(isinstance(a, str) for a in case["argv"]), f"case {case['id']}: quote every argument"
        case["argv"] = [part for item in case["argv"]
                        for part in (prefixes[item[1:]] if item.startswith("@") else [item])]
        marks = []
        if "unsafe" in case:  # accepted today, the command would exhaust the machine: not run until fixed
            marks = [pytest.mark.xfail(run=False, reason=f"{case['xfail']} (not run: {case['unsafe']})")]
        elif "xfail" in case:
            marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])]
        cases.append(pytest.param(case, id=case["id"], marks=marks))
    return cases


def _fill(text, tmp: Path) -> str:
    text = str(text)
    for key, value in (("{files}", CORPUS / "files"), ("{repo}", REPO), ("{tmp}", tmp)):
        text = text.replace(key, str(value))
    return text


# ==================================================================== what a case creates before it runs
def _write(tmp: Path, case: dict) -> None:
    for rel, content in (case.get("write") or {}).items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):  # {repeat: TEXT, times: N}: a large file without committing one
            content = content["repeat"] * content["times"]
        path.write_text(_fill(content, tmp))
    for rel, source in (case.get("copy") or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_fill(source, tmp), tmp / rel)
    for rel in case.get("dirs") or []:
        (tmp / rel).mkdir(parents=True, exist_ok=True)


def _links(tmp: Path, case: dict) -> None:
    for rel, target in (case.get("links") or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_fill(target, tmp), tmp / rel)


def _image_folders(tmp: Path, case: dict) -> None:
    """Tiny class-folder data sets: ``{root: {classes: N, images: N, size: PX}}`` (images per class and split)."""
    from PIL import Image
    for rel, spec in (case.get("data") or {}).items():
        size, n = spec.get("size", 8), spec.get("images", 2)
        for split in ("train", "val"):
            for c in range(spec.get("classes", 2)):
                folder = tmp / rel / split / f"class{c}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.new("RGB", (size, size), (40 * c, 20 * i, 100)).save(folder / f"img{i}.png")


def _weights(tmp: Path, case: dict) -> None:
    """Weights files of a config: ``{file: {config: PATH, tensors: fp32 | int8 | nan, num_classes: N}}``."""
    import torch

    from lowspace import create_model
    from lowspace.arch import resolve_config
    for rel, spec in (case.get("weights") or {}).items():
        cfg = resolve_config(_fill(spec["config"], tmp))
        model = create_model(cfg.replace(num_classes=spec.get("num_classes", cfg.num_classes)))
        state = model.state_dict()
        for key, t in state.items():
            if not t.is_floating_point():
                continue
            if spec["tensors"] == "nan":
                state[key] = torch.full_like(t, float("nan"))
            elif spec["tensors"] == "int8":
                state[key] = t.to(torch.int8)
        path = tmp / rel
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)


def _setup(tmp: Path, case: dict, capsys) -> None:
    for argv in case.get("setup") or []:
        rc = main([_fill(a, tmp) for a in argv])
        captured = capsys.readouterr()
        assert rc == 0, f"set-up command {argv} failed: {captured.err[-2000:]}"


def _tree(root: Path) -> dict:
    """Every path under ``root`` (symlinks not followed) with its size and modification time."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


# ==================================================================== the check
def error_lines(err: str) -> list[str]:
    """Non-empty stderr lines, without argparse's usage block (it precedes argparse's own error line)."""
    out, in_usage = [], False
    for line in err.splitlines():
        if line.startswith("usage: "):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip():
            out.append(line)
    return out


@pytest.mark.parametrize("case", _load_cases())
def test_bad_input_stops_with_one_line(case, tmp_path, monkeypatch, capsys):
    if case.get("skip_if") == "cuda":
        import torch
        if torch.cuda.is_available():
            pytest.skip("the case is about a machine without a CUDA device")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _write(work, case)
    _image_folders(work, case)
    _links(work, case)
    _weights(work, case)
    _setup(work, case, capsys)
    before = _tree(tmp_path)

    argv = [_fill(a, work) for a in case["argv"]]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()

    assert "Traceback" not in out + err, err[-3000:]
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1 and out == "", f"rc {rc}; stderr:\n{err[-3000:]}\nstdout:\n{out[-1000:]}"
    line = lines[0]
    assert re.match(r"lowspace( \w+)?: error: ", line), line
    for word in case["expect"]:
        assert _fill(word, work) in line, f"{word!r} not in: {line}"
    after = _tree(tmp_path)
    assert after == before, f"created or changed: {sorted(set(after.items()) ^ set(before.items()))[:10]}"
