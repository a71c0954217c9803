"""How near the controller is to its limits, so that none of them is silent.

A controller past a limit fails quietly: past its descriptor limit the heart monitor
spins and engines are purged with nothing in the log; a hub or scheduler at a full
core answers late, and engines give up registering. The keeper reads the controller's
processes on every look (`read`), and what `warnings` finds goes to the controller's
journal and to the keeper's summary, which `ipfleet status` shows.

Figures are said in steps of 10 %, so the summary (an SSM write) changes when the
situation does, not on every look.
"""

from __future__ import annotations

from dataclasses import dataclass

# Said at or above these shares of a limit.
DESCRIPTORS_WARN = 0.5
MEMORY_WARN = 0.7
CPU_WARN = 0.9
# The engines one controller is measured to hold at a 1 s ping (benchmarks/scale.py);
# the heart monitor's work per second grows with engines / ping period.
ENGINES_MEASURED_AT_1S_PING = 2000


@dataclass(frozen=True)
class Reading:
    descriptors: int  # the most one controller process holds
    descriptor_limit: int  # that process's soft limit
    memory: int  # bytes resident, every controller process
    memory_total: int
    busiest_cpu: float  # the busiest process's share of one core since the last look
    engines: int
    ping_ms: int


def _tens(share: float) -> int:
    return int(share * 10) * 10


def warnings(seen: Reading) -> list[str]:
    """What to say of SEEN: a sentence per limit the controller is near."""
    said = []
    if seen.descriptor_limit and seen.descriptors / seen.descriptor_limit >= DESCRIPTORS_WARN:
        said.append(
            f"descriptors: a controller process holds {_tens(seen.descriptors / seen.descriptor_limit)}% "
            f"of its limit of {seen.descriptor_limit} (about two per engine)"
        )
    if seen.memory_total and seen.memory / seen.memory_total >= MEMORY_WARN:
        said.append(
            f"memory: the controller uses {_tens(seen.memory / seen.memory_total)}% of this node's; "
            "a larger controller instance type, or fewer finished tasks kept (ipfleet:ipyparallel.keepTasks)"
        )
    if seen.busiest_cpu >= CPU_WARN:
        said.append(
            f"CPU: a controller process is at {_tens(seen.busiest_cpu)}% of a core; "
            "tasks and registrations wait (a controller instance type with faster cores)"
        )
    capacity = ENGINES_MEASURED_AT_1S_PING * max(1.0, seen.ping_ms / 1000)
    if seen.engines > capacity:
        said.append(
            f"engines: {seen.engines} registered, more than the {capacity:.0f} measured at a "
            f"{seen.ping_ms} ms ping; raise ipfleet:ipyparallel.pingMs (README: How big can a cluster be)"
        )
    return said


class Controller:
    """The controller's processes (ipcontroller and its schedulers), read with psutil.

    Kept between looks: a process's CPU share is measured since the previous look."""

    def __init__(self, names: tuple[str, ...] = ("ipcontroller", "ipyparallel.controller")) -> None:
        self._names = names  # what a controller process's command line holds
        self._processes: dict[int, object] = {}

    def _current(self) -> list:
        import os

        import psutil

        found = {}
        for process in psutil.process_iter(["cmdline", "uids"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            uids = process.info["uids"]
            if uids and uids.real == os.getuid() and any(name in cmdline for name in self._names):
                found[process.pid] = self._processes.get(process.pid, process)
        self._processes = found
        return list(found.values())

    def read(self, engines: int, ping_ms: int) -> Reading:
        import psutil

        descriptors, limit, memory, busiest = 0, 0, 0, 0.0
        for process in self._current():
            try:
                held = process.num_fds()
                if held >= descriptors:
                    descriptors, limit = held, process.rlimit(psutil.RLIMIT_NOFILE)[0]
                memory += process.memory_info().rss
                busiest = max(busiest, process.cpu_percent(None) / 100)
            except psutil.Error:  # gone since it was found
                continue
        return Reading(descriptors, limit, memory, psutil.virtual_memory().total, busiest, engines, ping_ms)
