"""The ``dledger-mq`` group and what its commands share: one-line errors, addresses, options.

Every command fails with one readable line (``Error: ...``) and a non-zero exit, never a
traceback: the product's errors, a system call's and bad flag values are worded here. A bug
still gets one line, and ``DLEDGER_MQ_TRACEBACK=1`` shows its traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import trio

from dledger_mq.errors import DledgerError, UsageError

if TYPE_CHECKING:
    from dledger_mq.clients.admin import AdminConnection
    from dledger_mq.clients.routing import RoutedClient

F = TypeVar("F", bound=Callable[..., Any])

TRACEBACK_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_TRACEBACK"
DEFAULT_ROOT = ".dledger-mq"
#: A command that waits (for a route, a leader) says so on stderr after this long.
STALL_NOTICE_SECONDS = 2.0
STALL_POLL_SECONDS = 0.25


def one_line_errors(function: F) -> F:
    """Turn every failure into one readable line and a non-zero exit."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BaseException as error:  # noqa: BLE001 - every failure becomes one line
            if isinstance(error, SystemExit | GeneratorExit):
                raise
            raise click.ClickException(explain(error)) from _keep_traceback(error)

    return wrapper  # type: ignore[return-value]


def _keep_traceback(error: BaseException) -> BaseException | None:
    if os.environ.get(TRACEBACK_ENVIRONMENT_VARIABLE):
        import traceback

        traceback.print_exception(error)
    return None


def explain(error: BaseException) -> str:
    """One line for ``error``: the first product or system error inside an exception group
    (Trio nurseries wrap them), else the error's type and text, marked as a bug."""
    from dledger_mq.wire.rpc import describe_os_error

    if isinstance(error, BaseExceptionGroup):
        matched, _ = error.split((DledgerError, OSError))
        first: BaseException = matched if matched is not None else error
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if first is not error:
            return explain(first)
    if isinstance(error, DledgerError):
        return str(error)
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{describe_os_error(error)}"
    return (
        f"unexpected {type(error).__name__}: {error} (a bug; "
        f"{TRACEBACK_ENVIRONMENT_VARIABLE}=1 shows where)"
    )


def sigterm_as_interrupt() -> None:
    """A SIGTERM stops this command as Ctrl-C does, so that its ``finally`` blocks stop the
    node processes it started instead of leaving them running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


class CommandLine(click.Group):
    """The root group: a usage error is one line too, with where to find the usage."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message())  # a group named alone: its help
            sys.exit(error.exit_code)
        except click.UsageError as error:
            where = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
            click.echo(f"Error: {error.format_message()}{where}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=CommandLine, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dledger-mq")
def main() -> None:
    """dledger-mq: a message queue whose broker groups are Raft groups."""


# -- options -------------------------------------------------------------------------------------


