"""What Linux's /proc says about another process: CPU time and memory."""

from __future__ import annotations

import os

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds.

    The resolution is one clock tick (10 ms on most kernels): windows of a few seconds with
    dozens of calls or more keep the error per call under a few per cent.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) (utime, stime) are at 11 and 12 once the first two are gone.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB: resident memory now, and its peak so far."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)
