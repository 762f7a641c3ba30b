"""Weights that do not fit, found before any work: a run resumed with another architecture or other data
(shapes from the checkpoint's header), and weights that are integers or not finite."""
from pathlib import Path

import pytest
import torch

from lowspace.arch import LowFormer, resolve_config
from lowspace.arch.checkpoint import CheckpointError
from lowspace.train.checkpoint import (ResumeError, check_resume, load_checked_weights, save_checkpoint,
                                       weight_problems)

ARCH = Path(__file__).parent / "bad_inputs" / "files" / "arch"


@pytest.fixture
def tiny():
    return resolve_config(str(ARCH / "tiny.yaml")).replace(num_classes=3)


def _run(out: Path, cfg) -> Path:
    """A run directory holding one checkpoint of ``cfg`` and the config it started with."""
    save_checkpoint(out, 1, LowFormer(cfg, init="torch").state_dict(), None, {"step": 1})
    cfg.to_yaml(out / "config.yaml")
    return out


def test_resume_checks_the_architecture_and_the_data_from_the_header(tmp_path, tiny):
    out = _run(tmp_path / "run", tiny)
    check_resume(out, tiny.replace(num_classes=10))  # before the data: the run's own classes are compared
    check_resume(out, tiny, 3, 3)
    wide = resolve_config(str(ARCH / "tiny_wide.yaml"))
    with pytest.raises(ResumeError, match=r"step_00000001: was trained with architecture tiny, not tiny_wide "
                                          r"\(\d+ tensors fit; \d+ wrongly shaped: "):
        check_resume(out, wide)
    with pytest.raises(ResumeError, match="was trained on 3 classes of 3 channels, the data has 5 of 3"):
        check_resume(out, tiny, 5, 3)


def test_resume_without_a_checkpoint_checks_nothing(tmp_path, tiny):
    check_resume(tmp_path / "empty", tiny)


def test_integer_and_nonfinite_weights_are_named(tiny):
    model = LowFormer(tiny, init="torch")
    state = model.state_dict()
    assert weight_problems(state, model) == []  # BatchNorm's integer counters are not weights
    ints = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()}
    problem, = weight_problems(ints, model)
    assert "are int8, not floating point" in problem and "quantized" in problem
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[:2] = float("nan")
    problem, = weight_problems(state, model)
    assert problem.startswith(f"1 tensor(s) hold NaN or infinite values (e.g. {key}: 2 of ")


def test_bad_weights_are_an_error_or_with_allow_bad_a_warning(tmp_path, tiny, capsys):
    model = LowFormer(tiny, init="torch")
    state = {k: torch.full_like(v, float("inf")) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"w\.pth: .* NaN or infinite values .*--allow-bad-weights"):
        load_checked_weights(model, path)
    load_checked_weights(model, path, allow_bad=True)
    assert "warning: " in capsys.readouterr().err
    assert torch.isinf(next(p for p in model.parameters())).all()
