"""docs/deployment.md, run as written on one machine: the doc's machines 10.0.0.1-4 are
127.0.0.2-5, its ports free ones, its /etc/dledger-mq and /var/lib/dledger-mq a folder per
machine, and every block marked ``<!-- deployment-test: NAME -->`` is the text this test runs.

What it does in place of a step it cannot run as written:

- ``sudo`` and ``sudo -u dledger-mq`` are dropped, and so are ``install``'s ``-o``/``-g`` (no
  such user here); ``useradd`` and ``pip install`` are not run (this checkout is installed);
  ``scp`` is a copy (the ``install`` lines then read the files from the operator's folder).
- A terminal running ``dledger-mq node ... --init`` is a process in its own process group;
  Ctrl-C is SIGINT to it.
- ``systemctl enable --now`` and ``start`` run the unit's ``ExecStart`` from
  examples/systemd/dledger-mq-node.service; ``systemctl restart`` sends its ``KillSignal``
  (SIGTERM), waits for the exit, and runs ``ExecStart`` again.
- "ask again" is a poll of the same command under a deadline; a dead machine is SIGKILL.

Every process it starts is killed by PID (its process group) in a ``finally``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from dledger_mq.node.config import NodeConfig, load_config
from dledger_mq.node.data_dir import initialise_log, log_directory
from dledger_mq.raft.storage.commitlog_format import FORMAT_VERSION, META_FILE_NAME

REPOSITORY = Path(__file__).resolve().parents[2]
DOC = REPOSITORY / "docs" / "deployment.md"
UNIT = REPOSITORY / "examples" / "systemd" / "dledger-mq-node.service"
#: The doc's machines, and where they run here.
MACHINES = {"10.0.0.1": "127.0.0.2", "10.0.0.2": "127.0.0.3", "10.0.0.3": "127.0.0.4"}
REPLACEMENT = {"10.0.0.4": "127.0.0.5"}
NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3", "n4": "10.0.0.4"}
DOC_PORTS = (9891, 9881, 9876, 9801)
#: TLS and four real processes on a shared 2-core machine: generous, and polled.
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.1
BIN = Path(sys.executable).parent


def _loopback_addresses_bind() -> bool:
    """Linux answers on all of 127.0.0.0/8; some systems only on 127.0.0.1."""
    try:
        for address in [*MACHINES.values(), *REPLACEMENT.values()]:
            with socket.socket() as probe:
                probe.bind((address, 0))
    except OSError:
        return False
    return True


needs_loopback_addresses = pytest.mark.skipif(
    not _loopback_addresses_bind(), reason="127.0.0.2-5 do not bind on this system"
)


def doc_blocks() -> dict[str, str]:
    """The doc's blocks marked for this test, by name."""
    text = DOC.read_text()
    pattern = re.compile(r"<!-- deployment-test: (\S+) -->\n```[a-z]*\n(.*?)```", re.DOTALL)
    return {name: body for name, body in pattern.findall(text)}


def unit_line(key: str) -> str:
    [value] = [
        line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key)
    ]
    return value


def ports_free_on_every_address() -> dict[int, int]:
    """A free port for each of the doc's, bindable on every machine's address at once."""
    addresses = [*MACHINES.values(), *REPLACEMENT.values()]
    while True:
        held: list[socket.socket] = []
        try:
            ports = []
            for _ in DOC_PORTS:
                probe = socket.socket()
                held.append(probe)
                probe.bind((addresses[0], 0))
                ports.append(probe.getsockname()[1])
            for address in addresses[1:]:
                for port in ports:
                    other = socket.socket()
                    held.append(other)
                    other.bind((address, port))
            return dict(zip(DOC_PORTS, ports, strict=True))
        except OSError:
            continue  # one was taken on another address: draw again
        finally:
            for sock in held:
                sock.close()


