"""Weight import / export between lowspace, timm and the official LowFormer code.

Formats (detected from the keys):

* ``lowspace``: our own module names (``stem.conv.conv.weight``, ``stages.2.blocks.0.attn.qkv.weight``).
* ``timm``: ``timm.models.lowformer`` names (``stem.0.conv.weight``, ``stages.2.1.attn.main.1.pwise.weight``).
* ``official``: the authors' code (``backbone.input_stem.op_list...``, ``head.op_list...`` or
  ``head.opseq...``). timm's own filter (``timm.models.lowformer.checkpoint_filter_fn``) renames it to timm
  names, then ours apply.

Files are read by ``timm.models.load_state_dict`` (``torch.load(weights_only=True)`` or safetensors: no
arbitrary object is unpickled). A checkpoint holding several state dicts gives, as in timm, the first of
``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``: **EMA weights are preferred**. DDP and
``torch.compile`` prefixes (``module.``, ``_orig_mod.``) are removed (``timm.models.clean_state_dict``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from timm.models import clean_state_dict, load_state_dict
from timm.models.lowformer import checkpoint_filter_fn

from ..errors import LowspaceError
from ..io import atomic_save
from .blocks import LowFormerBlock
from .model import LowFormer

FORMATS = ("lowspace", "timm", "official")


class CheckpointError(LowspaceError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` found: the detected format and every key that did not fit."""

    format: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 8) -> str:
        parts = [f"format {self.format}: {self.loaded} tensors fit"]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} {label}: " + ", ".join(items[:limit]) + more)
        if self.mismatched:
            shown = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:limit]]
            parts.append(f"{len(self.mismatched)} wrongly shaped: " + "; ".join(shown))
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- mapping
_CONV_LEAF = [  # lowspace leaf name -> timm leaf name, inside FusedMBConv / MBConv / ConvNormAct
    ("conv1.conv.", "spatial_conv.conv."), ("conv1.bn.", "spatial_conv.norm."),
    ("conv2.conv.", "point_conv.conv."), ("conv2.bn.", "point_conv.norm."),
    ("expand.conv.", "inverted_conv.conv."), ("dw.conv.", "depth_conv.conv."),
    ("project.conv.", "point_conv.conv."), ("project.bn.", "point_conv.norm."),
]


def _conv_leaf(rest: str) -> str:
    for ours, theirs in _CONV_LEAF:
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    raise KeyError(rest)


def _block_to_timm(block: LowFormerBlock, rest: str) -> str:
    attn_prefix = "attn.main.1." if isinstance(block.attn_norm, torch.nn.GroupNorm) else "attn.main."
    simple = {"attn_norm.": "attn.main.0.", "mlp_norm.": "mlp.main.0.", "mlp.fc1.": "mlp.main.1.",
              "mlp.fc2.": "mlp.main.3.", "attn.proj.conv.": attn_prefix + "conv_proj.conv.",
              "attn.proj.bn.": attn_prefix + "conv_proj.norm.", "attn.qkv.": attn_prefix + "pwise.",
              "attn.up.": attn_prefix + "upsampling."}
    for ours, theirs in simple.items():
        if rest.startswith(ours):
            if ours == "attn.up." and block.attn.interpolate:
                raise KeyError(rest)  # interpolate upsampling has no timm counterpart
            return theirs + rest[len(ours):]
    if rest.startswith("local."):
        return "local.main." + _conv_leaf(rest[len("local."):])
    raise KeyError(rest)


def _key_to_timm(model: LowFormer, key: str) -> str:
    m = re.match(r"stem\.conv\.(conv|bn)\.(.+)", key)
    if m:
        return f"stem.0.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(2)}"
    m = re.match(r"stem\.blocks\.(\d+)\.(.+)", key)
    if m:
        return f"stem.{int(m.group(1)) + 1}.main.{_conv_leaf(m.group(2))}"
    m = re.match(r"stages\.(\d+)\.downsample\.(.+)", key)
    if m:
        return f"stages.{m.group(1)}.0.main.{_conv_leaf(m.group(2))}"
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if m:
        s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        stage = model.stages[s]
        index = j + (1 if stage.downsample is not None else 0)
        block = stage.blocks[j]
        if isinstance(block, LowFormerBlock):
            return f"stages.{s}.{index}.{_block_to_timm(block, rest)}"
        return f"stages.{s}.{index}.main.{_conv_leaf(rest)}"
    head = {"head.conv.conv.": "in_conv.conv.", "head.conv.bn.": "in_conv.norm.", "head.fc.": "pre_classifier.0.",
            "head.norm.": "pre_classifier.1.", "head.classifier.": "classifier."}
    for ours, theirs in head.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def _timm_pairs(model: LowFormer) -> tuple[dict[str, str], list[str]]:
    """(lowspace key -> timm key, keys with no timm counterpart)."""
    out, unmappable = {}, []
    for key in model.state_dict():
        try:
            out[key] = _key_to_timm(model, key)
        except KeyError:
            unmappable.append(key)
    return out, unmappable


