"""The lowspace command itself: --version, a --help that imports no heavy library, plain and complete help
texts, the search header in random mode."""
import argparse
import json
import re
import subprocess
import sys

import pytest

import lowspace
from lowspace.cli import COMMANDS, build_parser, main
from lowspace.errors import LowspaceError

HEAVY = ("torch", "timm", "optuna", "numpy", "pandas", "plotly")


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_and_version_import_no_heavy_library():
    out = _run_python(
        "import json, sys, contextlib, io\n"
        "import lowspace.cli\n"
        "texts = []\n"
        "for argv in (['--help'], ['--version']):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            lowspace.cli.main(argv)\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, exc.code\n"
        "    texts.append(buf.getvalue())\n"
        f"print(json.dumps([texts, [m for m in {HEAVY!r} if m in sys.modules]]))\n")
    (help_text, version), heavy = json.loads(out)
    assert heavy == []
    assert version.strip() == f"lowspace {lowspace.__version__}"
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\b", help_text, re.M), name


def test_importing_lowspace_does_not_import_torch():
    out = _run_python(f"import sys, lowspace; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out.strip() == "[]"


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action


def test_each_command_is_described_as_its_table_entry():
    """The top-level help lists each command with the help its own module gives it."""
    _, action = _subparsers()
    shown = {choice.dest: choice.help for choice in action._choices_actions}
    assert shown == {name: text for name, (_, text) in COMMANDS.items()}


_REST = re.compile(r"``|:[a-z]+:`")


def test_help_texts_have_no_rest_markup():
    parser, action = _subparsers()
    texts = [parser.description] + [c.help for c in action._choices_actions]
    for sub in action.choices.values():
        texts += [sub.description, sub.epilog] + [a.help for a in sub._actions]
    leftovers = [t for t in texts if t and _REST.search(t)]
    assert leftovers == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help(command):
    _, action = _subparsers()
    missing = [a.option_strings or a.dest for a in action.choices[command]._actions if not a.help]
    assert missing == []


# ==================================================================== lowspace search
SEARCH = ["search", "--space", "demo", "--data", "synthetic", "--epochs", "2", "--n-trials", "1", "--device", "cpu",
          "--latency-device", "cpu"]


def _stop(*args, **kwargs):
    raise LowspaceError("stopped before the study (test)")


def test_random_mode_header_names_the_random_sampler(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lowspace.search.run_search", _stop)
    assert main([*SEARCH, "--mode", "random"]) == 2
    err = capsys.readouterr().err
    assert "mode random, sampler random" in err and "tpe" not in err


def test_random_mode_refuses_another_sampler(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SEARCH, "--mode", "random", "--sampler", "tpe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowspace search: error: command line: sampler: got 'tpe'; mode random")
    assert "\n" not in err and list(tmp_path.iterdir()) == []


def test_one_epoch_search_fits_the_default_warmup_in(tmp_path, monkeypatch, capsys):
    """--epochs 1 without a warm-up: the proxy's default 1-epoch warm-up shrinks to fit; one the user sets
    is kept, and is an error naming it when it does not fit."""
    monkeypatch.chdir(tmp_path)
    seen = {}

    def capture(config, **kwargs):
        from lowspace.train import proxy_recipe
        seen["recipe"] = proxy_recipe(config.proxy)
        raise LowspaceError("stopped before the study (test)")
    monkeypatch.setattr("lowspace.search.run_search", capture)
    one_epoch = [*SEARCH[:SEARCH.index("--epochs")], "--epochs", "1", *SEARCH[SEARCH.index("--epochs") + 2:]]
    assert main(one_epoch) == 2 and "stopped before the study (test)" in capsys.readouterr().err
    assert (seen["recipe"].epochs, seen["recipe"].warmup_epochs) == (1, 0.1)
    seen.clear()
    assert main([*one_epoch, "--set", "proxy.warmup_epochs=1"]) == 2
    assert "command line: proxy.warmup_epochs: got 1.0; must be < epochs (1)" in capsys.readouterr().err
    assert seen == {}


def test_preflight_errors_name_the_config_file_line(tmp_path, monkeypatch, capsys):
    """A bad proxy value is found by building the proxy schedule, after the config has been read; the error
    still names the file and line it came from, or the flag."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("space: demo\ndevice: cpu\ndata: {dataset: synthetic}\n"
                                     "proxy:\n  epochs: 2\n  base_lr: -0.5\n")
    assert main(["search", "--config", "s.yaml"]) == 2
    assert "s.yaml, line 6: proxy.base_lr: got -0.5" in capsys.readouterr().err
    assert main([*SEARCH, "--set", "proxy.base_lr=-0.5"]) == 2
    assert "error: command line: proxy.base_lr: got -0.5" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
