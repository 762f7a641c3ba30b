"""Where a result came from: the lowspace version and commit and a hash of the package's source, recorded
with every result file so that a number can be traced to the code that produced it."""
from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import __version__

PACKAGE = Path(__file__).resolve().parent


def files_hash(root: Path, parts: Iterable[str] = (".",)) -> str:
    """A short hash of the names and contents of every Python file under ``root / part`` (a folder or one
    file) for each of ``parts``; parts that do not exist are skipped."""
    digest = hashlib.sha256()
    for part in parts:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def package_hash() -> str:
    """A short hash of every Python file of the installed lowspace package (names and contents)."""
    return files_hash(PACKAGE)


@lru_cache(maxsize=None)
def git_commit() -> str | None:
    """``LOWSPACE_COMMIT`` when set, else the commit of the checkout the package runs from (``+dirty`` when
    its tracked files differ from it), else None (an installed wheel)."""
    if os.environ.get("LOWSPACE_COMMIT"):
        return os.environ["LOWSPACE_COMMIT"]
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=PACKAGE.parent, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "lowspace")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """``{"lowspace": version, "commit": ..., "source": package hash}`` for a result file."""
    return {"lowspace": __version__, "commit": git_commit(), "source": package_hash()}


def utc_timestamp() -> str:
    """Now, in UTC to the second (ISO 8601), as result files record when they were made."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
