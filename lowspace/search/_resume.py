"""Resume rules: a study can only be continued with the settings that make its results comparable.

A new study records the whole search config (``lowspace_config``) and the proxy schedule with every
default filled in (``proxy_resolved``). Resuming compares against them: the mode, the objectives, the
latency protocol, the proxy schedule and the data options must be the same. A protocol field lowspace
added after the study was made takes the value such studies were timed with
(:data:`PROTOCOL_BEFORE_RECORDED`); a proxy field a study did not record is resumed with today's value
and a warning.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

from ..errors import ConfigError
from .settings import SearchConfig

CONFIG_ATTR = "lowspace_config"
PROXY_ATTR = "proxy_resolved"
SPLIT_ATTR = "validation_split"
# proxy fields that came with held-out validation; a study made before them validated on the test split
SPLIT_FIELDS = ("split_seed", "eval_split")

# Protocol fields whose default changed when they were added: what studies that did not record them used.
PROTOCOL_BEFORE_RECORDED = {"cudnn_benchmark": True}


def stored_form(value):
    """``value`` as it reads back from JSON (tuples become lists, unknown objects their str)."""
    return json.loads(json.dumps(value, default=str))


def resolved_proxy(config: SearchConfig) -> dict:
    """The proxy schedule with every default filled in, as recorded in a new study."""
    from .trial import _make_schedule
    try:
        return stored_form(dataclasses.asdict(_make_schedule(dict(config.proxy))))
    except ConfigError:  # an invalid schedule is reported by the trial pipeline, which builds it too
        return stored_form(dict(config.proxy))


def check_compatible(stored: dict, config: SearchConfig, name: str, proxy_resolved: dict | None = None) -> None:
    """Raise ConfigError if ``config`` may not resume the study ``name`` that recorded ``stored``."""
    mine = config.to_dict()
    for key in ("mode", "objectives"):
        if stored.get(key) != mine.get(key):
            raise ConfigError(key, mine.get(key), f"study {name!r} was created with {key} {stored.get(key)!r}; "
                                                  "resume with the same value or pick another --study-name")
    for key in ("protocol", "proxy", "data"):
        theirs, ours = stored.get(key) or {}, stored_form(mine.get(key) or {})
        if key == "protocol":
            theirs = {**PROTOCOL_BEFORE_RECORDED, **theirs}
        if key == "proxy" and proxy_resolved is not None:
            theirs, ours = proxy_resolved, resolved_proxy(config)
            # a study made before held-out validation: unsplit_note() says so in one line
            theirs = {**{k: ours.get(k) for k in SPLIT_FIELDS}, **theirs}
        _check_section(key, theirs, ours, name)
    from ._promotion import check_resume
    check_resume(stored, config, name)


def split_settings(config: SearchConfig) -> dict:
    """The validation split a new study is made with; the trial pipeline adds its size and index hash once
    it has read the data."""
    proxy = resolved_proxy(config)
    return dict(split=proxy.get("eval_split", "holdout"), source="train", val_per_class=proxy.get("val_per_class"),
                seed=proxy.get("split_seed", 0))


def unsplit_note(user_attrs: dict, name: str) -> str | None:
    """One line about a study made before the search held out its validation images (None for others)."""
    if SPLIT_ATTR in user_attrs or CONFIG_ATTR not in user_attrs:
        return None
    return (f"study {name!r} was made before lowspace held out validation images: its accuracies were measured on "
            f"the data set's test split, which final evaluation reads too; new trials validate on held-out training "
            f"images, so old and new accuracies are not comparable (a new --study-name starts a clean search)")


def _check_section(key: str, theirs: dict, ours: dict, name: str) -> None:
    changed = sorted(k for k in theirs if theirs[k] != ours.get(k))
    # Settings the study did not record: the protocol is stored whole, so a missing field was added to
    # lowspace after the study was made; so was a proxy field of a study made before proxy_resolved
    # existed. The data options are stored as given: a new one is a change.
    unrecorded = sorted(set(ours) - set(theirs))
    if key == "data":
        changed += unrecorded
    if changed:
        raise ConfigError(f"{key}.{changed[0]}", ours.get(changed[0]),
                          f"study {name!r} was created with {key} {theirs!r}; results would not be "
                          "comparable: resume with the same value or pick another --study-name")
    for k in unrecorded:
        warnings.warn(f"study {name!r} recorded no {key}.{k}; resuming with {key}.{k}={ours[k]!r}", stacklevel=3)
