"""Checkpoint interop: official, timm and lowspace formats in (read through timm's loader and filter, EMA
weights preferred); timm format out; clear one-line errors."""
import pickle

import pytest
import timm
import torch

from lowspace.arch import CheckpointError, create_model, export_state_dict, load_checkpoint
from lowspace.arch.checkpoint import detect_format
from helpers import randomize


def timm_to_official(state_dict, model_with_mlp=True):
    """Rename timm keys to the official repository's naming, as its published checkpoints use."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("stem."):
            k = "backbone.input_stem.op_list." + k[len("stem."):]
        elif k.startswith("stages."):
            parts = k.split(".")
            k = "backbone.stages." + parts[1] + ".op_list." + ".".join(parts[2:])
        elif k.startswith("in_conv."):
            k = "head.op_list.0." + k[len("in_conv."):]
        elif k.startswith("pre_classifier.0."):
            k = "head.op_list.2.linear." + k[len("pre_classifier.0."):]
        elif k.startswith("pre_classifier.1."):
            k = "head.op_list.2.norm." + k[len("pre_classifier.1."):]
        elif k.startswith("classifier."):
            k = "head.op_list.3.linear." + k[len("classifier."):]
        k = k.replace(".attn.", ".total.0.0." if model_with_mlp else ".total.0.")
        k = k.replace(".mlp.", ".total.0.1.").replace(".local.", ".total.1.")
        k = k.replace(".conv_proj.conv.", ".conv_proj.0.").replace(".conv_proj.norm.", ".conv_proj.1.")
        k = k.replace(".pwise.", ".pwise.0.")
        out[k] = v
    return out


def _logits(model, seed=3, size=96):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size))


@pytest.mark.parametrize("name, with_mlp", [("b1", True), ("e3", False), ("e1", True)])
def test_official_checkpoint_loads(name, with_mlp):
    ref = randomize(timm.create_model(f"lowformer_{name}")).eval()
    official = timm_to_official(ref.state_dict(), with_mlp)
    assert detect_format(official) == "official"
    ours = create_model(name)
    report = load_checkpoint(ours, {"state_dict": official})
    assert report.ok and report.format == "official" and report.loaded == len(official)
    assert torch.allclose(_logits(ours), _logits(ref), atol=1e-5)


def test_official_opseq_head_variant():
    ref = randomize(timm.create_model("lowformer_b0")).eval()
    official = {k.replace("head.op_list.", "head.opseq.op_list."): v
                for k, v in timm_to_official(ref.state_dict()).items()}
    ours = create_model("b0")
    load_checkpoint(ours, official)
    assert torch.allclose(_logits(ours), _logits(ref), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_files_and_export_to_timm(tmp_path, suffix):
    ours = randomize(create_model("b15"), seed=5).eval()
    path = tmp_path / f"w{suffix}"
    sd = export_state_dict(ours, format="timm", path=path)
    ref = timm.create_model("lowformer_b15")
    ref.load_state_dict(sd, strict=True)
    assert torch.allclose(_logits(ours), _logits(ref), atol=1e-5)
    again = create_model("b15", pretrained=path)
    assert torch.allclose(_logits(again), _logits(ours), atol=1e-6)
    own = tmp_path / f"own{suffix}"
    export_state_dict(ours, format="lowspace", path=own)
    third = create_model("b15")
    assert load_checkpoint(third, own).format == "lowspace"
    assert torch.allclose(_logits(third), _logits(ours), atol=1e-6)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_ddp_and_compile_prefixes_and_wrappers(prefix):
    ours = randomize(create_model("b0"), seed=2)
    wrapped = {"model": {prefix + k: v for k, v in ours.state_dict().items()}}
    fresh = create_model("b0")
    assert load_checkpoint(fresh, wrapped).ok
    assert torch.allclose(_logits(fresh), _logits(ours), atol=1e-6)


@pytest.mark.parametrize("ema_key", ["state_dict_ema", "model_ema"])
def test_ema_weights_are_preferred_in_files_and_dicts(tmp_path, ema_key):
    raw, ema = randomize(create_model("e1"), seed=1), randomize(create_model("e1"), seed=2)
    checkpoint = {"state_dict": raw.state_dict(), ema_key: ema.state_dict(), "epoch": 3}
    path = tmp_path / "train.pth"
    torch.save(checkpoint, path)
    for source in (checkpoint, path):
        model = create_model("e1")
        load_checkpoint(model, source)
        assert torch.allclose(_logits(model), _logits(ema), atol=1e-6)


def test_mismatch_reports_keys():
    ref = timm.create_model("lowformer_b0", num_classes=10)
    ours = create_model("b0")
    shape_error = r"wrongly shaped: head\.classifier\.weight checkpoint \(10, 1600\)"
    with pytest.raises(CheckpointError, match=shape_error) as err:
        load_checkpoint(ours, ref.state_dict())
    assert "\n" not in str(err.value)
    partial = dict(list(ref.state_dict().items())[:-5])
    partial["stages.9.0.extra.weight"] = torch.zeros(1)
    report = load_checkpoint(ours, partial, strict=False)
    assert not report.ok and report.missing and report.unexpected == ["stages.9.0.extra.weight"]
    assert "missing" in report.describe() and "unexpected" in report.describe()


def test_pretrained_path_with_other_classes_and_channels(tmp_path):
    ref = randomize(timm.create_model("lowformer_b0"), seed=7)
    path = tmp_path / "b0.pth"
    torch.save(ref.state_dict(), path)
    model = create_model("b0", pretrained=path, num_classes=5, in_chans=1)
    assert model.head.classifier.out_features == 5 and model.stem.conv.conv.in_channels == 1
    assert torch.allclose(model.head.fc.weight, ref.pre_classifier[0].weight)
    assert torch.allclose(model.stem.conv.conv.weight, ref.stem[0].conv.weight.sum(1, keepdim=True))


def test_unsafe_or_unreadable_files_give_clear_errors(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="cannot be read as weights") as err:
        load_checkpoint(create_model("b0"), evil)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(create_model("b0"), tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="none of the known formats"):
        load_checkpoint(create_model("b0"), {"foo.weight": torch.zeros(1)})


def test_export_rejects_architectures_timm_cannot_express():
    from lowspace import ArchConfig
    d = create_model("b0").cfg.to_dict()
    d["stages"][3]["attention"]["upsample"] = "interpolate"
    model = create_model(ArchConfig.from_dict(d))
    with pytest.raises(CheckpointError, match="no timm LowFormer equivalent"):
        export_state_dict(model, format="timm")
    assert export_state_dict(model, format="lowspace")
