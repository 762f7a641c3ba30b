"""A search worker process: ``python -m lowspace.search.worker CONFIG.json INDEX``.

``lowspace search --workers N`` starts these with ``CUDA_VISIBLE_DEVICES`` pinned; each runs trials of
the shared study until it has enough complete ones. Exit code 0 on a normal stop.
"""
from __future__ import annotations

import json
import os
import sys

from ..errors import LowspaceError
from .settings import SearchConfig
from ._loop import run_worker
from .trial import summary_line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m lowspace.search.worker CONFIG.json INDEX", file=sys.stderr)
        return 2
    path, index = argv[0], int(argv[1])
    threads = os.environ.get("LOWSPACE_NUM_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    with open(path) as fh:
        config = SearchConfig.from_dict(json.load(fh))

    def log(study, frozen):
        print(f"[worker {index}] {summary_line(frozen)}", flush=True)

    try:
        summary = run_worker(config, index, on_trial=log,
                             notify=lambda text: print(f"[worker {index}] note: {text}", flush=True))
    except LowspaceError as err:
        print(f"[worker {index}] error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"[worker {index}] done: {summary.stopped_reason}; ran {summary.ran} trials", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
