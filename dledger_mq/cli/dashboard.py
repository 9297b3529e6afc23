"""`dledger-mq dashboard`: the live web dashboard of a cluster (docs/operations.md,
"Dashboard")."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
import trio

from dledger_mq.cli.main import (
    cluster_endpoints,
    cluster_options,
    main,
    one_line_errors,
    parse_addresses,
    sigterm_as_interrupt,
)

DEFAULT_LISTEN = "127.0.0.1:8080"


@main.command("dashboard")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve it (a port of 0: any free one).",
)
@cluster_options
@one_line_errors
def dashboard(listen: str, endpoints: str | None, root: Path, cluster_id: str) -> None:
    """Serve a live web dashboard of the cluster: its groups, leaders and replicas' lag,
    topics, consumer groups, messages, and admin actions for an admin.

    Viewers sign in with a user's access key and secret key; while the cluster has no users
    (protected mode), viewers on this machine may look without. The dashboard itself reads the
    cluster as the user --access-key names (by default the admin `cluster up` made under
    --root): any user will do, it asks only what every signed-in user may."""
    from dledger_mq.dashboard.app import serve_dashboard
    from dledger_mq.dashboard.collector import Target
    from dledger_mq.logs import configure_logging
    from dledger_mq.node.cluster_layout import ClusterLayout
    from dledger_mq.wire.client_auth import Credentials

    [address] = parse_addresses(listen, "--listen")
    configure_logging("info")
    sigterm_as_interrupt()
    local = endpoints is None and ClusterLayout.load(root) is not None
    target = Target(
        endpoints=cluster_endpoints(endpoints, root),
        cluster_id=cluster_id,
        credentials=Credentials.from_environment(),
        root=root if local else None,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_dashboard, target, address)
            shown = ", ".join(bound) if bound else f"http://{address}"
            click.echo(f"dashboard {shown}", err=False)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