def parse_addresses(text: str, option: str) -> list[str]:
    """A comma-separated HOST:PORT list; ``click.BadParameter`` names the bad one."""
    from dledger_mq.wire.address import Address

    addresses = [item.strip() for item in text.split(",") if item.strip()]
    if not addresses:
        raise click.BadParameter("needs at least one HOST:PORT", param_hint=option)
    for address in addresses:
        try:
            Address.parse(address)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=option) from None
    return addresses


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str, option: str) -> int:
    """``500ms``, ``30s``, ``1m``, ``2h``, ``3d`` (a bare number: seconds), in milliseconds;
    ``click.BadParameter`` otherwise."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if found is None:
        raise click.BadParameter(
            f"{text!r} is not a duration (like 500ms, 30s, 1m, 2h, 3d)", param_hint=option
        )
    number, unit = found.groups()
    return round(float(number) * _DURATION_UNITS_MS[unit or "s"])


def parse_time_ms(text: str, option: str) -> int:
    """ISO 8601 (``2026-11-22T10:00:00+00:00``; without a zone: UTC) or milliseconds since the
    epoch; ``click.BadParameter`` otherwise."""
    import datetime

    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither ISO 8601 nor milliseconds", param_hint=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _check_addresses(
    context: click.Context, parameter: click.Parameter, value: str | None
) -> str | None:
    if value is not None:
        parse_addresses(value, f"--{parameter.name}")
    return value


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    show_default=True,
    help="Where `cluster up` keeps the local cluster.",
)


def credentials_options(function: F) -> F:
    """--access-key and --secret-key: whom a command signs in as (docs/security.md). Without
    them: ``DLEDGER_MQ_ACCESS_KEY``/``DLEDGER_MQ_SECRET_KEY``, else the admin credentials
    `cluster up` keeps under --root, else none. The command's clients then find them where the
    SDK looks by default, in this process's environment."""

    @functools.wraps(function)
    def wrapper(
        *args: Any,
        access_key: str | None,
        secret_key: str | None,
        tls_ca: str | None,
        **kwargs: Any,
    ) -> Any:
        use_credentials(access_key, secret_key, kwargs["root"])
        use_tls(tls_ca, kwargs["root"])
        return function(*args, **kwargs)

    wrapper = click.option(
        "--tls-ca",
        default=None,
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Speak TLS, trusting this CA certificate (or DLEDGER_MQ_TLS_CA; default: the one "
        "`cluster up --tls` made under --root, if any).",
    )(wrapper)
    wrapper = click.option(
        "--secret-key",
        default=None,
        metavar="KEY",
        help="Secret key to sign in with (or DLEDGER_MQ_SECRET_KEY).",
    )(wrapper)
    return click.option(  # type: ignore[return-value]
        "--access-key",
        default=None,
        metavar="NAME",
        help="User to sign in as (or DLEDGER_MQ_ACCESS_KEY; default: the admin `cluster up` "
        "made under --root, if any).",
    )(wrapper)


def use_credentials(access_key: str | None, secret_key: str | None, root: Path) -> None:
    from dledger_mq.wire.client_auth import (
        ACCESS_KEY_ENVIRONMENT_VARIABLE,
        CREDENTIALS_FILE_NAME,
        SECRET_KEY_ENVIRONMENT_VARIABLE,
        Credentials,
        read_credentials_file,
    )

    if bool(access_key) != bool(secret_key):
        raise UsageError("give both --access-key and --secret-key, or neither")
    credentials = Credentials(access_key, secret_key) if access_key and secret_key else None
    if credentials is None:
        credentials = Credentials.from_environment() or read_credentials_file(
            root / CREDENTIALS_FILE_NAME
        )
    if credentials is not None:
        os.environ[ACCESS_KEY_ENVIRONMENT_VARIABLE] = credentials.access_key
        os.environ[SECRET_KEY_ENVIRONMENT_VARIABLE] = credentials.secret_key


def use_tls(tls_ca: str | None, root: Path) -> None:
    """The CA to trust: ``--tls-ca``, else the environment's, else `cluster up --tls`'s."""
    from dledger_mq.node.certificates import CA_FILE_NAME, TLS_DIRECTORY_NAME
    from dledger_mq.wire.tls import TLS_CA_ENVIRONMENT_VARIABLE

    local = root / TLS_DIRECTORY_NAME / CA_FILE_NAME
    path = (
        tls_ca
        or os.environ.get(TLS_CA_ENVIRONMENT_VARIABLE)
        or (str(local) if local.exists() else None)
    )
    if path:
        os.environ[TLS_CA_ENVIRONMENT_VARIABLE] = path


def cluster_options(function: F) -> F:
    """--endpoints, --root, --cluster-id and credentials: which cluster a command talks to,
    and as whom."""
    function = credentials_options(function)
    function = click.option("--cluster-id", default="local", show_default=True)(function)
    function = root_option(function)
    return click.option(
        "--endpoints",
        default=None,
        metavar="HOST:PORT,...",
        callback=_check_addresses,
        help="Client addresses of the nodes (default: the local cluster).",
    )(function)


def json_option(what: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def cluster_endpoints(endpoints: str | None, root: Path) -> list[tuple[str, str]]:
    """(id, client address) of the nodes these options name: ``--endpoints`` (each known by
    its address), else the local cluster under ``root``, else the default ports."""
    from dledger_mq.node.cluster_layout import ClusterLayout

    if endpoints:
        return [(address, address) for address in parse_addresses(endpoints, "--endpoints")]
    layout = ClusterLayout.load(root) or ClusterLayout.derive(root)
    return layout.endpoints


@asynccontextmanager
async def leader_admin(
    endpoints: str | None, root: Path, cluster_id: str
) -> AsyncIterator[AdminConnection]:
    """An admin connection to the leader of the cluster these options name."""
    from dledger_mq.clients.admin import connect_admin
    from dledger_mq.node.cluster_status import find_leader_address

    leader = await find_leader_address(cluster_endpoints(endpoints, root), cluster_id)
    async with connect_admin(leader, cluster_id) as connection:
        yield connection


@asynccontextmanager
async def group_admins(
    endpoints: str | None, root: Path, cluster_id: str, groups: Sequence[str] = ()
) -> AsyncIterator[dict[str, AdminConnection]]:
    """Admin connections to the leader of every broker group these options name (or of
    ``groups``, each of which must be there), by group name."""
    from dledger_mq.node.cluster_status import group_leader_admins

    async with group_leader_admins(
        cluster_endpoints(endpoints, root), cluster_id, groups
    ) as admins:
        yield admins


def naming_option(function: F) -> F:
    function = credentials_options(function)
    function = click.option("--cluster-id", default="local", show_default=True)(function)
    function = root_option(function)
    return click.option(
        "--naming",
        default=None,
        metavar="HOST:PORT,...",
        callback=_check_addresses,
        help="Naming nodes to find routes through (default: the local cluster's under "
        "--root, else 127.0.0.1:9876,127.0.0.1:9877,127.0.0.1:9878).",
    )(function)


def naming_addresses(naming: str | None, root: Path) -> list[str]:
    from dledger_mq.node.cluster_layout import ClusterLayout

    if naming:
        return parse_addresses(naming, "--naming")
    layout = ClusterLayout.load(root) or ClusterLayout.derive(root)
    return list(layout.naming.values())


async def report_stalls(client: RoutedClient, echo: Callable[[str], None]) -> None:
    """While ``client`` waits for something (a route, a leader), say what and why: first after
    ``STALL_NOTICE_SECONDS``, then whenever the reason changes."""
    said = ""
    while True:
        await trio.sleep(STALL_POLL_SECONDS)
        stall = client.stalls.current
        if stall is None:
            said = ""
            continue
        if time.monotonic() - stall.since < STALL_NOTICE_SECONDS:
            continue
        text = stall.describe()
        if text != said:
            echo(text)
            said = text
