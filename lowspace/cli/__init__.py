"""The ``lowspace`` command: a thin layer over the Python API, one module per subcommand."""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..errors import ConfigError, LowspaceError

# subcommand -> module under lowspace.cli that defines ``add_parser(subparsers)`` and sets ``func``
COMMANDS = {
    "info": "info",
    "bench": "bench",
    "train": "train",
    "eval": "train",
    "search": "search",
    "pareto": "report",
    "export": "report",
    "calibrate": "calibrate",
}


CUDNN_FLAG_HELP = ("cuDNN autotuning on CUDA: on (as timm's benchmark), off (cuDNN's heuristic choice: 2-3x faster "
                   "builds) or N (at most N algorithms per convolution)")


def cudnn_setting(flag: str, text: str) -> bool | int:
    """The value of a ``--cudnn-benchmark on|off|N`` flag as ``measure(cudnn_benchmark=...)`` takes it."""
    if text in ("on", "off"):
        return text == "on"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(flag, text, "on, off, or an integer >= 1 (at most that many algorithms)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowspace", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in dict.fromkeys(COMMANDS.values()):
        import_module(f"{__name__}.{module}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LowspaceError as err:
        print(f"lowspace {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lowspace {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