def timm_key_map(model: LowFormer) -> dict[str, str]:
    """lowspace state-dict key -> timm key for every tensor of ``model``.

    Raises CheckpointError if the architecture has parts timm's LowFormer cannot express."""
    out, unmappable = _timm_pairs(model)
    if unmappable:
        raise CheckpointError("this architecture has no timm LowFormer equivalent for: " + ", ".join(unmappable[:5]))
    return out


# ---------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch file (weights only), read by ``timm.models.load_state_dict``
    (EMA weights first, prefixes removed; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state_dict = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear message
        message = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path}: cannot be read as weights ({type(err).__name__}: {message})"
                              ) from None
    return _tensors_only(state_dict, str(path))


def unwrap_state_dict(obj, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The tensors of an in-memory checkpoint, chosen and cleaned as :func:`read_state_dict` does a file's."""
    if isinstance(obj, Mapping):
        wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        obj = clean_state_dict(dict(obj[wrapper] if wrapper else obj))
    return _tensors_only(obj, source)


# The containers timm.models.load_state_dict unwraps, in its order of preference (EMA first).
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")


def _tensors_only(state_dict, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: expected a mapping of names to tensors")
    return dict(state_dict)


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``lowspace``, ``timm`` or ``official`` from the key names."""
    keys = list(state_dict)
    if any(k.startswith(("backbone.", "head.op_list.", "head.opseq.")) for k in keys):
        return "official"
    if any(k.startswith("stem.conv.") or ".blocks." in k for k in keys):
        return "lowspace"
    if any(k.startswith("stem.0.") or k.startswith("pre_classifier.") for k in keys):
        return "timm"
    raise CheckpointError("state dict keys match none of the known formats (lowspace, timm, official); "
                          f"first keys: {keys[:3]}")


def to_lowspace_keys(model: LowFormer, state_dict: Mapping[str, torch.Tensor], fmt: str | None = None):
    """Rename a state dict of any known format to ``model``'s keys. Returns (renamed dict, format).
    Keys with no counterpart in ``model`` are kept under their original (foreign) name."""
    fmt = fmt or detect_format(state_dict)
    if fmt == "lowspace":
        return dict(state_dict), fmt
    if fmt == "official":
        state_dict = checkpoint_filter_fn(dict(state_dict), model)
    inverse = {theirs: ours for ours, theirs in _timm_pairs(model)[0].items()}
    return {inverse.get(k, k): v for k, v in state_dict.items()}, fmt


def load_checkpoint(model: LowFormer, path_or_state_dict, strict: bool = True) -> LoadReport:
    """Load official, timm or lowspace weights into ``model``.

    With ``strict`` any missing, unexpected or wrongly shaped key raises CheckpointError listing them;
    otherwise the fitting tensors are loaded and the returned report lists the rest.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        sd = read_state_dict(path_or_state_dict)
    else:
        sd = unwrap_state_dict(path_or_state_dict)
    renamed, fmt = to_lowspace_keys(model, sd)
    own = model.state_dict()
    report = LoadReport(format=fmt)
    usable = {}
    for k, v in renamed.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in renamed]
    report.loaded = len(usable)
    if strict and not report.ok:
        raise CheckpointError("checkpoint does not fit the model: " + report.describe())
    model.load_state_dict(usable, strict=False)
    return report


def export_state_dict(model: LowFormer, format: str = "timm", path: str | Path | None = None) -> dict:
    """The model's weights in ``timm`` or ``lowspace`` naming; written to ``path`` when given
    (``.safetensors``, else a torch file), atomically."""
    if format not in ("timm", "lowspace"):
        raise CheckpointError(f"export format {format!r}: allowed 'timm', 'lowspace'")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if format == "timm":
        key_map = timm_key_map(model)
        sd = {key_map[k]: v for k, v in sd.items()}
    if path is not None:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            atomic_save(path, lambda tmp: save_file(sd, str(tmp)))
        else:
            atomic_save(path, lambda tmp: torch.save(sd, tmp))
    return sd
