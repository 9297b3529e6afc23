"""The local cluster's layout: ports derived from one base port, configs written durably (a
power cut right after `cluster up` created them leaves them whole), pid files."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dledger_mq.node.cluster_layout import REMOVED_FILE_NAME, ClusterLayout, write_configs
from dledger_mq.node.config import ConfigError, load_config, parse_config
from dledger_mq.node.data_dir import log_directory
from dledger_mq.node.processes import (
    PidRecord,
    process_start_time,
    read_pid_file,
    write_pid_file,
)
from dledger_mq.raft.storage.commitlog_format import LogIdentity
from dledger_mq.raft.storage.commitlog_recovery import read_identity
from dledger_mq.raft.storage.disk import OsDisk, make_directories
from dledger_mq.raft.storage.simulated_disks import MemoryDisk


def test_the_default_layout_keeps_the_documented_ports() -> None:
    layout = ClusterLayout.derive(Path(".dledger-mq"))
    assert [(n.node_id, n.naming, n.client, n.peer) for n in layout.nodes] == [
        ("n1", "127.0.0.1:9876", "127.0.0.1:9881", "127.0.0.1:9891"),
        ("n2", "127.0.0.1:9877", "127.0.0.1:9882", "127.0.0.1:9892"),
        ("n3", "127.0.0.1:9878", "127.0.0.1:9883", "127.0.0.1:9893"),
    ]


def test_five_nodes_on_another_base_port_use_twenty_distinct_ports_at_most() -> None:
    layout = ClusterLayout.derive(Path("x"), node_count=5, base_port=20000)
    ports = [
        int(address.rsplit(":", 1)[1])
        for node in layout.nodes
        for address in (node.naming, node.client, node.peer)
    ]
    assert len(set(ports)) == 15
    assert min(ports) == 20000 and max(ports) < 20020
    assert layout.base_port == 20000


@pytest.mark.parametrize(("nodes", "base_port"), [(4, 9876), (3, 0), (3, 65530)])
def test_a_bad_node_count_or_base_port_is_refused(nodes: int, base_port: int) -> None:
    with pytest.raises(ConfigError):
        ClusterLayout.derive(Path("x"), nodes, base_port)


def test_a_layout_is_read_back_from_the_configs(tmp_path: Path) -> None:
    layout = ClusterLayout.derive(tmp_path / "root", node_count=5, base_port=30000)
    layout.write_configs("async")
    loaded = ClusterLayout.load(tmp_path / "root")
    assert loaded == layout
    config = tomllib.loads((tmp_path / "root" / "n4" / "node.toml").read_text())
    assert (config["node_id"], config["flush"], config["naming_listen"]) == (
        "n4",
        "async",
        "127.0.0.1:30003",
    )
    assert ClusterLayout.load(tmp_path / "nothing here") is None


def test_configs_survive_a_power_cut_right_after_they_are_written() -> None:
    disk = MemoryDisk()
    layout = ClusterLayout.derive(Path("/cluster/.dledger-mq"))
    layout.write_configs("sync", disk)
    disk.crash(random.Random(1))
    for node in layout.nodes:
        text = disk.contents(str(node.config_path)).decode()
        assert parse_config(tomllib.loads(text)).node_id == node.node_id


def test_an_empty_config_left_by_a_power_cut_is_written_again(tmp_path: Path) -> None:
    """What a version that did not fsync its configs could leave behind."""
    layout = ClusterLayout.derive(tmp_path)
    layout.write_configs("sync")
    (tmp_path / "n1" / "node.toml").write_text("")
    assert ClusterLayout.load(tmp_path) == layout
    layout.write_configs("sync")
    assert tomllib.loads((tmp_path / "n1" / "node.toml").read_text())["node_id"] == "n1"


def test_configs_that_exist_are_never_rewritten(tmp_path: Path) -> None:
    layout = ClusterLayout.derive(tmp_path)
    [first, *_] = write_configs(tmp_path, layout.members, "sync", layout.naming)
    first.write_text("# edited by hand\n" + first.read_text())
    write_configs(tmp_path, layout.members, "async", layout.naming)
    assert first.read_text().startswith("# edited by hand\n")


def test_the_first_cluster_up_makes_each_nodes_log_and_never_again(tmp_path: Path) -> None:
    """A new node's log is made with its config, on purpose; a log lost afterwards is not
    made again (the node refuses to start instead of coming back empty)."""
    layout = ClusterLayout.derive(tmp_path)
    paths = write_configs(tmp_path, layout.members, "sync", layout.naming)
    configs = [load_config(path, {}) for path in paths]
    assert [read_identity(OsDisk(), log_directory(c)) for c in configs] == [
        LogIdentity("local", "broker-a", node_id) for node_id in ("n1", "n2", "n3")
    ]
    shutil.rmtree(log_directory(configs[2]))
    write_configs(tmp_path, layout.members, "sync", layout.naming)
    assert not os.path.exists(log_directory(configs[2]))


def test_new_directories_survive_a_power_cut() -> None:
    disk = MemoryDisk()
    make_directories(disk, "/a/b/c")
    disk.crash(random.Random(2))
    assert disk.is_directory("/a/b/c")


def test_relative_directories_are_made_from_the_working_directory(tmp_path: Path) -> None:
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        from dledger_mq.raft.storage.disk import OsDisk

        make_directories(OsDisk(), "x/y")
    finally:
        os.chdir(previous)
    assert (tmp_path / "x" / "y").is_dir()


def test_a_pid_file_names_the_process_only_while_that_process_runs(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = write_pid_file(tmp_path / "node.pid", process.pid)
        assert record is not None and read_pid_file(tmp_path / "node.pid") == record
        assert record.is_running()
        # The same PID with another start time is another process.
        assert not PidRecord(process.pid, str(int(record.start_time) + 1)).is_running()
    finally:
        process.kill()
        process.wait()
    assert not record.is_running()
    assert process_start_time(process.pid) is None


@pytest.mark.parametrize("text", ["", "{", '{"pid": "x"}', '{"pid": 1, "start_time": "1"}', "[]"])
def test_a_damaged_pid_file_means_not_known_to_run(tmp_path: Path, text: str) -> None:
    (tmp_path / "node.pid").write_text(text)
    assert read_pid_file(tmp_path / "node.pid") is None


def test_a_removed_first_node_changes_no_port_and_a_node_added_takes_the_next_ones(
    tmp_path: Path,
) -> None:
    """n1 removed (`remove-replica`: its folder marked) takes its naming node with it, not the
    base port; n4 added gets the ports a five-node group's n4 would."""
    layout = ClusterLayout.derive(tmp_path, base_port=20000)
    layout.write_configs("sync")
    (tmp_path / "n1" / REMOVED_FILE_NAME).write_text("removed\n")
    loaded = ClusterLayout.load(tmp_path)
    assert loaded is not None
    assert loaded.node_ids == ["n2", "n3"] and loaded.base_port == 20000
    added = loaded.add_node("broker-a", "n4")
    assert (added.client, added.peer) == ("127.0.0.1:20008", "127.0.0.1:20018")
    again = ClusterLayout.load(tmp_path)
    assert again is not None and again.node_ids == ["n2", "n3", "n4"]
    with pytest.raises(ConfigError, match="was removed"):
        again.add_node("broker-a", "n1")
