"""Search spaces: a YAML schema of named parameters mapped onto ArchConfig fields.

A space file looks like this (see ``search_spaces/`` for complete ones)::

    name: lowformer
    base: b1                    # a preset name, a config YAML path, or an inline ArchConfig mapping
    recipe: b1                  # training recipe written into exported configs (default: the base's)
    params:
      width:                    # one value, written to several fields, scaled per field
        choices: [16, 20, 32]
        paths: {stem.width: 1, stages.0.width: 2, stages.1.width: 4, stages.2.width: 8, stages.3.width: 16}
      depth3: {low: 2, high: 8, path: stages.2.depth}          # int range (step, log allowed)
      head:                                                    # labelled choices with list values
        choices: {standard: [1536, 1600], wide: [2304, 2560]}
        path: head.widths
      attn4: {choices: [all, none], path: stages.3.attention.placement}
      stride4:                                                 # only sampled where attention is on
        choices: [1, 2]
        path: stages.3.attention.stride
        when: {attn4: {not: none}}
      stem_kind:                                               # each choice is a patch of several fields
        choices: {plain: {stem.depth: 0}, deep: {stem.depth: 1, stages.0.depth: 1}}
    points:                     # fixed assignments enqueued first; a point named like a preset must
      b1: {width: 16, ...}      # rebuild that preset exactly (same arch_id)

Paths are dotted ArchConfig fields; ``stages.*.x`` means every stage (stages whose optional block is
``null`` are skipped by a wildcard). A parameter whose ``when`` does not hold is not sampled and leaves the
base value in place. Errors name the file, the line and the key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..arch.config import ArchConfig
from ..arch.presets import data_dir, get_preset, preset_key, resolve_config
from ..config import YamlDocument, check_kind, parse_yaml, read_yaml
from ..errors import ConfigError, unknown_key_error

KIND = "search space"
SPACE_KEYS = ("name", "description", "base", "recipe", "params", "points")
PARAM_KEYS = ("choices", "low", "high", "step", "log", "type", "path", "paths", "when", "description")
_SCALARS = (type(None), bool, int, float, str)


def space_dir() -> Path:
    """Folder of the bundled search spaces (``LOWSPACE_SPACES`` overrides)."""
    return data_dir("LOWSPACE_SPACES", "search_spaces", "_spaces")


def builtin_spaces() -> list[str]:
    """Names of the bundled search spaces."""
    d = space_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


# ==================================================================== ArchConfig path handling
def _field_type(tp, name: str):
    """Type of field ``name`` of dataclass ``tp`` (None if no such field)."""
    hints = typing.get_type_hints(tp)
    return hints.get(name)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _check_path(path: str, base: ArchConfig) -> None:
    """Raise ConfigError (with the reason) unless ``path`` names a field of ``base``'s config tree."""
    tp: Any = ArchConfig
    value: Any = base
    parts = path.split(".")
    for i, part in enumerate(parts):
        tp = _unwrap_optional(tp)
        where = ".".join(parts[:i]) or "<root>"
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise unknown_key_error(where if i else "", part, names)
            tp = _field_type(tp, part)
            value = getattr(value, part, None) if value is not None else None
        elif typing.get_origin(tp) is tuple:
            n = len(value) if value is not None else None
            if part == "*":
                if n is None:
                    raise ConfigError(path, part, f"'*' needs {where} to be a list in the base config")
                value = value[0] if n else None
            else:
                if not part.isdigit():
                    raise ConfigError(path, part, f"{where} is a list: use an index or '*'")
                idx = int(part)
                if n is not None and idx >= n:
                    raise ConfigError(path, part, f"{where} has {n} entries in the base config (0..{n - 1})")
                value = value[idx] if value is not None else None
            tp = typing.get_args(tp)[0]
        else:
            raise ConfigError(path, part, f"{where} is a value, not a mapping or list")


