"""Node processes on this machine: starting them, telling whether a PID is still ours, pid files.

A node runs as ``python -m dledger_mq node --config FILE`` in its own process group (its PID is
the group's id), so that a signal meant for it reaches nothing else and Ctrl-C in the terminal
that started it reaches only the launcher. A PID alone may be reused by another program once
the node is gone: a pid file also records the process's start time (Linux's ``/proc``), and a
PID whose start time differs is not ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from dledger_mq.node.cluster_layout import write_text_durably


def node_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "dledger_mq", "node", "--config", str(config_path)]


def start_node(
    config_path: Path, log_path: Path, environment: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``dledger-mq node --config``, its output appended to ``log_path``; ``environment``
    replaces this process's environment when given."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            node_command(config_path),
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=None if environment is None else dict(environment),
            start_new_session=True,  # its own process group: Ctrl-C here reaches only us
        )


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """SIGTERM each (a graceful stop), then SIGKILL whatever is still running."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)  # a paused node must wake to stop
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- whether a PID is (still) the process we started --------------------------------------------


def _proc_stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from the state on, or None if there is no such process.

    The command name (field 2) may hold spaces and parentheses, so the fields are those after
    the last ``)``.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """An identity of the running process ``pid``: its start time in clock ticks since boot
    (``/proc``), ``"?"`` where there is no ``/proc``, or None when no such process runs."""
    fields = _proc_stat_fields(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):
            return None  # exited, not yet reaped
        return fields[19]  # field 22 of the whole line
    if Path("/proc/self/stat").exists():
        return None  # /proc works here: the process is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "?"
    return "?"


def process_is_stopped(pid: int) -> bool:
    """True if ``pid`` is stopped by a signal (SIGSTOP): alive but not running."""
    fields = _proc_stat_fields(pid)
    return fields is not None and fields[0] in ("T", "t")


def signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the process group ``pid`` leads; False if it is gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


# -- pid files -----------------------------------------------------------------------------------


@attrs.frozen
class PidRecord:
    """A node process as its launcher recorded it."""

    pid: int
    start_time: str

    def is_running(self) -> bool:
        """The same process still runs (not merely some process with this PID)."""
        return process_start_time(self.pid) == self.start_time


def write_pid_file(path: Path, pid: int) -> PidRecord | None:
    """Record ``pid`` durably; None (and no file) if the process already exited."""
    start_time = process_start_time(pid)
    if start_time is None:
        return None
    record = PidRecord(pid, start_time)
    write_text_durably(path, json.dumps(attrs.asdict(record)) + "\n")
    return record


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``, or None if there is none or it cannot be read (a stale or
    damaged pid file only means "not known to run")."""
    try:
        values = json.loads(path.read_text())
        record = PidRecord(int(values["pid"]), str(values["start_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.pid > 1 else None


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