def fetch(url: str, keys: tuple[str, str] | None = None) -> str:
    """GET ``url``; with ``keys`` (access key, secret key) as HTTP Basic credentials."""
    request = urllib.request.Request(url)
    if keys is not None:
        token = base64.b64encode(f"{keys[0]}:{keys[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def read_config(path: Path) -> NodeConfig:
    return load_config(path, {})


class Deployment:
    """The machines of the doc, as folders and processes under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.operator = root / "operator"
        self.operator.mkdir()
        self.ports = ports_free_on_every_address()
        self.blocks = doc_blocks()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        #: What the operator's shell holds: the operator block, then the admin's exports.
        self.shell_prelude = ""
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        for name in ("DLEDGER_MQ_ACCESS_KEY", "DLEDGER_MQ_SECRET_KEY", "DLEDGER_MQ_TLS_CA"):
            self.env.pop(name, None)

    # -- the doc's text, on this machine ---------------------------------------------------------

    def machine_root(self, node_id: str) -> Path:
        return self.root / node_id

    def localise(self, text: str, node_id: str | None = None) -> str:
        """The doc's text with this machine's addresses, ports and folders, and without
        ``sudo`` (and ``install``'s owner flags: no such user here)."""
        text = text.replace("sudo -u dledger-mq ", "").replace("sudo ", "")
        text = text.replace("-o dledger-mq -g dledger-mq ", "")
        for doc_address, address in {**MACHINES, **REPLACEMENT}.items():
            text = re.sub(rf"\b{re.escape(doc_address)}\b", address, text)
        for doc_port, port in self.ports.items():
            text = re.sub(rf":{doc_port}\b", f":{port}", text)
        text = text.replace("/opt/dledger-mq/bin/", f"{BIN}/")
        if node_id is not None:
            machine = self.machine_root(node_id)
            text = text.replace("/etc/dledger-mq", str(machine / "etc"))
            text = text.replace("/var/lib/dledger-mq", str(machine / "var"))
        return text

    def address(self, node_id: str) -> str:
        doc_address = NODES[node_id]
        return {**MACHINES, **REPLACEMENT}[doc_address]

    # -- shells ----------------------------------------------------------------------------------

    async def bash(
        self, script: str, cwd: Path, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        done = await trio.run_process(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=self.env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if check:
            assert done.returncode == 0, (
                f"{script}\nexit {done.returncode}\n{done.stdout.decode()}{done.stderr.decode()}"
            )
        return done

    async def operator_runs(self, script: str, check: bool = True) -> str:
        """A block run in the operator's shell (its variables and exports), in its folder."""
        done = await self.bash(self.localise(self.shell_prelude + script), self.operator, check)
        return done.stdout.decode()

    async def until(self, what: str, attempt: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``attempt`` (an async callable returning true when done) under the deadline."""
        with trio.move_on_after(DEADLINE_SECONDS) as scope:
            while not await attempt():
                await trio.sleep(POLL_SECONDS)
        assert not scope.cancelled_caught, f"no {what} within {DEADLINE_SECONDS} s"

    # -- machines --------------------------------------------------------------------------------

    async def install_files(self, node_id: str) -> None:
        """The doc's ``install`` lines on the node's machine, ``scp`` being a copy."""
        machine = self.machine_root(node_id)
        machine.mkdir()
        text = self.blocks["files"].replace("n1.", f"{node_id}.")
        await self.bash(self.localise(text, node_id), self.operator)

    def write_config(self, node_id: str, block: str) -> Path:
        """The node's ``node.toml``: the doc's, with ``node_id`` and the two listen addresses
        changed to the machine's, as the doc says."""
        text = block
        if node_id != "n1" and block.startswith('node_id = "n1"'):
            text = text.replace('node_id = "n1"', f'node_id = "{node_id}"')
            own = NODES[node_id]
            text = re.sub(r'(naming_listen|http_listen) = "10\.0\.0\.1:', rf'\1 = "{own}:', text)
        path = self.machine_root(node_id) / "etc" / "node.toml"
        path.write_text(self.localise(text, node_id))
        return path

    def start(self, node_id: str, command: str) -> None:
        """A node in its own process group, its output in the machine's ``node.log``."""
        machine = self.machine_root(node_id)
        with open(machine / "node.log", "ab") as log:
            process = subprocess.Popen(
                ["bash", "-c", "exec " + self.localise(command, node_id)],
                cwd=machine,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.processes[node_id] = process
        self.started.append(process)

    def start_service(self, node_id: str) -> None:
        """``systemctl start``: the unit's ``ExecStart``."""
        self.start(node_id, unit_line("ExecStart="))

    async def stop(self, node_id: str, how: signal.Signals) -> None:
        """Ctrl-C (SIGINT) or the unit's KillSignal; a graceful stop exits 0."""
        process = self.processes[node_id]
        process.send_signal(how)
        with trio.fail_after(DEADLINE_SECONDS):
            while process.poll() is None:
                await trio.sleep(POLL_SECONDS)
        assert process.returncode == 0, self.log_of(node_id)

    def log_of(self, node_id: str) -> str:
        return (self.machine_root(node_id) / "node.log").read_text()[-4000:]

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    # -- the cluster, as the operator sees it ------------------------------------------------------

    async def statuses(self, endpoints_variable: str = "$ENDPOINTS") -> list[dict[str, object]]:
        command = f"dledger-mq cluster status --endpoints {endpoints_variable} --cluster-id prod"
        output = await self.operator_runs(command + " --json", check=False)
        try:
            return list(json.loads(output))
        except ValueError:
            return []

    async def leader(self, endpoints_variable: str = "$ENDPOINTS") -> str:
        """The node every reachable node names as leader, once they agree."""
        found: list[str] = []

        async def agreed() -> bool:
            statuses = await self.statuses(endpoints_variable)
            live = [s for s in statuses if s["role"] != "unreachable"]
            leaders = [s for s in live if s["role"] == "leader"]
            if (
                statuses
                and len(leaders) == 1
                and all(s["leader"] == leaders[0]["id"] for s in live)
            ):
                found[:] = [str(leaders[0]["id"])]
                return True
            return False

        await self.until("agreed leader", agreed)
        return found[0]

    async def ready(self, node_id: str) -> None:
        """The doc's readiness check, asked again until it answers 200."""
        command = self.blocks["ready"].replace("10.0.0.3", NODES[node_id])

        async def answered() -> bool:
            done = await self.operator_runs(command, check=False)
            return '"ready":true' in done.replace(" ", "")

        await self.until(f"{node_id} ready", answered)


@needs_loopback_addresses
async def test_the_documented_deployment_runs_on_three_machines(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    blocks = deployment.blocks
    nodes = ["n1", "n2", "n3"]
    try:
        # The cluster secret, the CA and a certificate per node, on the operator's machine.
        await deployment.operator_runs(blocks["secrets"])
        assert (deployment.operator / "cluster.secret").stat().st_mode & 0o077 == 0
        for node_id in nodes:
            await deployment.install_files(node_id)
            config = read_config(deployment.write_config(node_id, blocks["node.toml"]))
            assert config.node_id == node_id
            assert config.naming_listen.startswith(deployment.address(node_id))

        # First start: by hand, with --init, on each machine; they elect a leader.
        for node_id in nodes:
            deployment.start(node_id, blocks["init"])
        deployment.shell_prelude = blocks["operator"]
        await deployment.leader()
        status = await deployment.operator_runs(blocks["status"])
        assert status.count("leader") >= 1 and "unreachable" not in status

        # The admin user (protected mode off for the first start), then an application's.
        await deployment.operator_runs(blocks["admin"])
        # From then on every client signs in, even with protected mode off.
        anonymous = await deployment.bash(
            deployment.localise(blocks["operator"] + blocks["status"]), deployment.operator, False
        )
        assert anonymous.returncode == 1, anonymous.stdout.decode()
        assert "this cluster has users: sign in" in anonymous.stderr.decode(), anonymous.stderr
        exports = [line for line in blocks["admin"].splitlines() if line.startswith("export")]
        deployment.shell_prelude += "\n".join(exports) + "\n"
        billing = json.loads((await deployment.operator_runs(blocks["users"])).splitlines()[0])
        assert billing["access_key"] == "billing"

        # Ctrl-C, the first-start line out, then systemd's ExecStart.
        for node_id in nodes:
            await deployment.stop(node_id, signal.SIGINT)
        to_systemd = blocks["to-systemd"]
        [edit] = [line for line in to_systemd.splitlines() if line.startswith("sudo sed")]
        for node_id in nodes:
            await deployment.bash(deployment.localise(edit, node_id), deployment.operator)
            config_path = deployment.machine_root(node_id) / "etc" / "node.toml"
            assert read_config(config_path).protected_mode
            deployment.start_service(node_id)
        await deployment.leader()

        # A message through the CLI, signed in as the admin, over TLS.
        output = await deployment.operator_runs(blocks["messages"])
        assert "hello" in output

        # A rolling restart: followers first, the leader last, each once the previous is ready.
        leader = await deployment.leader()
        restart = blocks["restart"].strip()
        assert restart == "sudo systemctl restart dledger-mq-node"
        for node_id in [*(n for n in nodes if n != leader), leader]:
            await deployment.stop(node_id, signal.Signals[unit_line("KillSignal=")])
            deployment.start_service(node_id)
            await deployment.ready(node_id)
        new_leader = await deployment.leader()
        assert new_leader in nodes
        send = [line for line in blocks["messages"].splitlines() if " send " in line]
        await deployment.operator_runs(send[0].replace('"hello"', '"after the restart"'))
        consume = [line for line in blocks["messages"].splitlines() if " consume " in line]
        assert "after the restart" in await deployment.operator_runs(consume[0])

        # Replacing a machine: n3's is gone for good; n4 comes, then n3 goes.
        n3 = deployment.processes["n3"]
        os.killpg(n3.pid, signal.SIGKILL)
        n3.wait(timeout=10)
        function = re.search(r"node_certificate\(\) \{.*?\n\}\n", blocks["secrets"], re.DOTALL)
        assert function is not None
        await deployment.operator_runs(function.group(0) + blocks["replacement-certificate"])
        await deployment.install_files("n4")
        deployment.write_config("n4", blocks["replacement-node.toml"])
        deployment.start("n4", blocks["init"])

        async def n4_started() -> bool:
            return "node_started" in deployment.log_of("n4")

        await deployment.until("node_started in n4's log", n4_started)
        await deployment.stop("n4", signal.SIGINT)
        deployment.start_service("n4")
        members = await deployment.operator_runs(blocks["replace"])
        voters = re.search(r"voters ([^;]*); learners (.*)$", members.strip())
        assert voters is not None, members
        assert sorted(voters.group(1).split(", ")) == ["n1", "n2", "n4"], members
        assert voters.group(2) == "none", members
        # The operator's shell with the new machine in place of the dead one, as the doc says.
        deployment.shell_prelude = deployment.shell_prelude.replace("10.0.0.3", "10.0.0.4")
        leader = await deployment.leader()
        assert leader in ("n1", "n2", "n4")
        # n4 in place of n3 in the others' node.toml, then a rolling restart of them.
        replaced = blocks["node.toml"].replace("[members.n3]", "[members.n4]")
        replaced = replaced.replace("10.0.0.3", "10.0.0.4")
        replaced = "\n".join(
            line for line in replaced.splitlines() if not line.startswith(("protected_mode", "#"))
        )
        for node_id in sorted(("n1", "n2"), key=lambda node_id: node_id == leader):
            await deployment.stop(node_id, signal.Signals[unit_line("KillSignal=")])
            deployment.write_config(node_id, replaced)
            deployment.start_service(node_id)
            await deployment.ready(node_id)
        naming_of_n4 = f"{deployment.address('n4')}:{deployment.ports[9876]}"

        # Through n4's naming node alone: it knows the group's leader.
        send_via_n4 = send[0].replace('"hello"', '"after the replacement"')
        send_via_n4 = send_via_n4.replace("$NAMING", naming_of_n4) + " --timeout 10"
        await deployment.operator_runs(send_via_n4)
        assert "after the replacement" in await deployment.operator_runs(consume[0])

        # Prometheus' user: the doc's scrape, with its keys (users exist: /metrics asks).
        assert "dledger_has_leader{" in await deployment.operator_runs(blocks["metrics"])
        secret = (deployment.operator / "metrics.secret").read_text()
        # Every metric the doc's alerts use is one the nodes export (the leader: follower lag).
        exported = ""
        for node_id in ("n1", "n2", "n4"):
            url = f"http://{deployment.address(node_id)}:{deployment.ports[9801]}/metrics"
            with pytest.raises(urllib.error.HTTPError, match="401"):
                await trio.to_thread.run_sync(fetch, url)  # no keys
            exported += await trio.to_thread.run_sync(fetch, url, ("metrics", secret))
        alerts = DOC.read_text().split("## What to monitor and alert on", 1)[1]
        used = set(re.findall(r"\b((?:dledger|rocketmq)_[a-z_]+)\b", alerts))
        assert used and {name for name in used if f"\n{name}{{" not in exported} == set()
    finally:
        deployment.kill_all()


async def test_a_node_refuses_a_log_of_an_unknown_format_version(tmp_path: Path) -> None:
    """The doc's rolling upgrade: a build that cannot read the log's format refuses to start,
    in one line, and changes nothing."""
    path = tmp_path / "node.toml"
    path.write_text(
        f'node_id = "n1"\ndata_dir = "{tmp_path / "data"}"\n'
        '[members.n1]\npeer = "127.0.0.1:1"\nclient = "127.0.0.1:2"\n'
    )
    config = read_config(path)
    initialise_log(config)
    meta = Path(log_directory(config)) / META_FILE_NAME
    data = bytearray(meta.read_bytes())
    data[16:20] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    meta.write_bytes(bytes(data))
    before = sorted((p.name, p.stat().st_size) for p in Path(log_directory(config)).iterdir())
    done = await trio.run_process(
        [sys.executable, "-m", "dledger_mq", "node", "--config", str(path)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"Error: {log_directory(config)}: format version {FORMAT_VERSION + 1}; "
        f"this build reads version {FORMAT_VERSION}"
    ]
    after = sorted((p.name, p.stat().st_size) for p in Path(log_directory(config)).iterdir())
    assert after == before and meta.read_bytes() == bytes(data)
