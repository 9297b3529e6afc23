"""`cluster up` gives every node an HTTP port below the base port (9801-9803 by default) and
prints where its metrics are; each answers /metrics (to a user's keys: the cluster has users),
/healthz and /readyz."""

from __future__ import annotations

import base64
import http.client
import re
from pathlib import Path

import trio

from dledger_mq.wire.client_auth import Credentials
from tests.node.cluster_up import cluster_up


def _get(address: str, path: str, credentials: Credentials | None = None) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {}
    if credentials is not None:
        pair = f"{credentials.access_key}:{credentials.secret_key}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def test_cluster_up_nodes_serve_metrics_on_ports_below_the_base(tmp_path: Path) -> None:
    with cluster_up(tmp_path) as up:
        await up.wait_for_leader()
        printed = re.findall(r"metrics http://(127\.0\.0\.1:\d+)/metrics", up.output())
        base = up.base_port
        assert printed == [f"127.0.0.1:{base - 75 + i}" for i in range(3)]
        await up.dledger("send", "orders", "hello")
        for address in printed:
            with trio.fail_after(30):
                while (await trio.to_thread.run_sync(_get, address, "/readyz"))[0] != 200:
                    await trio.sleep(0.1)
            # The cluster has users (`cluster up`'s admin): metrics ask for one's keys.
            assert (await trio.to_thread.run_sync(_get, address, "/metrics"))[0] == 401
            wrong = Credentials("admin", "not-the-key")
            assert (await trio.to_thread.run_sync(_get, address, "/metrics", wrong))[0] == 401
            status, text = await trio.to_thread.run_sync(_get, address, "/metrics", up.credentials)
            assert status == 200
            assert "dledger_term{" in text and "rocketmq_topic_number{" in text
            assert (await trio.to_thread.run_sync(_get, address, "/healthz"))[0] == 200
