"""Signing in as a new user meets it, against `cluster up` on free ports: the admin it makes
and prints, the README's Python as written, docs/security.md's user commands as written, a
publish-only user refused an admin action, and anonymous clients refused once users exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import trio

from dledger_mq.node.cluster_layout import ClusterLayout
from tests.node.cluster_up import cluster_up

ROOT = Path(__file__).parents[2]


def readme_python() -> list[str]:
    """The README's Python examples: the same program for Trio, asyncio and blocking code."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    faces = ["dledger_mq.clients", "dledger_mq.aio", "dledger_mq.sync"]
    assert [face in block for face, block in zip(faces, blocks, strict=True)] == [True] * 3
    return blocks


def doc_block_after(doc: str, marker: str) -> list[str]:
    """The lines of the first ```sh block after ``marker`` in ``doc``."""
    text = (ROOT / "docs" / doc).read_text()
    after = text[text.index(marker) :]
    block = after[after.index("```sh\n") + 6 :]
    return [line for line in block[: block.index("```")].splitlines() if line.strip()]


async def test_cluster_up_makes_an_admin_and_the_readme_and_docs_sign_in(tmp_path: Path) -> None:
    with cluster_up(tmp_path) as up:
        await up.wait_for_leader()
        output = up.output()
        assert "made user 'admin' (admin); keys in .dledger-mq/admin.credentials" in output
        credentials = up.root / "admin.credentials"
        assert os.stat(credentials).st_mode & 0o777 == 0o600
        secret = credentials.read_text().strip().split(":")[1]
        assert f"DLEDGER_MQ_SECRET_KEY={secret}" in output  # printed once, to its terminal

        # The CLI in the same folder signs in by itself (the README's commands unchanged).
        with trio.fail_after(30):
            while "admin: admin on cluster" not in up.run("user", "list").stdout:
                await trio.sleep(0.1)
        assert (await up.dledger("send", "orders", "still here")).startswith("broker-a:")

        # The README's Python as written (Trio, asyncio, blocking), but for the port.
        for block in readme_python():
            script = block.replace("127.0.0.1:9876", up.naming.split(",")[0])
            ran = await trio.to_thread.run_sync(
                lambda script=script: subprocess.run(
                    [sys.executable, "-c", script],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            )
            assert ran.returncode == 0, ran.stderr
            assert "b'order 1'" in ran.stdout

        # docs/security.md's user commands as written.
        for line in doc_block_after("security.md", "## Permissions"):
            arguments = shlex.split(line)
            assert arguments[0] == "dledger-mq"
            result = up.run(*arguments[1:])
            assert result.returncode == 0, (line, result.stderr)
        listed = await up.dledger("user", "list")
        assert (
            "billing: subscribe on group:billing, publish on topic:orders*, "
            "subscribe on topic:orders*" in listed
        )

        # A publish-only user: sends, but may not delete a topic or read.
        added = await up.dledger("user", "add", "pub", "--json")
        pub_secret = re.search(r'"secret_key": "([0-9a-f]+)"', added)
        assert pub_secret is not None
        await up.dledger("user", "grant", "pub", "publish", "topic:orders")
        as_pub = ("--access-key", "pub", "--secret-key", pub_secret.group(1))
        assert (await up.dledger("send", "orders", "from pub", *as_pub)).startswith("broker-a:")
        refused = up.run("topic", "delete", "orders", "--yes", *as_pub)
        assert refused.returncode == 1
        assert refused.stderr == "Error: user 'pub' may not admin on topic:orders\n"
        refused = up.run("consume", "orders", "--group", "g", "--count", "1", *as_pub)
        assert refused.returncode == 1 and "may not subscribe" in refused.stderr
        assert "orders" in await up.dledger("topic", "list")  # still there

        # Anonymous clients are refused now, also on loopback.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        anonymous = subprocess.run(
            [
                *shlex.split(f"{sys.executable} -m dledger_mq"),
                "send",
                "orders",
                "x",
                "--naming",
                up.naming,
                "--root",
                str(elsewhere),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("DLEDGER_MQ_")},
        )
        assert anonymous.returncode == 1
        assert anonymous.stderr == "Error: this cluster has users: sign in\n"


async def test_cluster_up_tls_serves_tls_everywhere_and_survives_a_killed_leader(
    tmp_path: Path,
) -> None:
    """docs/security.md's `cluster up --tls`: the CLI in the folder trusts its CA by itself, a
    leader killed is replaced over mutual-TLS peer links, a plain client gets nowhere."""
    with cluster_up(tmp_path, "--tls") as up:
        first = await up.wait_for_leader()
        assert "TLS on every port; clients trust .dledger-mq/tls/ca.pem" in up.output()
        assert (await up.dledger("send", "orders", "over tls")).startswith("broker-a:")
        await up.dledger("cluster", "kill", "leader")
        await up.wait_for_leader(exclude=[first.node_id])
        assert (await up.dledger("send", "orders", "after the kill")).startswith("broker-a:")
        consumed = await up.dledger("consume", "orders", "--group", "g", "--count", "2")
        assert "over tls" in consumed and "after the kill" in consumed
        layout = ClusterLayout.load(up.root)
        assert layout is not None
        endpoints = layout.endpoints
        plain = subprocess.run(
            [sys.executable, "-m", "dledger_mq", "cluster", "status", "--endpoints"]
            + [",".join(address for _, address in endpoints), "--root", "/nowhere"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("DLEDGER_MQ_")},
        )
        assert plain.returncode == 1
        assert "if the cluster speaks TLS: --tls-ca FILE" in plain.stdout + plain.stderr
