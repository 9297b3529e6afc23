"""`dledger-mq node` and `dledger-mq naming`: the long-running server processes."""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any

import click
import trio

from dledger_mq.cli.main import main, one_line_errors


@main.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The node's TOML file; the flags below override it.",
)
@click.option("--node-id", default=None, help="This node's id (a key of [members]).")
@click.option("--cluster-id", default=None, help="Peers of another cluster id are refused.")
@click.option("--data-dir", default=None, help="Where the CommitLog lives.")
@click.option(
    "--flush",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="sync (default): fsync before acknowledging; async: fsync on an interval.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="ID=PEER,CLIENT",
    help="A member and its addresses, e.g. n1=127.0.0.1:9891,127.0.0.1:9881; "
    "repeat for each (replaces [members]).",
)
@click.option(
    "--init",
    is_flag=True,
    help="Make this new node's empty log first (refused if it has one). Only for a node of a "
    "new cluster: a node that lost its log must not come back empty.",
)
@click.pass_context
@one_line_errors
def node(
    context: click.Context,
    config_path: Path | None,
    node_id: str | None,
    cluster_id: str | None,
    data_dir: str | None,
    flush: str | None,
    log_level: str | None,
    members: tuple[str, ...],
    init: bool,
) -> None:
    """Run one replica: its Raft group on the CommitLog, peer and client listeners.

    SIGTERM or SIGINT stops it gracefully: it hands leadership to an up-to-date follower,
    lets the in-flight fsync finish and closes its connections.

    `--init` makes its log, once, for a node of a new cluster (`cluster up`
    makes it for its nodes). A node whose log is missing starts *recovering* (it does not vote
    until a leader has sent it the log again); one whose log is damaged refuses to start.

    `dledger-mq node status` shows what running nodes did and hold.
    """
    if context.invoked_subcommand is not None:
        return  # `node status`: its own options
    from dledger_mq.logs import configure_logging
    from dledger_mq.node.config import load_config
    from dledger_mq.node.data_dir import initialise_log
    from dledger_mq.node.harness import HarnessOptions
    from dledger_mq.node.server import run_node

    overrides: dict[str, Any] = {
        "node_id": node_id,
        "cluster_id": cluster_id,
        "data_dir": data_dir,
        "flush": flush,
        "log_level": log_level,
    }
    if members:
        table = {}
        for text in members:
            member_id, _, addresses = text.partition("=")
            peer, _, client = addresses.partition(",")
            table[member_id] = {"peer": peer, "client": client}
        overrides["members"] = table
    config = load_config(config_path, overrides)
    harness = HarnessOptions.from_environment()
    configure_logging(config.log_level)
    if init:
        initialise_log(config)
    trio.run(functools.partial(run_node, config, harness=harness))


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:9876",
    show_default=True,
    metavar="HOST:PORT",
    help="Where clients and brokers reach this naming node (WebSocket).",
)
@click.option("--cluster-id", default="local", show_default=True)
@click.option(
    "--heartbeat-interval-ms",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Brokers' heartbeat; a route expires after three missed.",
)
@click.option(
    "--cluster-secret-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The cluster's secret (mode 0600): only nodes that hold it may register. Without "
    "it, registrations are taken from this machine only.",
)
@click.option(
    "--tls-cert-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Serve TLS with this certificate (and --tls-key-file, mode 0600).",
)
@click.option("--tls-key-file", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@one_line_errors
def naming(
    listen: str,
    cluster_id: str,
    heartbeat_interval_ms: int,
    cluster_secret_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
    log_level: str,
) -> None:
    """Run a naming node alone: a route registry brokers register with and clients ask."""
    from dledger_mq.logs import configure_logging
    from dledger_mq.naming.server import serve_naming
    from dledger_mq.wire.address import Address
    from dledger_mq.wire.peer_auth import load_cluster_secret

    secret = load_cluster_secret(cluster_secret_file) if cluster_secret_file else None
    if bool(tls_cert_file) != bool(tls_key_file):
        raise click.UsageError("give --tls-cert-file and --tls-key-file together")
    ssl_context = None
    if tls_cert_file and tls_key_file:
        from dledger_mq.node.certificates import server_ssl_context

        ssl_context = server_ssl_context(tls_cert_file, tls_key_file)

    try:
        address = Address.parse(listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    configure_logging(log_level)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_naming, ssl_context=ssl_context),
                address.host,
                address.port,
                cluster_id,
                f"naming@{listen}",
                heartbeat_interval_ms,
                secret,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
