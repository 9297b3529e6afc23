"""CPU time of the processes a benchmark started, of itself and of the whole machine (Linux).

Read from ``/proc``: each node's ``utime + stime`` (``/proc/PID/stat``, all its threads), this
process's own (``os.times``), and the machine's busy time over every core (``/proc/stat``: all
but idle and iowait), so that a figure can say how many of the machine's cores were busy and
by whom. Where there is no ``/proc`` every figure is None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

BENCH = "bench"
MACHINE = "machine"
OTHERS = "others"


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


TICKS = _ticks_per_second()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float | None:
    """CPU seconds spent busy by all cores together since boot (None without ``/proc``)."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal (guest time is inside user)
    values = [int(value) for value in line.split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@attrs.frozen
class CpuSample:
    at: float
    #: Label (a broker group, ``bench``, ``machine``) -> CPU seconds so far.
    seconds: dict[str, float]


def sample(processes: Mapping[str, Sequence[int]]) -> CpuSample | None:
    """CPU seconds so far of each label's PIDs (summed), of this process and of the machine;
    None where there is no ``/proc``."""
    machine = machine_busy_seconds()
    if machine is None:
        return None
    seconds = {
        label: sum(process_cpu_seconds(pid) for pid in pids) for label, pids in processes.items()
    }
    seconds[BENCH] = own_cpu_seconds()
    seconds[MACHINE] = machine
    return CpuSample(time.perf_counter(), seconds)


@attrs.define
class CpuUse:
    """CPU seconds and wall seconds added up over one or more intervals."""

    cpu_seconds: dict[str, float] = attrs.field(factory=dict)
    wall_seconds: float = 0.0

    def add(self, before: CpuSample | None, after: CpuSample | None) -> None:
        if before is None or after is None:
            return
        self.wall_seconds += after.at - before.at
        for label, value in after.seconds.items():
            used = max(0.0, value - before.seconds.get(label, value))
            self.cpu_seconds[label] = self.cpu_seconds.get(label, 0.0) + used

    def cores(self) -> dict[str, float]:
        """Label -> cores busy on average (CPU seconds per wall second), and ``others``: the
        machine's less all the labelled processes' (other programs, the kernel's own work);
        empty if unmeasured."""
        if not self.wall_seconds:
            return {}
        cores = {label: value / self.wall_seconds for label, value in self.cpu_seconds.items()}
        ours = sum(value for label, value in cores.items() if label != MACHINE)
        cores[OTHERS] = max(0.0, cores[MACHINE] - ours)
        return {label: round(value, 3) for label, value in cores.items()}