def _assign(data: dict, path: str, value: Any) -> None:
    """Set a dotted ``path`` in a plain config dict (from ``ArchConfig.to_dict``)."""
    parts = path.split(".")

    def rec(node, i, wildcard):
        part = parts[i]
        last = i == len(parts) - 1
        if isinstance(node, list):
            idxs = range(len(node)) if part == "*" else [int(part)]
            for j in idxs:
                if last:
                    node[j] = copy.deepcopy(value)
                elif node[j] is None and part == "*":
                    continue
                else:
                    if node[j] is None:
                        node[j] = {}
                    rec(node[j], i + 1, wildcard or part == "*")
            return
        if last:
            node[part] = copy.deepcopy(value)
            return
        if node.get(part) is None:
            if wildcard:
                return  # a wildcard skips stages whose optional block is off
            node[part] = {}
        rec(node[part], i + 1, wildcard)

    rec(data, 0, False)


# ==================================================================== parameters
@dataclass(frozen=True)
class Condition:
    """``param`` must (or, with ``negate``, must not) take one of ``values``."""

    param: str
    values: tuple
    negate: bool = False

    def holds(self, assignment: Mapping[str, Any]) -> bool:
        if self.param not in assignment:
            return False  # the parameter it depends on is itself inactive
        inside = assignment[self.param] in self.values
        return inside != self.negate


