"""The ChampSim and drmemtrace record layouts as NumPy structured dtypes.

These come from the C structs (ChampSim's ``input_instr`` and cloudsuite
``cloudsuite_instr``, DynamoRIO's packed ``trace_entry_t``) and NumPy's own
C alignment rules (``align=True``), independently of the core's offsets.
Tests write traces with them and compute the expected accesses from them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vmopt.traces import AccessKind

INPUT_INSTR = np.dtype(
    [
        ("ip", "<u8"),
        ("is_branch", "u1"),
        ("branch_taken", "u1"),
        ("dst_regs", "u1", 2),
        ("src_regs", "u1", 4),
        ("dst_mem", "<u8", 2),
        ("src_mem", "<u8", 4),
    ],
    align=True,
)

CLOUDSUITE_INSTR = np.dtype(
    [
        ("ip", "<u8"),
        ("is_branch", "u1"),
        ("branch_taken", "u1"),
        ("dst_regs", "u1", 4),
        ("src_regs", "u1", 4),
        ("dst_mem", "<u8", 4),
        ("src_mem", "<u8", 4),
        ("asid", "u1", 2),
    ],
    align=True,
)

# START_PACKED_STRUCTURE: no padding, 12 bytes.
TRACE_ENTRY = np.dtype([("type", "<u2"), ("size", "<u2"), ("addr", "<u8")])

DR_READ, DR_WRITE, DR_INSTR, DR_THREAD, DR_PID, DR_HEADER, DR_FOOTER, DR_MARKER = 0, 1, 10, 22, 24, 25, 26, 28
DR_FETCH_TYPES = frozenset({*range(10, 17), 31, 48, 49})

Expected = tuple[list[int], list[int], list[int], list[int]]


def champsim_expected(records: npt.NDArray[np.void]) -> Expected:
    """Accesses of ChampSim records: ip fetch, non-zero src reads, non-zero dst writes."""
    addrs: list[int] = []
    kinds: list[int] = []
    asids: list[int] = []
    has_asid = "asid" in (records.dtype.names or ())
    for rec in records:
        asid = int(rec["asid"][0]) if has_asid else 0
        slots = [(int(rec["ip"]), AccessKind.FETCH)]
        slots += [(int(a), AccessKind.READ) for a in rec["src_mem"] if a]
        slots += [(int(a), AccessKind.WRITE) for a in rec["dst_mem"] if a]
        for addr, kind in slots:
            addrs.append(addr)
            kinds.append(int(kind))
            asids.append(asid)
    return addrs, kinds, [], asids


def drmemtrace_expected(entries: npt.NDArray[np.void]) -> Expected:
    """Accesses of trace_entry_t records, with threads and pids numbered by first appearance."""
    addrs: list[int] = []
    kinds: list[int] = []
    cpus: list[int] = []
    asids: list[int] = []
    threads: dict[int, int] = {}
    pids: dict[int, int] = {}
    cpu = asid = 0
    for e in entries:
        ty, addr = int(e["type"]), int(e["addr"])
        if ty == DR_THREAD:
            cpu = threads.setdefault(addr, len(threads))
        elif ty == DR_PID:
            asid = pids.setdefault(addr, len(pids))
        elif ty in (DR_READ, DR_WRITE) or ty in DR_FETCH_TYPES:
            kind = (
                AccessKind.READ if ty == DR_READ else AccessKind.WRITE if ty == DR_WRITE else AccessKind.FETCH
            )
            addrs.append(addr)
            kinds.append(int(kind))
            cpus.append(cpu)
            asids.append(asid)
    return addrs, kinds, cpus, asids
