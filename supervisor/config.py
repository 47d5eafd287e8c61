"""Load a YAML configuration and validate all of it before any process starts.

Every problem is one ``ConfigError`` reading ``PATH:LINE: FIELD: what is wrong``. Top-level fields
are plain (``grace_period``); a pool's fields are ``pools.NAME.field``. Only a pool that is not a
mapping, or whose ``name`` is missing or wrong, is named by position: ``pools[INDEX]``.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ._spec import RESTART_POLICIES, START_METHODS, STOP_ORDERS, STRATEGIES, parse_signal
from .channels import MAX_CAPACITY
from .errors import ConfigError
from .limits import parse_size

TOP_KEYS = (
    *("grace_period", "term_timeout", "strategy", "max_restarts", "restart_window"),
    *("restart_backoff", "restart_backoff_max", "stop_budget", "warning_signal", "stop_order", "channels", "pools"),
)
POOL_KEYS = (
    *("name", "target", "command", "replicas", "args", "kwargs", "restart", "grace_period"),
    *("term_timeout", "heartbeat_timeout", "env", "stop_signal", "start_method"),
    *("memory_limit", "cpu_affinity", "nice", "inputs", "outputs"),
)
TARGET_ONLY = ("args", "kwargs", "start_method", "inputs", "outputs")
DURATION_FORMS = "use a number of seconds or a number with ms, s, m or h"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|m|h)?")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_TARGET = re.compile(rf"{_DOTTED}:{_DOTTED}")
_NULL = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class PoolConfig:
    """One ``pools`` entry; ``None`` timeouts fall back to the config's defaults."""

    name: str
    line: int
    target: str | None
    command: tuple[str, ...] | None
    replicas: int = 1
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    restart: str = "never"
    grace_period: float | None = None
    term_timeout: float | None = None
    heartbeat_timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    start_method: str = "fork"
    memory_limit: int | None = None  # bytes
    cpu_affinity: tuple[int, ...] | None = None
    nice: int | None = None
    inputs: tuple[str, ...] = ()  # channels it consumes
    outputs: tuple[str, ...] = ()  # channels it feeds


@dataclass(frozen=True)
class Config:
    """A validated configuration file; ``directory`` is where its targets are imported from."""

    path: str
    directory: str
    grace_period: float = 5.0
    term_timeout: float = 5.0
    strategy: str = "one_for_all"
    max_restarts: int = 3
    restart_window: float = 60.0
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    stop_budget: float | None = None  # the whole teardown fits in this (a scheduler's kill deadline)
    warning_signal: str | None = None  # e.g. SIGUSR1 from Slurm's --signal: start a graceful stop
    stop_order: str = "together"
    channels: dict[str, int] = field(default_factory=dict)  # name -> capacity, in declared order
    pools: tuple[PoolConfig, ...] = ()


