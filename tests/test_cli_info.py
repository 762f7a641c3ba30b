"""`lowspace info`: readable table for presets and configs; clean errors for bad ones."""
import pytest

from lowspace.cli import main
from lowspace.cli.info import describe


def test_info_prints_params_and_shapes(capsys):
    assert main(["info", "b1", "--resolution", "199"]) == 0
    out = capsys.readouterr().out
    assert "17,936,312" in out and "256x7x7" in out and "128x13x13" in out and "2x32" in out


def test_describe_rows():
    info = describe("b3")
    assert info["params"] == 57_086_920
    names = [r["name"] for r in info["rows"]]
    assert names == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(r["params"] for r in info["rows"]) == info["params"]
    assert info["rows"][3]["attention_tokens"] == 49 and info["rows"][4]["heads"] == 8


@pytest.mark.parametrize("text, fragment", [
    ("stages:\n  - {width: 32, depht: 1}\n", "did you mean 'depth'"),
    ("stages:\n  - {width: 32, depth: 1, block: lowformer, attention: {heads: 3}}\n", "do not divide"),
])
def test_info_reports_validation_errors(tmp_path, capsys, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err and "Traceback" not in err
