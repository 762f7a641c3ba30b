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
        _check_section(key, theirs, ours, name)


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