def parse_duration(value: object) -> float:
    """``3``, ``0.5``, ``"3"``, ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"`` -> seconds; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) <= sys.float_info.max else math.inf  # huge ints: no OverflowError
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    else:
        raise ValueError(f"bad duration {value!r} ({DURATION_FORMS})")
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r} (must be finite)")
    if seconds < 0:
        raise ValueError(f"bad duration {value!r} (must not be negative)")
    return seconds


class _Walker:
    """Reads values out of composed YAML nodes; every complaint becomes a ConfigError at the node's line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._constructor = yaml.SafeLoader("")

    def error(self, node: Node, field: str, message: str) -> ConfigError:
        return ConfigError(self.path, node.start_mark.line + 1, field, message)

    def value(self, node: Node, field: str) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.error(node, field, str(exc.problem or exc.context)) from None
        except Exception as exc:
            raise self.error(node, field, _brief(exc)) from None

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        return "null" if node.tag == _NULL else repr(self.value(node, ""))

    def entries(self, node: Node, field: str) -> list[tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            raise self.error(node, field, f"must be a mapping, not {self.describe(node)}")
        return list(node.value)

    def items(self, node: Node, field: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, field, f"must be a list, not {self.describe(node)}")
        return list(node.value)

    def keys(self, entries: list[tuple[Node, Node]], prefix: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        """Key -> value node, rejecting unknown and repeated keys (at the key's line)."""
        found: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key, value in entries:
            name = str(key.value) if isinstance(key, ScalarNode) else ""
            where = f"{prefix}.{name}" if prefix and name else prefix or name or "file"
            if name not in allowed:
                shown = repr(name) if name else self.describe(key)
                raise self.error(key, where, f"unknown key {shown} (allowed: {', '.join(sorted(allowed))})")
            if name in found:
                raise self.error(key, where, f"repeated key (first at line {lines[name]})")
            found[name], lines[name] = value, key.start_mark.line + 1
        return found

    def string_keyed(self, node: Node, field: str) -> list[tuple[str, Node]]:
        """The items of a mapping whose keys must be distinct, non-empty names."""
        items: dict[str, Node] = {}
        for key, value in self.entries(node, field):
            name = self.value(key, field)
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise self.error(key, field, f"bad key {self.describe(key)} (keys must be non-empty names)")
            if name in items:
                raise self.error(key, field, f"repeated key {name!r}")
            items[name] = value
        return list(items.items())

    def text(self, node: Node, field: str) -> str:
        """A string; a number or bool becomes the text it was written as."""
        value = self.value(node, field)
        if isinstance(value, (int, float)) and isinstance(node, ScalarNode):
            return str(node.value)
        if not isinstance(value, str) or "\0" in value:
            raise self.error(node, field, f"must be a string, number or bool, not {self.describe(node)}")
        return value

    def integer(self, node: Node, field: str, minimum: int, maximum: int | None = None) -> int:
        value = self.value(node, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, field, f"must be a whole number, not {self.describe(node)}")
        if value < minimum:
            raise self.error(node, field, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(node, field, f"must be at most {maximum}, not {value}")
        return value

    def size(self, node: Node, field: str) -> int:
        try:
            return parse_size(self.value(node, field))
        except ValueError as exc:
            raise self.error(node, field, str(exc)) from None

    def fail(self, node: Node, field: str, message: str) -> NoReturn:
        raise self.error(node, field, message)

    def duration(self, node: Node, field: str, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(self.value(node, field))
        except ValueError as exc:
            raise self.error(node, field, str(exc)) from None
        if positive and seconds == 0:
            raise self.error(node, field, "must be more than 0 seconds")
        return seconds

    def choice(self, node: Node, field: str, noun: str, allowed: tuple[str, ...]) -> str:
        value = self.value(node, field)
        if not isinstance(value, str) or value not in allowed:
            raise self.error(node, field, f"unknown {noun} {self.describe(node)} (allowed: {', '.join(allowed)})")
        return value


def load_config(path: str, *, import_targets: bool = True) -> Config:
    """Read and validate the config at ``path``, importing every target unless told not to."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, 1, "file", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        said = f"{exc.context} {exc.problem}" if exc.context and str(exc.problem).startswith("but") else exc.problem
        raise ConfigError(path, line, "yaml", f"not valid YAML: {said or exc.context}") from None
    except yaml.YAMLError as exc:
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
        raise ConfigError(path, line, "yaml", f"not valid YAML: {_brief(exc)}") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
        raise ConfigError(path, 1, "file", "empty (expected a mapping with a 'pools' list)")
    w = _Walker(path)
    top = w.keys(w.entries(root, "file"), "", TOP_KEYS)
    parsers: dict[str, Callable[[Node, str], Any]] = {
        "grace_period": w.duration,
        "term_timeout": w.duration,
        "restart_window": lambda n, f: w.duration(n, f, positive=True),
        "strategy": lambda n, f: w.choice(n, f, "strategy", STRATEGIES),
        "max_restarts": lambda n, f: w.integer(n, f, 0),
        "restart_backoff": w.duration,
        "restart_backoff_max": w.duration,
        "stop_budget": lambda n, f: w.duration(n, f, positive=True),
        "warning_signal": lambda n, f: _signal_name(w, n, f),
        "stop_order": lambda n, f: w.choice(n, f, "stop order", STOP_ORDERS),
        "channels": lambda n, f: _channels(w, n, f),
    }
    settings = {key: parsers[key](node, key) for key, node in top.items() if key != "pools"}
    if "pools" not in top:
        raise w.error(root, "pools", "required (a list of pools)")
    if not w.items(top["pools"], "pools"):
        raise w.error(top["pools"], "pools", "must list at least one pool")
    directory = os.path.dirname(os.path.abspath(path))
    seen: dict[str, int] = {}
    importing = directory if import_targets else None
    names = tuple(settings.get("channels", {}))
    pool_nodes = enumerate(w.items(top["pools"], "pools"))
    pools = tuple(_pool(w, i, node, seen, importing, names) for i, node in pool_nodes)
    return Config(path=path, directory=directory, pools=pools, **settings)


def _channels(w: _Walker, node: Node, field: str) -> dict[str, int]:
    """``name: capacity`` or ``name: {capacity: N}`` for each channel."""
    out: dict[str, int] = {}
    for name, value in w.string_keyed(node, field):
        where = f"{field}.{name}"
        if not _NAME.fullmatch(name):
            raise w.error(value, where, "channel names are letters, digits, '_' or '-'")
        if isinstance(value, MappingNode):
            value = w.keys(w.entries(value, where), where, ("capacity",)).get("capacity", value)
            where += ".capacity"
        out[name] = w.integer(value, where, 1, maximum=MAX_CAPACITY)
    return out


def _channel_list(w: _Walker, node: Node, field: str, known: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(w.text(item, field) for item in w.items(node, field))
    for item, name in zip(node.value, names, strict=True):
        if name not in known:
            raise w.error(item, field, f"no channel named {name!r} (channels: {', '.join(known) or 'none declared'})")
    return names


def _pool(
    w: _Walker, index: int, node: Node, seen: dict[str, int], directory: str | None, channels: tuple[str, ...]
) -> PoolConfig:
    """Validate one ``pools`` entry (``seen``: names so far -> their lines); import its target if ``directory``."""
    entries = w.entries(node, f"pools[{index}]")
    name_node = next((v for k, v in entries if isinstance(k, ScalarNode) and k.value == "name"), None)
    if name_node is None:
        raise w.error(node, f"pools[{index}].name", "required")
    name = w.value(name_node, f"pools[{index}].name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = w.describe(name_node)
        raise w.error(name_node, f"pools[{index}].name", f"must be letters, digits, '_' or '-', not {shown}")
    if name in seen:
        raise w.error(name_node, f"pools[{index}].name", f"duplicate pool name {name!r} (first at line {seen[name]})")
    seen[name] = name_node.start_mark.line + 1
    label = f"pools.{name}"
    keys = w.keys(entries, label, POOL_KEYS)
    key_nodes = {str(k.value): k for k, _ in entries}
    if ("target" in keys) == ("command" in keys):
        if "target" in keys:
            raise w.error(key_nodes["command"], label, "has both target and command (give exactly one)")
        raise w.error(node, label, "needs a target or a command")
    mode, other, forbidden = (
        ("target", "command", ("stop_signal",)) if "target" in keys else ("command", "target", TARGET_ONLY)
    )
    for key in forbidden:
        if key in keys:
            raise w.error(key_nodes[key], f"{label}.{key}", f"only allowed with {other}, not with {mode}")
    parsers: dict[str, Callable[[Node, str], Any]] = {
        "target": lambda n, f: _target(w, n, f, directory),
        "command": lambda n, f: _command(w, n, f),
        "replicas": lambda n, f: w.integer(n, f, 1),
        "args": lambda n, f: tuple(w.value(item, f) for item in w.items(n, f)),
        "kwargs": lambda n, f: {k: w.value(v, f"{f}.{k}") for k, v in w.string_keyed(n, f)},
        "restart": lambda n, f: w.choice(n, f, "restart policy", RESTART_POLICIES),
        "grace_period": w.duration,
        "term_timeout": w.duration,
        "heartbeat_timeout": lambda n, f: w.duration(n, f, positive=True),
        "env": lambda n, f: {k: w.text(v, f"{f}.{k}") for k, v in w.string_keyed(n, f)},
        "stop_signal": lambda n, f: _signal_name(w, n, f),
        "start_method": lambda n, f: w.choice(n, f, "start method", START_METHODS),
        "memory_limit": lambda n, f: w.size(n, f),
        "cpu_affinity": lambda n, f: tuple(w.integer(item, f, 0) for item in w.items(n, f)) or w.fail(n, f, "empty"),
        "nice": lambda n, f: w.integer(n, f, -20, maximum=19),
        "inputs": lambda n, f: _channel_list(w, n, f, channels),
        "outputs": lambda n, f: _channel_list(w, n, f, channels),
    }
    got: dict[str, Any] = {"target": None, "command": None}
    got.update((key, parsers[key](value, f"{label}.{key}")) for key, value in keys.items() if key != "name")
    return PoolConfig(name=name, line=node.start_mark.line + 1, **got)


def _target(w: _Walker, node: Node, field: str, directory: str | None) -> str:
    """A ``module:callable`` string, imported and checked when ``directory`` is given."""
    target = w.value(node, field)
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise w.error(node, field, f"must be module:callable, not {w.describe(node)}")
    if directory is not None:
        try:
            _import_target(target, directory)
        except ValueError as exc:
            raise w.error(node, field, str(exc)) from None
    return target


def _command(w: _Walker, node: Node, field: str) -> tuple[str, ...]:
    """A list of strings, or one string split like a shell would."""
    if isinstance(node, SequenceNode):
        argv = [w.text(item, f"{field}[{i}]") for i, item in enumerate(node.value)]
    else:
        value = w.value(node, field)
        if not isinstance(value, str):
            raise w.error(node, field, f"must be a list of strings or a string, not {w.describe(node)}")
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise w.error(node, field, f"cannot split {value!r}: {exc}") from None
    if not argv:
        raise w.error(node, field, "must not be empty")
    return tuple(argv)


def _signal_name(w: _Walker, node: Node, field: str) -> str:
    value = w.value(node, field)
    try:
        return signal.Signals(parse_signal(value)).name
    except ValueError:
        raise w.error(node, field, f"unknown signal {w.describe(node)}") from None


def _brief(exc: BaseException) -> str:
    """The first line of an exception's message, shortened; with its type unless that is obvious."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not isinstance(exc, (ImportError, yaml.YAMLError)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _import_target(target: str, directory: str) -> Callable[..., Any]:
    """Import ``module:attr.path`` with ``directory`` first on sys.path; ValueError saying why not."""
    module_name, _, attr_path = target.partition(":")
    saved = sys.path[:]
    sys.path.insert(0, directory)
    importlib.invalidate_caches()
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise ValueError(f"cannot import {module_name!r}: {_brief(exc)}") from None
    finally:
        sys.path[:] = saved
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except Exception:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable (it is {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def resolve_target(config: Config, pool: PoolConfig) -> Callable[..., Any]:
    """Import and return ``pool``'s callable, with the config's folder importable while doing so."""
    if pool.target is None:
        raise ConfigError(config.path, pool.line, f"pools.{pool.name}.target", "this pool runs a command")
    try:
        return _import_target(pool.target, config.directory)
    except ValueError as exc:
        raise ConfigError(config.path, pool.line, f"pools.{pool.name}.target", str(exc)) from None


def plan(config: Config) -> str:
    """A readable description of what ``config`` would run (for ``supervisor check``)."""

    def secs(value: float) -> str:
        return f"{value:g}s"

    out = [
        f"config {config.path}",
        f"  strategy {config.strategy}, at most {config.max_restarts} restarts per {secs(config.restart_window)}",
        f"  defaults: grace_period {secs(config.grace_period)}, term_timeout {secs(config.term_timeout)}",
    ]
    if config.stop_budget is not None:
        out.append(f"  stop_budget {secs(config.stop_budget)}: the ladder is scaled down to fit it")
    if config.channels:
        shown = ", ".join(f"{name} (capacity {cap})" for name, cap in config.channels.items())
        out.append(f"  channels: {shown}; stop order {config.stop_order}")
    if config.warning_signal is not None:
        out.append(f"  {config.warning_signal} starts a graceful stop (a scheduler's warning)")
    for pool in config.pools:
        noun = "replica" if pool.replicas == 1 else "replicas"
        what = f"target {pool.target}" if pool.target else f"command {shlex.join(pool.command or ())}"
        out.append(f"pool {pool.name} (line {pool.line}): {pool.replicas} {noun} of {what}")
        if pool.target:
            out.append(f"  args {pool.args!r}, kwargs {pool.kwargs!r}, start_method {pool.start_method}")
        else:
            out.append(f"  stop_signal {pool.stop_signal}")
        grace = secs(config.grace_period if pool.grace_period is None else pool.grace_period)
        term = secs(config.term_timeout if pool.term_timeout is None else pool.term_timeout)
        heartbeat = "off" if pool.heartbeat_timeout is None else secs(pool.heartbeat_timeout)
        out.append(f"  restart {pool.restart}; grace_period {grace}, term_timeout {term}; heartbeat {heartbeat}")
        out.append(f"  env: {', '.join(sorted(pool.env)) or '(none added)'}")
        limits = [f"{k} {v}" for k, v in (("memory_limit", pool.memory_limit), ("cpu_affinity", pool.cpu_affinity),
                                           ("nice", pool.nice)) if v is not None]  # fmt: skip
        if limits:
            out.append(f"  limits: {', '.join(limits)}")
        if pool.inputs or pool.outputs:
            out.append(f"  reads {', '.join(pool.inputs) or '-'}; writes {', '.join(pool.outputs) or '-'}")
    return "\n".join(out)
