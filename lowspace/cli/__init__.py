"""The lowspace command: a thin layer over the Python API, one module per subcommand.

Only the module of the subcommand being run is imported, so lowspace --help and --version start quickly.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, dataclass
from importlib import import_module
from typing import Any, Callable, Mapping, Sequence

from .. import __version__
from ..config import field_info, parse_assignment, parse_value
from ..errors import NO_VALUE, ConfigError, LowspaceError

# subcommand -> (module under lowspace.cli whose ``add_parsers(subparsers)`` adds it, its one-line help);
# the modules of several subcommands are listed together, in this order
COMMANDS = {
    "info": ("info", "describe an architecture (params, stages, shapes, attention tokens)"),
    "bench": ("bench", "measure params, MACs, latency and throughput (presets, configs, timm models)"),
    "train": ("train", "train an architecture with a paper recipe (one process or torchrun)"),
    "eval": ("train", "top-1 / top-5 of a checkpoint on a data set's test split (or the held-out one)"),
    "search": ("search", "run or resume a latency-aware architecture search (Optuna study)"),
    "pareto": ("report", "Pareto front, hypervolume and trial tables of a study (HTML, PNG, CSV)"),
    "export": ("report", "write trials' architectures as YAML configs that lowspace train reads (with --retrain: "
                         "their final evaluation over several seeds)"),
    "calibrate": ("calibrate", "rank agreement of short proxy schedules with the full schedule"),
}


def command_help(name: str) -> str:
    """The one-line help of subcommand ``name``."""
    return COMMANDS[name][1]


CUDNN_FLAG_HELP = ("cuDNN autotuning on CUDA: on (as timm's benchmark), off (cuDNN's heuristic choice: faster "
                   "builds) or N (at most N algorithms per convolution)")


def cudnn_setting(flag: str, text: str) -> bool | int:
    """The value of a ``--cudnn-benchmark on|off|N`` flag as ``measure(cudnn_benchmark=...)`` takes it."""
    if text in ("on", "off"):
        return text == "on"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(flag, text, "on, off, or an integer >= 1 (at most that many algorithms)")


# ==================================================================== config flags
@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config field: ``Flag("--n-trials", "n_trials", ...)`` makes
    ``--n-trials 20`` mean ``--set n_trials=20``. The value is read as ``--set`` reads it (typed from the
    config class) unless ``parse`` is given; a ``const`` makes a switch that sets that value."""

    name: str
    path: str
    help: str
    const: Any = NO_VALUE
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


SET_HELP = ("set any config field by its dotted key, value in YAML (e.g. proxy.epochs=2, "
            "objectives=[accuracy,latency]); repeatable, applied after the other flags")


def add_config_flags(parser: argparse.ArgumentParser, config_cls, groups: Mapping[str, Sequence[Flag]]) -> None:
    """Add ``groups`` of flags (title -> flags; "" for the parser's own group) and ``--set`` to ``parser``.
    Help texts end with the field's allowed values and default, read from the config class."""
    for title, flags in groups.items():
        group = parser.add_argument_group(title) if title else parser
        for flag in flags:
            info = field_info(config_cls, flag.path)
            if flag.const is not NO_VALUE:
                group.add_argument(flag.name, dest=flag.dest, action="store_const", const=flag.const, default=None,
                                   help=f"{flag.help} [{flag.path}: {_plain(flag.const)}]")
                continue
            choices = info.constraint.choices
            metavar = flag.metavar or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
            default = "" if info.default is MISSING else f", default {_plain(info.default)}"
            group.add_argument(flag.name, dest=flag.dest, default=None, metavar=metavar,
                               help=f"{flag.help} [{flag.path}{default}]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def config_overrides(args: argparse.Namespace, config_cls, groups: Mapping[str, Sequence[Flag]]) -> dict[str, Any]:
    """The dotted overrides of the flags given on the command line, then of each ``--set``."""
    out: dict[str, Any] = {}
    for flags in groups.values():
        for flag in flags:
            text = getattr(args, flag.dest)
            if text is None:
                continue
            if flag.const is not NO_VALUE:
                out[flag.path] = flag.const
            elif flag.parse is not None:
                out[flag.path] = flag.parse(text)
            else:
                out[flag.path] = parse_value(text, field_info(config_cls, flag.path).type, flag.name)
    for item in args.set:
        key, value = parse_assignment(item, config_cls)
        out[key] = value
    return out


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of the lowspace command. Only the module of ``command`` is imported (None: every one,
    "": none); the other subcommands get their name and one-line help. Help texts are plain text (docstrings used as
    help lose their reST markup)."""
    parser = argparse.ArgumentParser(prog="lowspace", description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--version", action="version", version=f"lowspace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    loaded: set[str] = set()
    for name, (module, text) in COMMANDS.items():
        if module in loaded:
            continue
        if command is None or COMMANDS.get(command, ("",))[0] == module:
            import_module(f"{__name__}.{module}").add_parsers(sub)
            loaded.add(module)
        else:
            sub.add_parser(name, help=text)
    _plain_help(parser)
    return parser


_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str) -> str:
    """``text`` without reST markup: ``x`` and :role:`x` become x."""
    return _REST_LITERAL.sub(r"\1", _REST_ROLE.sub(r"\1", text))


def _plain_help(parser: argparse.ArgumentParser) -> None:
    for attr in ("description", "epilog"):
        if getattr(parser, attr):
            setattr(parser, attr, plain_text(getattr(parser, attr)))
    for action in parser._actions:
        if action.help:
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help or "")
            for subparser in dict.fromkeys(action.choices.values()):
                _plain_help(subparser)


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand of a command line (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv) or "")
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
