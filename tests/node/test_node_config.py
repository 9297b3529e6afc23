"""`dledger-mq node` configuration: every bad value is reported with its key and the reason."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dledger_mq.node.config import ConfigError, NodeConfig, load_config, parse_config, render_config
from dledger_mq.node.harness import NO_HARNESS, HarnessOptions

MEMBERS = {
    "n1": {"peer": "127.0.0.1:9001", "client": "127.0.0.1:9101"},
    "n2": {"peer": "127.0.0.1:9002", "client": "127.0.0.1:9102"},
    "n3": {"peer": "127.0.0.1:9003", "client": "127.0.0.1:9103"},
}


def values(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"node_id": "n1", "members": MEMBERS, "data_dir": "/srv/n1"}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def config_error(values: dict[str, Any], source: str = "node.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(values, source)
    return str(info.value)


def test_a_minimal_config_takes_the_defaults() -> None:
    config = parse_config(values())

    assert config.node_id == "n1" and config.data_dir == "/srv/n1"
    assert (config.cluster_id, config.group, config.flush) == ("local", "broker-a", "sync")
    assert config.me.client == "127.0.0.1:9101"
    assert sorted(config.peers) == ["n2", "n3"] and str(config.peers["n2"]) == "127.0.0.1:9002"


def test_peer_dial_replaces_where_a_peer_is_dialled_and_survives_rendering() -> None:
    config = parse_config(values(peer_dial={"n2": "127.0.0.1:7002"}))

    assert str(config.peers["n2"]) == "127.0.0.1:7002"
    assert str(config.peers["n3"]) == "127.0.0.1:9003"
    assert parse_config(tomllib.loads(render_config(config))) == config


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"flush": "sometimes"}, ["flush", "sync, async", "'sometimes'"]),
        ({"tick_ms": -5}, ["tick_ms", "positive", "-5"]),
        ({"tick_ms": 0}, ["tick_ms", "positive"]),
        ({"tick_ms": "fast"}, ["tick_ms", "'fast'"]),
        ({"election_ticks": 5, "heartbeat_ticks": 5}, ["election_ticks", "heartbeat_ticks"]),
        ({"log_level": "loud"}, ["log_level", "'loud'"]),
        ({"node_id": "n7"}, ["node_id", "'n7'", "not in members"]),
        ({"colour": "blue"}, ["unknown", "colour"]),
        ({"data_dir": None}, ["data_dir", "missing"]),
        ({"node_id": None}, ["node_id", "missing"]),
        (
            {"members": {**MEMBERS, "n2": {"peer": "localhost", "client": "127.0.0.1:9102"}}},
            ["members.n2", "HOST:PORT", "'localhost'"],
        ),
        (
            {"members": {**MEMBERS, "n2": {"peer": "127.0.0.1:70000", "client": "x:1"}}},
            ["members.n2", "HOST:PORT", "'127.0.0.1:70000'"],
        ),
        (
            {"members": {**MEMBERS, "n3": {"peer": "127.0.0.1:9003"}}},
            ["members.n3.client", "missing"],
        ),
        ({"peer_dial": {"n9": "127.0.0.1:1"}}, ["peer_dial", "'n9'", "not one of"]),
        ({"peer_dial": {"n1": "127.0.0.1:1"}}, ["peer_dial", "'n1'", "not one of"]),
        ({"peer_dial": {"n2": "nowhere"}}, ["peer_dial.n2", "HOST:PORT"]),
    ],
    ids=lambda value: str(value)[:40],
)
def test_a_bad_value_is_reported_with_its_key_and_the_reason(
    changes: dict[str, Any], expected: list[str]
) -> None:
    message = config_error(values(**changes))

    assert message.startswith("node.toml: ")
    for part in expected:
        assert part in message
    assert "\n" not in message


def test_a_bad_member_address_names_peer_or_client() -> None:
    members = {**MEMBERS, "n2": {"peer": "localhost", "client": "127.0.0.1:9102"}}

    assert "members.n2.peer" in config_error(values(members=members))


def test_an_unknown_member_key_names_its_table() -> None:
    members = {**MEMBERS, "n2": {**MEMBERS["n2"], "weight": 3}}

    assert "members.n2" in config_error(values(members=members))


@pytest.mark.parametrize(
    "changes",
    [
        {"tick_ms": 2.5},
        {"tick_ms": True},
        {"tick_ms": "10"},
        {"data_dir": 5},
        {"auto_create_topics": "false"},
    ],
    ids=str,
)
def test_a_value_of_the_wrong_type_is_refused_not_coerced(changes: dict[str, Any]) -> None:
    config_error(values(**changes))


# -- files and flags -----------------------------------------------------------------------------


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="absent.toml: no such file"):
        load_config(path, {})


def test_a_file_that_is_not_toml_is_reported_with_its_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_id = "n1"\ndata_dir = \n')

    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    assert str(info.value).startswith(f"{path}: not valid TOML")
    assert "line 2" in str(info.value)


def test_a_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    text = render_config(parse_config(values()))
    path.write_text(text.replace('data_dir = "/srv/n1"', 'data_dir = "/srv/n1"\ntick_ms = -1'))

    with pytest.raises(ConfigError) as info:
        load_config(path, {})

    assert str(info.value) == f"{path}: tick_ms: must be positive, got -1"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(render_config(parse_config(values(cluster_id="prod", flush="sync"))))
    members = {"n2": MEMBERS["n2"], "n4": {"peer": "127.0.0.1:9004", "client": "127.0.0.1:9104"}}

    config = load_config(
        path,
        {
            "node_id": "n2",
            "flush": "async",
            "cluster_id": None,  # a flag not given leaves the file's value
            "members": members,
        },
    )

    assert (config.node_id, config.flush, config.cluster_id) == ("n2", "async", "prod")
    assert sorted(config.members) == ["n2", "n4"]  # --member replaces the whole table
    assert config.data_dir == "/srv/n1"


def test_flags_alone_make_a_config() -> None:
    config = load_config(None, {"node_id": "n1", "members": MEMBERS, "data_dir": "/d"})

    assert config.data_dir == "/d"
    with pytest.raises(ConfigError, match="^flags: data_dir: missing$"):
        load_config(None, {"node_id": "n1", "members": MEMBERS, "data_dir": None})


# -- rendering -----------------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
ports = st.integers(min_value=1, max_value=65535)


@st.composite
def configs(draw: st.DrawFn) -> NodeConfig:
    node_ids = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    # Every address distinct: two members on one address is refused.
    port_list = draw(
        st.lists(ports, min_size=2 * len(node_ids), max_size=2 * len(node_ids), unique=True)
    )
    members = {
        node_id: {
            "peer": f"127.0.0.1:{port_list[2 * n]}",
            "client": f"localhost:{port_list[2 * n + 1]}",
        }
        for n, node_id in enumerate(node_ids)
    }
    heartbeat_ticks = draw(st.integers(1, 20))
    return parse_config(
        {
            "node_id": draw(st.sampled_from(node_ids)),
            "members": members,
            "data_dir": draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]))),
            "cluster_id": draw(names),
            "flush": draw(st.sampled_from(["sync", "async"])),
            "tick_ms": draw(st.integers(1, 1000)),
            "heartbeat_ticks": heartbeat_ticks,
            "election_ticks": draw(st.integers(heartbeat_ticks + 1, 100)),
            "log_level": draw(st.sampled_from(["debug", "info", "warning", "error"])),
            "auto_create_topics": draw(st.booleans()),
        }
    )


@given(configs())
def test_render_config_parses_back_to_the_same_config(config: NodeConfig) -> None:
    assert parse_config(tomllib.loads(render_config(config))) == config


@pytest.mark.parametrize(
    ("node_id", "data_dir"), [("node.1", "/d"), ("node 1", "/d"), ("n1", "/a\nb")], ids=repr
)
def test_render_config_parses_back_for_any_name(node_id: str, data_dir: str) -> None:
    config = parse_config(
        {
            "node_id": node_id,
            "members": {node_id: {"peer": "127.0.0.1:1", "client": "127.0.0.1:2"}},
            "data_dir": data_dir,
        }
    )

    assert parse_config(tomllib.loads(render_config(config))) == config


def test_render_config_writes_only_what_differs_from_the_defaults() -> None:
    text = render_config(parse_config(values(tick_ms=10, flush="async")))

    keys = [line.split(" = ")[0] for line in text.splitlines() if " = " in line]
    assert keys[:4] == ["node_id", "data_dir", "flush", "peer"]
    assert "tick_ms" not in keys
    assert {field.name for field in attrs.fields(NodeConfig)} >= set(keys) - {"peer", "client"}


# -- the command line ----------------------------------------------------------------------------


def run_node_command(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dledger_mq", "node", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
    )


def test_node_with_a_missing_config_exits_with_one_readable_line(tmp_path: Path) -> None:
    result = run_node_command("--config", "missing.toml", cwd=tmp_path)

    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Error: missing.toml: no such file"]


def test_node_with_a_bad_value_exits_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    text = render_config(parse_config(values()))
    path.write_text(text.replace('data_dir = "/srv/n1"', 'data_dir = "/srv/n1"\nflush = "x"'))

    result = run_node_command("--config", str(path), cwd=tmp_path)

    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line == f"Error: {path}: flush: must be one of sync, async; got 'x'"


def test_two_members_on_one_address_are_refused() -> None:
    members = {
        "n1": {"peer": "127.0.0.1:9001", "client": "127.0.0.1:9101"},
        "n2": {"peer": "127.0.0.1:9001", "client": "127.0.0.1:9102"},
    }
    with pytest.raises(ConfigError, match="two addresses are the same"):
        parse_config({"node_id": "n1", "members": members, "data_dir": "/d"})


def test_harness_options_come_from_a_comma_separated_list() -> None:
    assert HarnessOptions.parse("") == NO_HARNESS
    assert HarnessOptions.parse("lose-unsynced, ack-before-fsync") == HarnessOptions(True, True)
    with pytest.raises(ConfigError, match="unknown.*'fast'"):
        HarnessOptions.parse("fast")
