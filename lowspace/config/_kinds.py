"""Which kind of lowspace file a YAML mapping is, judged by its top-level keys.

A search space given where an architecture is expected (or the reverse) would otherwise fail on its first
unknown key ("params: unknown key; did you mean 'head'?"), which does not tell the user what went wrong.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Mapping

from ..errors import NO_VALUE, ConfigError

if TYPE_CHECKING:
    from ._yaml import YamlDocument

# kind (a config class's ``config_kind``) -> (top-level keys that mark a file of that kind, where it goes)
FILE_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "architecture config": (("stages", "stem", "head", "in_chans", "num_classes", "mlp_act"),
                            "use it with lowspace info, bench, train or eval, or as a search space's base:"),
    "search space": (("params", "points"), "use it with lowspace search --space"),
    "search config": (("space", "mode", "n_trials", "objectives", "sampler", "study_name", "storage", "proxy",
                       "protocol", "constraints", "early_stopping", "heartbeat"),
                      "use it with lowspace search --config"),
    "recipe": (("epochs", "base_lr", "warmup_epochs", "batch_size", "accumulation", "weight_decay",
                         "mixup_alpha", "cutmix_alpha", "label_smoothing", "drop_path", "resolutions", "ema"),
                        "use it with lowspace train --recipe"),
}


def article(noun: str) -> str:
    """``noun`` with "a" or "an" in front."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def file_kind(data: Mapping) -> str | None:
    """The kind whose marking keys ``data`` has most of (None if it has none)."""
    scores = {kind: sum(key in data for key in keys) for kind, (keys, _) in FILE_KINDS.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] else None


def check_kind(doc: "YamlDocument", expected: str, known_keys: Collection[str]) -> None:
    """Raise a ConfigError saying what the mapping in ``doc`` is, if it has keys a file of the ``expected``
    kind does not know and looks like a file of another kind. A file of the expected kind always passes."""
    data = doc.data
    if not isinstance(data, Mapping) or all(key in known_keys for key in data):
        return
    kind = file_kind(data)
    if kind is None or kind == expected:
        return
    keys, usage = FILE_KINDS[kind]
    found = [key for key in data if key in keys]
    raise ConfigError("", NO_VALUE, f"this is {article(kind)}, not {article(expected)} (it has "
                      f"{', '.join(key + ':' for key in found)}); {usage}", doc.where(found[0]))
