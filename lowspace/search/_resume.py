"""Resume rules: a study can only be continued with the settings that make its results comparable.

A new study records the whole search config (``lowspace_config``) and the proxy schedule with every
default filled in (``proxy_resolved``), and the deploy switches its latencies are timed with
(``deploy_resolved``). Resuming compares against them: the mode, the objectives, the latency protocol (and
the deploy switches it applies, so a changed default of a later lowspace is caught), the proxy schedule, the
data options and (pareto mode) the early stopping and its rungs must be the same. A protocol field lowspace
added after the study was made takes the value such studies were timed with
(:data:`PROTOCOL_BEFORE_RECORDED`); a proxy field a study did not record is resumed with today's value and a
warning; a study that recorded no deploy switches is not checked for them.

The study also records a hash of its search space (``space_hash``: the parameters, the base architecture
and the recipe as parsed, not the formatting, name, description or named points); a resume with another
space is refused before any trial runs, as is one whose parameters do not fit the trials already in the
study (studies made before the hash was recorded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

from ..errors import ConfigError
from .settings import SearchConfig

CONFIG_ATTR = "lowspace_config"
PROXY_ATTR = "proxy_resolved"
DEPLOY_ATTR = "deploy_resolved"
SPACE_HASH_ATTR = "space_hash"
_SPACE_KEYS_IGNORED = ("name", "description", "points")
SPLIT_ATTR = "validation_split"
# proxy fields that came with held-out validation; a study made before them validated on the test split
SPLIT_FIELDS = ("split_seed", "eval_split")

# Protocol fields whose default changed when they were added: what studies that did not record them used.
PROTOCOL_BEFORE_RECORDED = {"cudnn_benchmark": True}


def stored_config(study) -> dict:
    """The search config a study recorded when it was created (empty for a study lowspace did not make)."""
    return study.user_attrs.get(CONFIG_ATTR) or {}


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


def resolved_deploy(config: SearchConfig) -> dict | None:
    """The deploy switches the search times latencies with, as ``deploy()`` applies them on the latency device
    (defaults and ``auto`` values decided), as recorded in a new study; None when it does not time the deploy
    path (or the protocol is invalid: the trial pipeline reports that)."""
    from .trial import latency_settings, measurement_protocol
    device, settings = latency_settings(config)
    try:
        protocol, _, _ = measurement_protocol(settings, device)
    except ConfigError:
        return None
    return stored_form(protocol.record(0, 0)["deploy_resolved"])


def check_compatible(stored: dict, config: SearchConfig, name: str, proxy_resolved: dict | None = None,
                     deploy_resolved: dict | None = None) -> None:
    """Raise ConfigError if ``config`` may not resume the study ``name`` that recorded ``stored`` (and, when
    it recorded them, the resolved proxy schedule and deploy switches)."""
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
    if deploy_resolved is not None:
        _check_deploy(deploy_resolved, resolved_deploy(config) or {}, name)
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
    if unrecorded:  # one warning per section, however many fields
        warnings.warn(f"study {name!r} recorded no {', '.join(f'{key}.{k}' for k in unrecorded)}; resuming with "
                      + ", ".join(f"{key}.{k}={ours[k]!r}" for k in unrecorded), stacklevel=3)


def _check_deploy(theirs: dict, ours: dict, name: str) -> None:
    """A deploy default that changed since the study was made would time new trials differently. A switch
    the study did not record was added to lowspace since; switches ship off (their default keeps the function
    and the kernels as they were), so at its default it is no change."""
    from ..runtime import DeployOptions
    defaults = {f.name: f.default for f in dataclasses.fields(DeployOptions)}
    added = sorted(k for k in set(ours) - set(theirs) if ours[k] == defaults.get(k, object()))
    changed = sorted(k for k in set(theirs) | set(ours) if k not in added and theirs.get(k) != ours.get(k))
    if added and not changed:
        warnings.warn(f"study {name!r} recorded no deploy switch {', '.join(added)}; resuming with "
                      + ", ".join(f"{k}={ours[k]!r}" for k in added) + " (the default, off)", stacklevel=3)
    if changed:
        key = changed[0]
        raise ConfigError(f"protocol.deploy_resolved.{key}", ours.get(key),
                          f"study {name!r} timed its latencies with the deploy switch {key}={theirs.get(key)!r} "
                          f"(the default of the lowspace that made it); results would not be comparable: resume "
                          f"with that lowspace or pick another --study-name")


def space_hash(space) -> str:
    """A hash of what a search space samples and builds: its parameters, base architecture and recipe as
    parsed, and the parameters it holds fixed (not its formatting, comments, name, descriptions or named
    points)."""
    if space.text:
        from ..config import parse_yaml
        data = dict(parse_yaml(space.text, space.source, what="space").data)
    else:
        data = {"params": [dataclasses.asdict(p) for p in space.params], "base": space.base.to_dict(),
                "recipe": space.recipe}
    return _hash_space_data({**data, "fixed": space.fixed} if space.fixed else data)


def _hash_space_data(data: dict) -> str:
    data = {k: v for k, v in data.items() if k not in _SPACE_KEYS_IGNORED}
    if isinstance(data.get("params"), dict):
        data["params"] = {k: {f: v for f, v in spec.items() if f != "description"} if isinstance(spec, dict) else spec
                          for k, spec in data["params"].items()}
    blob = json.dumps(stored_form(data), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recorded_space_hash(user_attrs: dict) -> str | None:
    """The space hash a study recorded, or (studies made before it was recorded) one computed from the space
    text it stored; None if neither is there."""
    if user_attrs.get(SPACE_HASH_ATTR):
        return user_attrs[SPACE_HASH_ATTR]
    text = user_attrs.get("space_yaml")
    if not text:
        return None
    from ..config import parse_yaml
    try:
        data = parse_yaml(text, what="space").data
    except ConfigError:
        return None
    return _hash_space_data(dict(data)) if isinstance(data, dict) else None


def check_space(study, space, name: str, config_space: str) -> None:
    """Raise ConfigError if ``space`` is not the search space study ``name`` was made with, or if its
    parameters do not fit the distributions of the study's trials."""
    theirs, ours = recorded_space_hash(study.user_attrs), space_hash(space)
    way_out = "resume with the space it was made with or pick another --study-name"
    if theirs is not None and theirs != ours:
        raise ConfigError("space", config_space, f"study {name!r} was made with another search space or other "
                                                 f"space_fixed values (space hash {theirs}, this one {ours}); "
                                                 f"{way_out}")
    distributions = space.distributions()
    for t in study.get_trials(deepcopy=False):
        for param, dist in t.distributions.items():
            if param not in distributions or distributions[param] != dist:
                raise ConfigError("space", config_space,
                                  f"study {name!r} has trials whose parameter {param!r} is {dist}, which this space "
                                  f"{'does not have' if param not in distributions else 'defines otherwise'}; "
                                  f"{way_out}")
