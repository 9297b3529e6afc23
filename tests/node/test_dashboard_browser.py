"""The dashboard in a real headless Chromium, against a real `cluster up` (which starts the
dashboard itself, as a supervised process on the port it derives from the base port): the
pages load, show the leader, find a message sent from a terminal by its key, and follow a
leadership transfer (one through the page's admin form, one through `cluster
transfer-leader`) and a killed leader, without a reload; a killed dashboard is started again
by `cluster up`.

With DLEDGER_MQ_DASHBOARD_SCREENSHOTS=docs/images the test also puts load on the cluster and
saves a screenshot of each page there (docs/operations.md, "Dashboard").
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import trio

from dledger_mq.clients.consumer import Consumer, ReceivedMessage
from dledger_mq.clients.producer import Producer
from dledger_mq.node.cluster_layout import DASHBOARD_PORT_BELOW_BASE
from dledger_mq.node.processes import read_pid_file
from dledger_mq.wire.client_auth import Credentials
from tests.node.cluster_up import ClusterUp, cluster_up, free_base_port
from tests.node.dashboard_browser import (
    SCREENSHOTS_ENVIRONMENT_VARIABLE,
    attribute_of,
    chromium,
    require_chromium,
    screenshot,
    show_view,
    sign_in,
    text_of,
    wait_for,
)

LEADER_CELL = '[data-leader-of="broker-a"]'
#: The message the test sends from a terminal and the page finds by its key.
SENT_KEY = "order-0"
SENT_BODY = "the first order"


def base_port_with_free_dashboard() -> int:
    """A base port whose cluster ports and dashboard port are all free now."""
    for _ in range(100):
        base = free_base_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base - DASHBOARD_PORT_BELOW_BASE))
            except OSError:
                continue
        return base
    raise RuntimeError("no free block of ports")


def _browse(up: ClusterUp, url: str, credentials: Credentials, leader: str, sent_id: str) -> None:
    """Everything the browser does, in one thread (selenium blocks)."""
    with chromium() as driver:
        sign_in(driver, url, credentials.access_key, credentials.secret_key)
        wait_for(driver, lambda d: text_of(d, LEADER_CELL) == leader, f"{leader} shown leading")
        if os.environ.get(SCREENSHOTS_ENVIRONMENT_VARIABLE):
            # The charts of a screenshot need some history: 20 samples, a second apart.
            first = int(text_of(driver, "#sample-version") or 0)
            wait_for(
                driver,
                lambda d: int(text_of(d, "#sample-version") or 0) >= first + 20,
                "20 more samples",
            )
        # Gone if the page reloads: every later check looks for it.
        driver.execute_script("window.dashboardMark = 'never reloaded'")
        screenshot(driver, "cluster")
        show_view(driver, "topics")
        wait_for(
            driver,
            lambda d: d.find_elements("css selector", '[data-topic="orders"]'),
            "the topic orders",
        )
        screenshot(driver, "topics")
        show_view(driver, "groups")
        wait_for(
            driver,
            lambda d: d.find_elements("css selector", '[data-consumer-group="billing"]'),
            "the consumer group billing",
        )
        screenshot(driver, "groups")
        # A message found by its key: its id, body and where it is shown.
        show_view(driver, "messages")
        form = driver.find_element("id", "message-by-key")
        form.find_element("name", "topic").send_keys("orders")
        form.find_element("name", "key").send_keys(SENT_KEY)
        form.find_element("css selector", "button").click()
        found = f'article[data-message-id="{sent_id}"]'
        wait_for(driver, lambda d: text_of(d, f"{found} pre.body") == SENT_BODY, "the found body")
        assert text_of(driver, f"{found} h3") == sent_id
        assert text_of(driver, f'{found} [data-field="keys"] td') == SENT_KEY
        assert text_of(driver, f'{found} [data-field="attempt"] td') == "1"
        assert text_of(driver, "#messages-status") == "1 found"
        screenshot(driver, "messages")
        show_view(driver, "cluster")

        followers = sorted({"n1", "n2", "n3"} - {leader})
        # An admin action through the page.
        field = driver.find_element("id", "transfer-target")
        field.send_keys(followers[0])
        driver.find_element("css selector", "#transfer-form button").click()
        wait_for(
            driver,
            lambda d: "leads now" in (text_of(d, "#transfer-form output") or ""),
            "the transfer form's answer",
        )
        wait_for(
            driver, lambda d: text_of(d, LEADER_CELL) == followers[0], "the page's transfer shown"
        )
        # `cluster transfer-leader` from a terminal.
        result = up.run("cluster", "transfer-leader", "--to", followers[1])
        assert result.returncode == 0, result.stderr
        wait_for(
            driver, lambda d: text_of(d, LEADER_CELL) == followers[1], "the CLI's transfer shown"
        )
        # The leader killed: shown unreachable, and another leads.
        result = up.run("cluster", "kill", followers[1])
        assert result.returncode == 0, result.stderr
        row = f'[data-node="{followers[1]}"]'
        wait_for(
            driver,
            lambda d: attribute_of(d, row, "data-role") == "unreachable",
            f"{followers[1]} shown unreachable",
        )
        wait_for(
            driver,
            lambda d: text_of(d, LEADER_CELL) in {leader, followers[0]},
            "a new leader shown",
        )
        assert text_of(driver, f"{row} .state") == "down"
        assert driver.execute_script("return window.dashboardMark") == "never reloaded"

        # The dashboard itself dies: `cluster up` starts it again; it forgot its sessions, so
        # the page, reconnecting, asks to sign in again.
        record = read_pid_file(up.root / "dashboard" / "dashboard.pid")
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)
        wait_for(driver, lambda d: d.find_elements("id", "access-key"), "the sign-in form again")
        sign_in(driver, url, credentials.access_key, credentials.secret_key)
        wait_for(
            driver,
            lambda d: text_of(d, LEADER_CELL) in {leader, followers[0]},
            "the leader shown by the restarted dashboard",
        )


async def _load(naming: list[str], credentials: Credentials) -> None:
    """Messages for the screenshots: a steady trickle, a consumer group that fails some."""

    async def fail_some(message: ReceivedMessage) -> None:
        if message.body.endswith(b"7"):
            raise RuntimeError("cannot bill an order ending in 7")

    async with (
        Producer(naming, credentials=credentials) as producer,
        Consumer(naming, group="billing", topic="orders", credentials=credentials) as consumer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(consumer.run, fail_some)
        number = 0
        while True:
            number += 1
            await producer.send("orders", f"order {number}".encode(), keys=[f"order-{number}"])
            await trio.sleep(0.02 if number % 200 < 150 else 0.2)


async def test_the_dashboard_shows_the_leader_and_follows_a_transfer_and_a_killed_leader(
    tmp_path: Path,
) -> None:
    require_chromium()
    with cluster_up(tmp_path, base_port=base_port_with_free_dashboard()) as up:
        leader = await up.wait_for_leader()  # signed in as the admin: the user exists
        credentials = up.credentials
        assert credentials is not None
        found = re.search(r"^dashboard http://(127\.0\.0\.1:\d+) ", up.output(), re.MULTILINE)
        assert found is not None, up.output()
        address = found.group(1)
        assert address == f"127.0.0.1:{up.base_port - DASHBOARD_PORT_BELOW_BASE}"
        await up.dledger(
            "group", "update", "billing", "--max-attempts", "2", "--retry-delays", "1s"
        )
        receipt = await up.dledger(
            "send",
            "orders",
            SENT_BODY,
            "--key",
            SENT_KEY,
            "--tags",
            "new",
            "--property",
            "source=terminal",
            "--json",
        )
        sent_id = json.loads(receipt)["msg_id"]
        await up.dledger(
            "group", "reset-offset", "billing", "--topic", "orders", "--to-offset", "0"
        )
        async with trio.open_nursery() as nursery:
            if os.environ.get(SCREENSHOTS_ENVIRONMENT_VARIABLE):
                naming = up.naming.split(",")
                nursery.start_soon(_load, naming, credentials)
            await trio.to_thread.run_sync(
                _browse, up, f"http://{address}", credentials, leader.node_id, sent_id
            )
            nursery.cancel_scope.cancel()
