"""The YAML config loader: exact one-line errors for malformed files, dataclasses for good ones."""

from __future__ import annotations

import itertools
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.config import Config, PoolConfig, load_config, parse_duration, plan, resolve_target
from supervisor.errors import ConfigError

_ids = itertools.count()

TARGETS = """\
def work(ctx):
    pass


class Jobs:
    @staticmethod
    def go(ctx):
        pass


value = 3
"""


@pytest.fixture
def mod(tmp_path: Path) -> Iterator[str]:
    """A unique module name: ``MOD.py`` holds good targets, ``MOD_boom.py`` fails to import."""
    name = f"cfgtargets_{os.getpid()}_{next(_ids)}"
    (tmp_path / f"{name}.py").write_text(TARGETS)
    (tmp_path / f"{name}_boom.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    (tmp_path / f"{name}_syntax.py").write_text("def broken(:\n")
    path_before = list(sys.path)
    yield name
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]
    assert sys.path == path_before, "loading a config must leave sys.path as it was"


@pytest.fixture
def write(tmp_path: Path, mod: str) -> Callable[[str], str]:
    """Write dedented YAML (``MOD`` replaced by the module name) to ``config.yaml``; return its path."""

    def write(text: str) -> str:
        path = tmp_path / "config.yaml"
        path.write_text(textwrap.dedent(text).replace("MOD", mod))
        return str(path)

    return write


ONE_POOL = "pools:\n  - name: a\n    target: MOD:work\n"

MALFORMED = [
    # not YAML / empty / wrong top level
    ("pools: [a, b\n", "PATH:2: yaml: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("pools:\n  - name: a\n    target: a: b\n", "PATH:3: yaml: not valid YAML: mapping values are not allowed here"),
    (
        "a: 1\n---\nb: 2\n",
        "PATH:2: yaml: not valid YAML: expected a single document in the stream but found another document",
    ),
    ("", "PATH:1: file: empty (expected a mapping with a 'pools' list)"),
    ("# only a comment\n", "PATH:1: file: empty (expected a mapping with a 'pools' list)"),
    ("- name: a\n", "PATH:1: file: must be a mapping, not a list"),
    (
        'pools:\n  - name: a\n    command: "x\x07"\n',
        "PATH:3: yaml: not valid YAML: unacceptable character #x0007: special characters are not allowed",
    ),
    (
        "pools:\n  - name: a\n    command: !shell x\n",
        "PATH:3: pools.a.command: could not determine a constructor for the tag '!shell'",
    ),
    ("just text\n", "PATH:1: file: must be a mapping, not 'just text'"),
    # unknown and repeated keys
    (
        "strategy: one_for_one\npool: []\n",
        "PATH:2: pool: unknown key 'pool' "
        "(allowed: channels, grace_period, max_restarts, pools, restart_backoff, restart_backoff_max, "
        "restart_window, stop_budget, stop_order, strategy, term_timeout, warning_signal)",
    ),
    (
        """\
        pools:
          - name: a
            target: MOD:work
            replica: 2
        """,
        "PATH:4: pools.a.replica: unknown key 'replica' (allowed: args, command, cpu_affinity, env, grace_period, "
        "heartbeat_timeout, inputs, kwargs, memory_limit, name, nice, outputs, replicas, restart, start_method, "
        "stop_signal, target, term_timeout)",
    ),
    (
        ONE_POOL + "    replicas: 2\n    replicas: 3\n",
        "PATH:5: pools.a.replicas: repeated key (first at line 4)",
    ),
    # wrong types and counts
    (ONE_POOL + "    replicas: two\n", "PATH:4: pools.a.replicas: must be a whole number, not 'two'"),
    (ONE_POOL + "    replicas: 1.5\n", "PATH:4: pools.a.replicas: must be a whole number, not 1.5"),
    (ONE_POOL + "    replicas: true\n", "PATH:4: pools.a.replicas: must be a whole number, not True"),
    (ONE_POOL + "    replicas: 0\n", "PATH:4: pools.a.replicas: must be at least 1, not 0"),
    ("max_restarts: -1\n" + ONE_POOL, "PATH:1: max_restarts: must be at least 0, not -1"),
    (ONE_POOL + "    args: 5\n", "PATH:4: pools.a.args: must be a list, not 5"),
    (ONE_POOL + "    kwargs: [1]\n", "PATH:4: pools.a.kwargs: must be a mapping, not a list"),
    (ONE_POOL + "    kwargs: {1: x}\n", "PATH:4: pools.a.kwargs: bad key 1 (keys must be non-empty names)"),
    (ONE_POOL + "    env: {'': x}\n", "PATH:4: pools.a.env: bad key '' (keys must be non-empty names)"),
    (ONE_POOL + "    env:\n      X: [1]\n", "PATH:5: pools.a.env.X: must be a string, number or bool, not a list"),
    (ONE_POOL + "    env: {X: }\n", "PATH:4: pools.a.env.X: must be a string, number or bool, not null"),
    # durations
    (
        "grace_period: soon\n" + ONE_POOL,
        "PATH:1: grace_period: bad duration 'soon' (use a number of seconds or a number with ms, s, m or h)",
    ),
    ("term_timeout: -1s\n" + ONE_POOL, "PATH:1: term_timeout: bad duration '-1s' (must not be negative)"),
    ("grace_period: .nan\n" + ONE_POOL, "PATH:1: grace_period: bad duration nan (must be finite)"),
    ("restart_window: 0\n" + ONE_POOL, "PATH:1: restart_window: must be more than 0 seconds"),
    (ONE_POOL + "    heartbeat_timeout: 0s\n", "PATH:4: pools.a.heartbeat_timeout: must be more than 0 seconds"),
    (
        ONE_POOL + "    grace_period: true\n",
        "PATH:4: pools.a.grace_period: bad duration True (use a number of seconds or a number with ms, s, m or h)",
    ),
    # unknown choices and signals
    (
        "strategy: one_for_none\n" + ONE_POOL,
        "PATH:1: strategy: unknown strategy 'one_for_none' (allowed: one_for_one, one_for_all, rest_for_one)",
    ),
    (
        ONE_POOL + "    restart: sometimes\n",
        "PATH:4: pools.a.restart: unknown restart policy 'sometimes' (allowed: never, on-failure, always)",
    ),
    (
        ONE_POOL + "    start_method: forkserver\n",
        "PATH:4: pools.a.start_method: unknown start method 'forkserver' (allowed: fork, spawn)",
    ),
    (
        "pools:\n  - name: a\n    command: [sleep, '1']\n    stop_signal: SIGFOO\n",
        "PATH:4: pools.a.stop_signal: unknown signal 'SIGFOO'",
    ),
    # target / command
    (
        "pools:\n  - name: a\n    target: MOD:work\n    command: [sleep, '1']\n",
        "PATH:4: pools.a: has both target and command (give exactly one)",
    ),
    ("pools:\n  - name: a\n    replicas: 2\n", "PATH:2: pools.a: needs a target or a command"),
    (
        "pools:\n  - name: a\n    target: MOD.work\n",
        "PATH:3: pools.a.target: must be module:callable, not 'MOD.work'",
    ),
    (
        "pools:\n  - name: a\n    target: MOD_missing:work\n",
        "PATH:3: pools.a.target: cannot import 'MOD_missing': No module named 'MOD_missing'",
    ),
    (
        "pools:\n  - name: a\n    target: MOD_boom:work\n",
        "PATH:3: pools.a.target: cannot import 'MOD_boom': RuntimeError: boom",
    ),
    (
        "pools:\n  - name: a\n    target: MOD_syntax:work\n",
        "PATH:3: pools.a.target: cannot import 'MOD_syntax': SyntaxError: invalid syntax (MOD_syntax.py, line 1)",
    ),
    (
        "pools:\n  - name: a\n    target: MOD:nothing\n",
        "PATH:3: pools.a.target: module 'MOD' has no attribute 'nothing'",
    ),
    (
        "pools:\n  - name: a\n    target: MOD:Jobs.nothing\n",
        "PATH:3: pools.a.target: module 'MOD' has no attribute 'Jobs.nothing'",
    ),
    (
        "pools:\n  - name: a\n    target: MOD:value\n",
        "PATH:3: pools.a.target: 'MOD:value' is not callable (it is int)",
    ),
    ("pools:\n  - name: a\n    command: []\n", "PATH:3: pools.a.command: must not be empty"),
    ("pools:\n  - name: a\n    command: '  '\n", "PATH:3: pools.a.command: must not be empty"),
    (
        'pools:\n  - name: a\n    command: "echo \'hi"\n',
        'PATH:3: pools.a.command: cannot split "echo \'hi": No closing quotation',
    ),
    (
        "pools:\n  - name: a\n    command:\n      - echo\n      - {x: 1}\n",
        "PATH:5: pools.a.command[1]: must be a string, number or bool, not a mapping",
    ),
    ("pools:\n  - name: a\n    command: 5\n", "PATH:3: pools.a.command: must be a list of strings or a string, not 5"),
    # options that belong to the other kind of pool
    (
        "pools:\n  - name: a\n    command: [sleep, '1']\n    args: [1]\n",
        "PATH:4: pools.a.args: only allowed with target, not with command",
    ),
    (
        "pools:\n  - name: a\n    command: [sleep, '1']\n    kwargs: {x: 1}\n",
        "PATH:4: pools.a.kwargs: only allowed with target, not with command",
    ),
    (
        "pools:\n  - name: a\n    command: [sleep, '1']\n    start_method: spawn\n",
        "PATH:4: pools.a.start_method: only allowed with target, not with command",
    ),
    (
        ONE_POOL + "    stop_signal: SIGINT\n",
        "PATH:4: pools.a.stop_signal: only allowed with command, not with target",
    ),
    # pools and names
    ("strategy: one_for_one\n", "PATH:1: pools: required (a list of pools)"),
    ("pools: []\n", "PATH:1: pools: must list at least one pool"),
    ("pools:\n", "PATH:1: pools: must be a list, not null"),
    ("pools: {a: 1}\n", "PATH:1: pools: must be a list, not a mapping"),
    ("pools:\n  - reader\n", "PATH:2: pools[0]: must be a mapping, not 'reader'"),
    ("pools:\n  - target: MOD:work\n", "PATH:2: pools[0].name: required"),
    (
        "pools:\n  - name: ''\n    target: MOD:work\n",
        "PATH:2: pools[0].name: must be letters, digits, '_' or '-', not ''",
    ),
    (
        "pools:\n  - name: my pool\n    target: MOD:work\n",
        "PATH:2: pools[0].name: must be letters, digits, '_' or '-', not 'my pool'",
    ),
    (
        ONE_POOL + "  - name: b\n    command: [sleep, '1']\n  - name: a\n    command: [sleep, '1']\n",
        "PATH:6: pools[2].name: duplicate pool name 'a' (first at line 2)",
    ),
    (
        ONE_POOL + "    memory_limit: lots\n",
        "PATH:4: pools.a.memory_limit: bad size 'lots' (use bytes, or a number with KiB, MiB, GiB, KB, MB or GB)",
    ),
    (ONE_POOL + "    memory_limit: 0\n", "PATH:4: pools.a.memory_limit: size must be positive, not 0"),
    (ONE_POOL + "    nice: 40\n", "PATH:4: pools.a.nice: must be at most 19, not 40"),
    (ONE_POOL + "    cpu_affinity: []\n", "PATH:4: pools.a.cpu_affinity: empty"),
    (ONE_POOL + "    cpu_affinity: [0, x]\n", "PATH:4: pools.a.cpu_affinity: must be a whole number, not 'x'"),
    (
        "restart_backoff: often\n" + ONE_POOL,
        "PATH:1: restart_backoff: bad duration 'often' (use a number of seconds or a number with ms, s, m or h)",
    ),
    ("channels: {a: 0}\n" + ONE_POOL, "PATH:1: channels.a: must be at least 1, not 0"),
    ("channels: {a: {size: 3}}\n" + ONE_POOL, "PATH:1: channels.a.size: unknown key 'size' (allowed: capacity)"),
    (ONE_POOL + "    inputs: [nope]\n", "PATH:4: pools.a.inputs: no channel named 'nope' (channels: none declared)"),
    (
        "channels: {x: 2}\n" + ONE_POOL + "    outputs: [y]\n",
        "PATH:5: pools.a.outputs: no channel named 'y' (channels: x)",
    ),
    (
        "stop_order: downstream\n" + ONE_POOL,
        "PATH:1: stop_order: unknown stop order 'downstream' (allowed: together, upstream-first)",
    ),
    (
        "channels: {x: 2}\npools:\n  - name: c\n    command: [sleep, '1']\n    inputs: [x]\n",
        "PATH:5: pools.c.inputs: only allowed with target, not with command",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_config_is_one_exact_line(write: Callable[[str], str], mod: str, text: str, expected: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message == expected.replace("PATH", path).replace("MOD", mod)


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.path, info.value.line, info.value.field) == (path, 1, "file")
    assert info.value.message == "cannot read: No such file or directory"


FULL = """\
    grace_period: 2s
    term_timeout: 1s
    strategy: one_for_all
    max_restarts: 3
    restart_window: 60s
    pools:
      - name: reader
        target: MOD:work
        replicas: 2
        args: [1, 2]
        kwargs: {shards: 8}
        restart: on-failure
        grace_period: 5s
        term_timeout: 5s
        heartbeat_timeout: 30s
        env: {OMP_NUM_THREADS: "1", DEBUG: true, RATIO: 1.50}
        start_method: fork
      - name: server
        command: [python3, -m, http.server, 8000, --bind, 127.0.0.1]
        stop_signal: SIGINT
"""


def test_full_example_parses_to_dataclasses(write: Callable[[str], str], mod: str, tmp_path: Path) -> None:
    path = write(FULL)
    assert load_config(path) == Config(
        path=path,
        directory=str(tmp_path),
        grace_period=2.0,
        term_timeout=1.0,
        strategy="one_for_all",
        max_restarts=3,
        restart_window=60.0,
        pools=(
            PoolConfig(
                name="reader",
                line=7,
                target=f"{mod}:work",
                command=None,
                replicas=2,
                args=(1, 2),
                kwargs={"shards": 8},
                restart="on-failure",
                grace_period=5.0,
                term_timeout=5.0,
                heartbeat_timeout=30.0,
                env={"OMP_NUM_THREADS": "1", "DEBUG": "true", "RATIO": "1.50"},
                start_method="fork",
            ),
            PoolConfig(
                name="server",
                line=18,
                target=None,
                command=("python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"),
                stop_signal="SIGINT",
            ),
        ),
    )


def test_defaults_applied(write: Callable[[str], str], mod: str) -> None:
    config = load_config(write(ONE_POOL))
    assert (config.grace_period, config.term_timeout, config.strategy) == (5.0, 5.0, "one_for_all")
    assert (config.max_restarts, config.restart_window) == (3, 60.0)
    assert config.pools == (PoolConfig(name="a", line=2, target=f"{mod}:work", command=None),)
    pool = config.pools[0]
    assert (pool.replicas, pool.args, pool.kwargs, pool.restart, pool.env) == (1, (), {}, "never", {})
    assert (pool.grace_period, pool.term_timeout, pool.heartbeat_timeout) == (None, None, None)
    assert (pool.stop_signal, pool.start_method) == ("SIGTERM", "fork")


def test_command_string_is_shlex_split(write: Callable[[str], str]) -> None:
    config = load_config(write("pools:\n  - name: sh\n    command: sh -c 'echo \"a b\"; exit 3'\n"))
    assert config.pools[0].command == ("sh", "-c", 'echo "a b"; exit 3')


@pytest.mark.parametrize(("written", "canonical"), [("SIGINT", "SIGINT"), ("int", "SIGINT"), ("2", "SIGINT")])
def test_stop_signal_forms(write: Callable[[str], str], written: str, canonical: str) -> None:
    config = load_config(write(f"pools:\n  - name: c\n    command: [sleep, '1']\n    stop_signal: {written}\n"))
    assert config.pools[0].stop_signal == canonical


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0), (3, 3.0), ("3", 3.0), (0.5, 0.5), ("0", 0.0)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "2 sec", "1d", "-1", -0.5, math.inf, math.nan, True, None, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(value)


def test_durations_in_yaml(write: Callable[[str], str]) -> None:
    text = "grace_period: 250ms\nterm_timeout: '3'\nrestart_window: 1.5m\npools:\n  - name: c\n    command: x\n"
    config = load_config(write(text + "    grace_period: 0\n    heartbeat_timeout: 1h\n"))
    assert (config.grace_period, config.term_timeout, config.restart_window) == (0.25, 3.0, 90.0)
    assert (config.pools[0].grace_period, config.pools[0].heartbeat_timeout) == (0.0, 3600.0)


def test_import_targets_false_skips_imports(write: Callable[[str], str], mod: str) -> None:
    config = load_config(write("pools:\n  - name: a\n    target: MOD_missing:work\n"), import_targets=False)
    assert config.pools[0].target == f"{mod}_missing:work"
    assert f"{mod}_missing" not in sys.modules
    with pytest.raises(ConfigError, match=r":2: pools\.a\.target: cannot import .*No module named"):
        resolve_target(config, config.pools[0])


def test_resolve_target_imports_from_the_config_folder(write: Callable[[str], str], mod: str) -> None:
    config = load_config(write("pools:\n  - name: a\n    target: MOD:Jobs.go\n  - name: b\n    command: x\n"))
    assert config.directory not in sys.path
    target = resolve_target(config, config.pools[0])
    assert target is sys.modules[mod].Jobs.go
    with pytest.raises(ConfigError, match=r"pools\.b\.target: this pool runs a command"):
        resolve_target(config, config.pools[1])


def test_plan_describes_every_pool(write: Callable[[str], str], mod: str) -> None:
    text = plan(load_config(write(FULL)))
    assert "strategy one_for_all, at most 3 restarts per 60s" in text
    assert "grace_period 2s, term_timeout 1s" in text
    assert f"pool reader (line 7): 2 replicas of target {mod}:work" in text
    assert "restart on-failure; grace_period 5s, term_timeout 5s; heartbeat 30s" in text
    assert "env: DEBUG, OMP_NUM_THREADS, RATIO" in text
    assert "pool server (line 18): 1 replica of command python3 -m http.server 8000 --bind 127.0.0.1" in text
    assert "restart never; grace_period 2s, term_timeout 1s; heartbeat off" in text