@dataclass(frozen=True)
class Param:
    """One named search parameter.

    kind: ``categorical`` (``labels`` are what Optuna sees, ``values`` what is written), ``int`` or
    ``float`` (``low``, ``high``, ``step``, ``log``). ``targets`` maps dotted paths to a scale factor
    (None = write the value as is); an empty ``targets`` means each categorical value is a patch.
    """

    name: str
    kind: str
    labels: tuple = ()
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    targets: tuple[tuple[str, float | None], ...] = ()
    when: tuple[Condition, ...] = ()
    description: str | None = None

    def distribution(self):
        """The optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "categorical":
            return CategoricalDistribution(list(self.labels))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.labels))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def active(self, assignment: Mapping[str, Any]) -> bool:
        return all(c.holds(assignment) for c in self.when)

    def to_label(self, value: Any) -> Any:
        """The Optuna form of ``value`` (a label for categorical parameters; labels pass through)."""
        if self.kind != "categorical":
            return value
        if _is_scalar(value):
            for lab in self.labels:
                if _eq(lab, value):
                    return lab
        for lab, v in zip(self.labels, self.values):
            if _eq(value, v):
                return lab
        raise KeyError(value)

    def value_of(self, label: Any) -> Any:
        if self.kind != "categorical":
            return label
        for lab, v in zip(self.labels, self.values):
            if _eq(lab, label):
                return v
        raise KeyError(label)

    def writes(self, label: Any) -> list[tuple[str, Any]]:
        """(path, value) pairs this parameter writes for an Optuna value."""
        value = self.value_of(label)
        if not self.targets:
            return list(value.items())
        out = []
        for path, factor in self.targets:
            out.append((path, value if factor is None else _scale(value, factor)))
        return out

    def options(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(repr, self.labels))
        extra = (f" step {self.step}" if self.step else "") + (" (log)" if self.log else "")
        return f"{self.kind} in [{self.low}, {self.high}]{extra}"


def _fixed_label(p: Param, value: Any, source: str | None) -> Any:
    """The Optuna value that holds ``p`` at ``value``, if the parameter allows it."""
    where = f"space_fixed.{p.name}"
    if p.kind == "categorical":
        try:
            return p.to_label(value)
        except KeyError:
            raise ConfigError(where, value, p.options(), source) from None
    inside = _is_number(value) and p.low <= value <= p.high
    if p.kind == "int":
        inside = inside and int(value) == value and (value - p.low) % int(p.step or 1) == 0
    elif p.step:
        inside = inside and math.isclose((value - p.low) / p.step, round((value - p.low) / p.step))
    if not inside:
        raise ConfigError(where, value, p.options(), source)
    return int(value) if p.kind == "int" else float(value)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v) -> bool:
    return isinstance(v, _SCALARS)


def _eq(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if _is_scalar(a) or _is_scalar(b):
        return type(a) is type(b) and a == b
    return _plain(a) == _plain(b)


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _scale(value, factor):
    out = value * factor
    if isinstance(value, int) and isinstance(factor, int):
        return int(out)
    return float(out)


def _label(v) -> Any:
    if _is_scalar(v):
        return v
    return yaml.safe_dump(_plain(v), default_flow_style=True, width=10_000).strip()


# ==================================================================== the space
@dataclass
class SearchSpace:
    """A parsed, validated search space (see the module docstring for the YAML schema)."""

    name: str
    base: ArchConfig
    params: tuple[Param, ...]
    points: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe: str | None = None
    description: str | None = None
    source: str | None = None
    text: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, spec: str | Path) -> "SearchSpace":
        """A space from a bundled name (``lowformer``, ``wide``, ``demo``), a YAML path or YAML text."""
        if isinstance(spec, str) and "\n" in spec:
            return cls.from_text(spec)
        return cls.from_document(read_yaml(_space_path(spec), what=KIND))

    @classmethod
    def from_text(cls, text: str, source: str | None = None) -> "SearchSpace":
        """A space from YAML text (``source`` names it in errors)."""
        return cls.from_document(parse_yaml(text, source, what=KIND))

    @classmethod
    def from_document(cls, doc: YamlDocument) -> "SearchSpace":
        """A space from a loaded YAML document; errors name its file, line and key."""
        data, source = doc.data, doc.source
        if not isinstance(data, Mapping):
            raise doc.error([], type(data).__name__, "a search space is a mapping with keys: " + ", ".join(SPACE_KEYS))
        check_kind(doc, KIND, SPACE_KEYS)
        doc.check_keys([], data, SPACE_KEYS)
        base = _parse_base(doc, data.get("base"))
        params = _parse_params(doc, data.get("params"), base)
        name = data.get("name") or (Path(source).stem if source else "space")
        if not isinstance(name, str):
            raise doc.error(["name"], name, "a string")
        recipe = data.get("recipe", base.recipe)
        if recipe is not None and not isinstance(recipe, str):
            raise doc.error(["recipe"], recipe, "a recipe name (string), e.g. b1")
        space = cls(name=name, base=base.replace(name=None, notes=None, recipe=recipe), params=params,
                    recipe=recipe, description=data.get("description"), source=source, text=doc.text)
        space.points = _parse_points(doc, data.get("points"), space)
        return space

    def fix(self, values: Mapping[str, Any]) -> "SearchSpace":
        """This space with the named parameters held at one value each (the others are searched as before);
        named points that hold another value are left out. Raises ConfigError naming the parameter."""
        if not values:
            return self
        by_name = {p.name: p for p in self.params}
        for key in values:
            if key not in by_name:
                raise unknown_key_error("space_fixed", str(key), by_name, self.source)
        labels = {name: _fixed_label(by_name[name], value, self.source) for name, value in values.items()}
        params = tuple(p if p.name not in labels else dataclasses.replace(
            p, kind="categorical", labels=(labels[p.name],), values=(p.value_of(labels[p.name]),), low=None,
            high=None, step=None, log=False) for p in self.params)
        points = {point: held for point, held in self.points.items()
                  if all(name not in held or _eq(by_name[name].to_label(held[name]), label)
                         for name, label in labels.items())}
        return dataclasses.replace(self, params=params, points=points, fixed={**self.fixed, **labels})

    # ---------------------------------------------------------------- sampling and building
    def suggest(self, trial) -> dict[str, Any]:
        """Ask an optuna trial for every active parameter (in file order); returns the Optuna values."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.active(out):
                out[p.name] = p.suggest(trial)
        return out

    def sample(self, rng) -> dict[str, Any]:
        """A random assignment without optuna (``rng``: ``random.Random``)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if not p.active(out):
                continue
            if p.kind == "categorical":
                out[p.name] = rng.choice(p.labels)
            elif p.kind == "int":
                step = int(p.step or 1)
                out[p.name] = rng.randrange(int(p.low), int(p.high) + 1, step)
            else:
                if p.log:
                    out[p.name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
                else:
                    out[p.name] = rng.uniform(p.low, p.high)
        return out

    def build(self, assignment: Mapping[str, Any]) -> ArchConfig:
        """The ArchConfig of an assignment (Optuna values or plain values). Raises ConfigError."""
        by_name = {p.name: p for p in self.params}
        for key in assignment:
            if key not in by_name:
                raise unknown_key_error("", str(key), by_name, self.source)
        data = self.base.to_dict()
        seen: dict[str, Any] = {}
        for p in self.params:
            if not p.active(seen):
                continue
            if p.name not in assignment:
                raise ConfigError(p.name, None, f"missing a value for this parameter ({p.options()})", self.source)
            try:
                label = p.to_label(assignment[p.name])
                p.value_of(label)
            except KeyError:
                raise ConfigError(p.name, assignment[p.name], p.options(), self.source) from None
            seen[p.name] = label
            for path, value in p.writes(label):
                _assign(data, path, value)
        return ArchConfig.from_dict(data)

    def invalid_draws(self, n: int = 1000, seed: int = 0) -> Counter[str]:
        """Of ``n`` random draws, how many build no valid architecture, by the field at fault. Parameters that
        conflict (attention on the last two blocks of a stage that may have one) make trials that fail at once;
        ``lowspace search --describe`` shows this so a space can be fixed before a study starts on it."""
        rng, faults = random.Random(seed), Counter()
        for _ in range(n):
            try:
                self.build(self.sample(rng))
            except ConfigError as e:
                faults[e.path or str(e)] += 1
        return faults

    def active_params(self, assignment: Mapping[str, Any]) -> list[str]:
        seen: dict[str, Any] = {}
        for p in self.params:
            if p.active(seen) and p.name in assignment:
                seen[p.name] = p.to_label(assignment[p.name])
        return list(seen)

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def point(self, name: str) -> dict[str, Any]:
        """The Optuna values of a named point."""
        if name not in self.points:
            raise ConfigError("points", name, "known points: " + (", ".join(self.points) or "none"), self.source)
        return dict(self.points[name])

    def preset_points(self) -> dict[str, dict[str, Any]]:
        """Points that rebuild a published preset, by preset key."""
        return {preset_key(n): v for n, v in self.points.items() if preset_key(n)}

    def summary(self) -> list[dict[str, Any]]:
        """One row per parameter: name, kind, options, targets, condition."""
        rows = []
        for p in self.params:
            cond = " and ".join(f"{c.param} {'not in' if c.negate else 'in'} {list(c.values)}" for c in p.when)
            rows.append(dict(name=p.name, options=p.options(),
                             writes=", ".join(t for t, _ in p.targets) or "patch", when=cond or "-"))
        return rows


# ==================================================================== parsing helpers
def _space_path(spec: str | Path) -> Path:
    """The file of a space: ``spec`` itself, or the bundled space of that name."""
    path = Path(spec)
    if not path.exists() and not path.suffix:
        candidate = space_dir() / f"{spec}.yaml"
        if candidate.exists():
            return candidate
        names = builtin_spaces()
        raise ConfigError("space", str(spec), "a YAML file path or a bundled space: " + (", ".join(names) or "none"))
    return path


def _parse_base(doc: YamlDocument, base) -> ArchConfig:
    if base is None:
        raise doc.error(["base"], None, "a base config is required: a preset name, a config YAML path or a mapping")
    if isinstance(base, Mapping):
        try:
            return ArchConfig.from_dict(base)
        except ConfigError as err:
            path = ["base", *err.path.split(".")]
            raise ConfigError("base." + err.path, err.value, err.allowed, doc.where(*path)) from None
    if isinstance(base, str):
        spec: Any = base
        if doc.source and not preset_key(base) and not Path(base).is_absolute():
            rel = Path(doc.source).parent / base
            if rel.exists():
                spec = rel
        try:
            return resolve_config(spec)
        except ConfigError as err:
            raise ConfigError("base", base, err.allowed, doc.where("base")) from None
    raise doc.error(["base"], base, "a preset name, a config YAML path or a mapping")


def _parse_targets(doc: YamlDocument, where: list, spec: dict,
                   base: ArchConfig) -> tuple[tuple[str, float | None], ...]:
    if "path" in spec and "paths" in spec:
        raise doc.error(where + ["paths"], spec["paths"], "give either 'path' or 'paths', not both")
    raw = spec.get("path", spec.get("paths"))
    key = "path" if "path" in spec else "paths"
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: list[tuple[str, Any]] = [(raw, None)]
    elif isinstance(raw, list):
        items = [(p, None) for p in raw]
    elif isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        raise doc.error(where + [key], raw, "a dotted path, a list of paths, or a mapping path -> scale factor")
    out = []
    for path, factor in items:
        if not isinstance(path, str):
            raise doc.error(where + [key], path, "paths are dotted strings such as stages.2.depth")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
            raise doc.error(where + [key, path], factor, "a numeric scale factor")
        try:
            _check_path(path, base)
        except ConfigError as err:
            raise ConfigError(".".join(map(str, where + [key])), path,
                              f"not a config field ({err.path}: {err.allowed})", doc.where(*where, key)) from None
        out.append((path, factor))
    return tuple(out)


def _parse_params(doc: YamlDocument, raw, base: ArchConfig) -> tuple[Param, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise doc.error(["params"], raw, "a mapping of parameter name -> {choices | low/high, path | paths, when}")
    params: list[Param] = []
    for name, spec in raw.items():
        where = ["params", name]
        if not isinstance(name, str) or not name.isidentifier():
            raise doc.error(where, name, "parameter names are identifiers (letters, digits, _)")
        if not isinstance(spec, Mapping):
            raise doc.error(where, spec, "a mapping with 'choices' or 'low'/'high', and 'path' or 'paths'")
        doc.check_keys(where, spec, PARAM_KEYS)
        targets = _parse_targets(doc, where, dict(spec), base)
        p = _parse_kind(doc, where, name, spec, targets)
        if any(factor is not None for _, factor in targets):
            for value in p.values:
                if not _is_number(value):
                    raise doc.error(where + ["choices"], value, "a number: the paths scale each choice")
        p = dataclasses.replace(p, when=_parse_when(doc, where, spec.get("when"), params),
                                description=spec.get("description"))
        _probe(doc, where, p, base)
        params.append(p)
    return tuple(params)


def _parse_kind(doc, where, name, spec, targets) -> Param:
    has_choices = "choices" in spec
    has_range = "low" in spec or "high" in spec
    if has_choices == has_range:
        raise doc.error(where, None, "give either 'choices' or a 'low'/'high' range")
    if has_choices:
        choices = spec["choices"]
        if isinstance(choices, Mapping):
            labels, values = list(choices.keys()), list(choices.values())
        elif isinstance(choices, list):
            values = list(choices)
            labels = [_label(v) for v in values]
        else:
            raise doc.error(where + ["choices"], choices, "a list of values or a mapping label -> value")
        if not values:
            raise doc.error(where + ["choices"], choices, "at least one choice")
        for lab in labels:
            if not _is_scalar(lab):
                raise doc.error(where + ["choices"], lab, "labels must be strings or numbers")
        if len(set(map(repr, labels))) != len(labels):
            raise doc.error(where + ["choices"], labels, "choices must not repeat")
        if not targets:
            for lab, v in zip(labels, values):
                if not isinstance(v, Mapping) or not v:
                    raise doc.error(where + ["choices", lab], v,
                                    "without 'path'/'paths' every choice must be a mapping of path -> value")
        for key in ("step", "log", "type"):
            if key in spec:
                raise doc.error(where + [key], spec[key], f"'{key}' applies to low/high ranges only")
        return Param(name, "categorical", labels=tuple(labels), values=tuple(values), targets=targets)
    if not targets:
        raise doc.error(where, None, "a range parameter needs 'path' or 'paths'")
    low, high = spec.get("low"), spec.get("high")
    for key, v in (("low", low), ("high", high), ("step", spec.get("step"))):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise doc.error(where + [key], v, "a number")
    if low is None or high is None:
        raise doc.error(where, None, "both 'low' and 'high' are required")
    step, log = spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise doc.error(where + ["log"], log, "true or false")
    kind = spec.get("type")
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (low, high, step if step is not None else 1)) else "float"
    if kind not in ("int", "float"):
        raise doc.error(where + ["type"], kind, "allowed: int, float")
    if low > high:
        raise doc.error(where + ["high"], high, f"must be >= low ({low})")
    if log and low <= 0:
        raise doc.error(where + ["low"], low, "a log range needs low > 0")
    if log and step is not None and kind == "float":
        raise doc.error(where + ["step"], step, "a float range cannot have both step and log")
    if kind == "int" and (int(low) != low or int(high) != high):
        raise doc.error(where, [low, high], "an int range needs integer bounds")
    if step is not None and step <= 0:
        raise doc.error(where + ["step"], step, "must be > 0")
    return Param(name, kind, low=low, high=high, step=step, log=log, targets=targets)


def _parse_when(doc, where, raw, earlier: list[Param]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise doc.error(where + ["when"], raw, "a mapping: other_param: value | [values] | {not: value | [values]}")
    known = {p.name: p for p in earlier}
    out = []
    for other, cond in raw.items():
        if other not in known:
            hint = "" if not known else " (earlier parameters: " + ", ".join(known) + ")"
            raise doc.error(where + ["when", other], other,
                            "a condition must name a parameter defined above this one" + hint)
        negate = False
        if isinstance(cond, Mapping):
            if list(cond) != ["not"]:
                raise doc.error(where + ["when", other], cond, "use {not: value} or {not: [values]}")
            negate, cond = True, cond["not"]
        values = cond if isinstance(cond, list) else [cond]
        p = known[other]
        labels = []
        for v in values:
            try:
                labels.append(p.to_label(v))
            except KeyError:
                raise doc.error(where + ["when", other], v, f"{other} takes {p.options()}") from None
        out.append(Condition(other, tuple(labels), negate))
    return tuple(out)


def _probe(doc: YamlDocument, where: list, p: Param, base: ArchConfig) -> None:
    """Write each choice (or range end) alone onto the base: a type error at the target field is the space's
    fault and is reported now; errors elsewhere depend on other parameters and surface in trials."""
    if p.kind == "categorical":
        probes = list(p.labels)
    else:
        probes = [p.low, p.high] if p.kind == "float" else [int(p.low), int(p.high)]
    for label in probes:
        data = base.to_dict()
        writes = p.writes(label)
        for path, value in writes:
            try:
                _check_path(path, base)
            except ConfigError as err:
                raise doc.error(where + ["choices", label], path, f"not a config field ({err.allowed})") from None
            _assign(data, path, value)
        try:
            ArchConfig.from_dict(data)
        except ConfigError as err:
            paths = [w for w, _ in writes]
            if any(_same_field(err.path, w) for w in paths):
                raise ConfigError(".".join(map(str, where)), label,
                                  f"writes an invalid value to {err.path}: {err.allowed}", doc.where(*where)) from None


def _same_field(err_path: str, target: str) -> bool:
    a, b = err_path.split("."), target.split(".")
    if len(a) < len(b):
        return False
    return all(x == y or y == "*" for x, y in zip(a, b))


def _parse_points(doc: YamlDocument, raw, space: SearchSpace) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise doc.error(["points"], raw, "a mapping of point name -> {parameter: value}")
    by_name = {p.name: p for p in space.params}
    out = {}
    for name, values in raw.items():
        where = ["points", name]
        if not isinstance(values, Mapping):
            raise doc.error(where, values, "a mapping of parameter -> value")
        assignment: dict[str, Any] = {}
        doc.check_keys(where, values, list(by_name))
        for p in space.params:
            if not p.active(assignment):
                if p.name in values:
                    raise doc.error(where + [p.name], values[p.name],
                                    "this parameter is inactive here (its 'when' fails)")
                continue
            if p.name not in values:
                raise doc.error(where, p.name, f"a point must give every active parameter; missing {p.name}")
            v = values[p.name]
            try:
                label = p.to_label(v)
            except KeyError:
                raise doc.error(where + [p.name], v, p.options()) from None
            if p.kind != "categorical":
                ok = _is_number(v) and p.low <= v <= p.high and (p.kind == "float" or isinstance(v, int))
                if not ok:
                    raise doc.error(where + [p.name], v, p.options())
            assignment[p.name] = label
        try:
            cfg = space.build(assignment)
        except ConfigError as err:
            raise ConfigError(".".join(map(str, where)), err.value, f"{err.path}: {err.allowed}",
                              doc.where(*where)) from None
        key = preset_key(str(name))
        if key:
            want = get_preset(key)
            if cfg.arch_id != want.arch_id:
                diff = _first_difference(cfg.canonical_dict(), want.canonical_dict())
                raise doc.error(where, str(name), f"does not rebuild preset {key} (arch_id {cfg.arch_id} != "
                                f"{want.arch_id}; first difference at {diff})")
        out[str(name)] = assignment
    return out


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}.{i}")
    return f"{path or '<root>'} ({json.dumps(a)} vs {json.dumps(b)})"


def load_space(spec: str | Path | SearchSpace) -> SearchSpace:
    """A :class:`SearchSpace` from a bundled name, a YAML path, YAML text or a SearchSpace."""
    if isinstance(spec, SearchSpace):
        return spec
    return SearchSpace.load(spec)
