"""The simulation report: a plain JSON-able dict with a stable schema, and its terminal rendering.

The schema is documented in docs/report-schema.md; bump :data:`SCHEMA_VERSION`
on any incompatible change (adding keys is compatible).
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import IO, Any, Final

from vmopt.sim.driver import SimResult
from vmopt.units import format_size

__all__ = [
    "FAULT_WARNING_SHARE",
    "SCHEMA_VERSION",
    "build_report",
    "header",
    "render_report",
    "report_warnings",
    "write_json",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
#: What each level's ``side`` says it serves: a split L1's ITLB and DTLB, or every access.
SIDES: Final = {"l1i": "inst", "l1d": "data"}
#: Warn when more than this share of the accesses faulted (and so were not served).
FAULT_WARNING_SHARE: Final = 0.5
#: Virtual-address bits of each paging format, for the fault warning's hint.
_VA_BITS: Final = {"x86_64": 48, "x86_64_5level": 57, "sv39": 39, "sv48": 48, "sv57": 57}


def _rate(num: int, den: int) -> float:
    return num / den if den else 0.0


def build_report(result: SimResult, source: dict[str, Any]) -> dict[str, Any]:
    """The report of one run; ``source`` describes the trace or workload that was played."""
    opt = result.opt
    cfg = result.config
    mmus = opt.mmus
    tlb: dict[str, Any] = {}
    tlb_cycles = 0
    # The MMUs' levels line up with the sections: ITLB, DTLB (or L1), L2, ...
    per_mmu = [m.all_levels() for m in mmus]
    for i, level in enumerate(cfg.tlb):
        stats = [levels[i].stats for levels in per_mmu]
        lookups = sum(s.lookups for s in stats)
        hits = sum(s.hits for s in stats)
        misses = sum(s.misses for s in stats)
        cycles = sum(s.cycles for s in stats)
        tlb_cycles += cycles
        tlb[level.name] = {
            "side": SIDES.get(level.name, "shared"),
            "arrays": [c.name for c in level.tlb_configs()],
            "lookups": lookups,
            "hits": hits,
            "misses": misses,
            "evictions": sum(s.evictions for s in stats),
            "hit_rate": _rate(hits, lookups),
            "miss_rate": _rate(misses, lookups),
            "cycles": cycles,
        }
    ms = [m.stats for m in mmus]
    walks = sum(s.walks for s in ms)
    walk_cycles = sum(s.cycles for s in ms)
    total_cycles = tlb_cycles + walk_cycles
    pf = [s.prefetch for s in ms]
    accesses = result.accesses
    nodes = []
    for n in range(cfg.numa.nodes):
        nodes.append(
            {
                "node": n,
                "size_bytes": opt.numa.node_sizes[n],
                "used_bytes": opt.mem.used_bytes(n),
                "pages": result.pages[n],
                "local_accesses": result.local[n],
                "remote_accesses": result.remote[n],
            }
        )
    w = result.windows
    elapsed = result.elapsed_s
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "partial": result.partial,
        "accesses": accesses,
        "kinds": {"read": result.kinds[0], "write": result.kinds[1], "fetch": result.kinds[2]},
        "cpus": len(mmus),
        "tlb": tlb,
        "page_walks": walks,
        "walk_memory_refs": sum(s.walk_memory_refs for s in ms),
        "pwc": {"lookups": sum(s.pwc_lookups for s in ms), "hits": sum(s.pwc_hits for s in ms)},
        "nested": _nested_report(result),
        "faults": {
            "demand": result.demand_faults,
            "other": sum(s.faults for s in ms),
            "failed_accesses": result.failed_accesses,
        },
        "prefetch": {
            "requested": sum(p.requested for p in pf),
            "issued": sum(p.issued for p in pf),
            "installed": sum(p.installed for p in pf),
            "useful": sum(p.useful for p in pf),
            "useless": sum(p.useless for p in pf),
            "dropped": sum(p.dropped for p in pf),
            "walk_memory_refs": sum(p.walk_memory_refs for p in pf),
        },
        "numa": {"policy": cfg.numa.policy, "nodes": nodes},
        "cycles": {
            "tlb": tlb_cycles,
            "walk": walk_cycles,
            "total": total_cycles,
            "per_access": _rate(total_cycles, accesses),
        },
        "windows": {
            "accesses": list(w.accesses),
            "l1_misses": list(w.l1_misses),
            "page_walks": list(w.walks),
            "local_accesses": [list(x) for x in w.local],
            "remote_accesses": [list(x) for x in w.remote],
        },
        "elapsed_s": elapsed,
        "accesses_per_s": _rate(accesses, elapsed) if elapsed > 0 else 0.0,  # type: ignore[arg-type]
        "config": cfg.to_raw(),
    }


def _nested_report(result: SimResult) -> dict[str, Any] | None:
    """The two dimensions of the walks under ``[paging] nested`` (None without a host stage)."""
    paging = result.config.paging
    if paging.nested == "none":
        return None
    stats = [s for s in (m.nested_stats for m in result.opt.mmus) if s is not None]
    total = {f: sum(getattr(s, f) for s in stats) for f in _NESTED_FIELDS}
    return {
        "host_format": paging.nested,
        "host_page_size": paging.nested_page_size,
        "walks": total["walks"],
        "guest_refs": total["guest_refs"],
        "host_refs": total["host_refs"],
        "host_faults": total["host_faults"],
        "nested_tlb": {"lookups": total["ntlb_lookups"], "hits": total["ntlb_hits"]},
        "host_pwc": {"lookups": total["host_pwc_lookups"], "hits": total["host_pwc_hits"]},
    }


_NESTED_FIELDS: Final = (
    "walks", "guest_refs", "host_refs", "host_faults", "ntlb_lookups", "ntlb_hits",
    "host_pwc_lookups", "host_pwc_hits",
)  # fmt: skip


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")


#: The report's words for each level's side.
_SERVES: Final = {"inst": "fetches", "data": "data", "shared": "all"}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def report_warnings(report: dict[str, Any]) -> list[str]:
    """What looks wrong about a run, each with its likely cause (empty when nothing does)."""
    out = []
    accesses, failed = report["accesses"], report["faults"]["failed_accesses"]
    if accesses and failed > FAULT_WARNING_SHARE * accesses:
        src = report["source"]
        fmt = report["config"]["paging"]["format"]
        hints = []
        if src.get("kind") == "trace":
            hints.append(
                f"the trace was read as format {src.get('format')!r}: give --format if that is wrong"
                " (random or text bytes read as a raw trace are random addresses)"
            )
        bits = _VA_BITS.get(fmt)
        if bits is not None:
            hints.append(
                f"paging.format is {fmt}: addresses must be canonical {bits}-bit ones, and the"
                " input's may not be"
            )
        out.append(
            f"{failed:,} of {accesses:,} accesses ({_pct(failed / accesses)}) faulted and were not served;"
            " likely cause: " + "; or ".join(hints)
        )
    return out


def header(report: dict[str, Any]) -> str:
    """The report's first line: input, access counts and the vCPUs that played it."""
    src = report["source"]
    k = report["kinds"]
    cpus = report["cpus"]
    asked = src.get("params", {}).get("cpus") if src.get("kind") == "workload" else None
    where = f"on {cpus} vCPU(s)"
    if isinstance(asked, int) and asked != cpus:
        where += f" (numa.cpus sets {cpus}; the workload's accesses come from {asked} of them)"
    return (
        f"{src.get('description', src.get('name'))} — {report['accesses']:,} accesses ({k['read']:,} reads,"
        f" {k['write']:,} writes, {k['fetch']:,} fetches) {where}"
    )


def render_report(report: dict[str, Any], file: IO[str] | None = None) -> None:
    """Print the report as rich tables (plain text when ``file`` is not a terminal).

    A closed ``file`` raises :class:`BrokenPipeError` (rich would exit the process instead).
    """
    from rich.console import Console
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the report's reader closed the pipe")

    console = _Console(file=file, width=None if file is None or file.isatty() else 100)
    if report.get("partial"):
        console.print(f"[bold]partial run[/bold]: interrupted after {report['accesses']:,} accesses")
    console.print(f"[bold]vmopt simulate[/bold]: {header(report)}")
    t = Table(title="TLB hierarchy", title_justify="left")
    # The arrays of each level are in the JSON and in `vmopt config`; the table keeps to counts.
    columns = ("level", "serves", "lookups", "hits", "misses", "evictions", "hit rate", "miss rate")
    for col in columns:
        t.add_column(col, justify="left" if col in ("level", "serves") else "right")
    for name, lv in report["tlb"].items():
        t.add_row(name, _SERVES[lv["side"]], f"{lv['lookups']:,}", f"{lv['hits']:,}", f"{lv['misses']:,}",
                  f"{lv['evictions']:,}", _pct(lv["hit_rate"]), _pct(lv["miss_rate"]))  # fmt: skip
    console.print(t)
    f = report["faults"]
    p = report["prefetch"]
    c = report["cycles"]
    pwc = report["pwc"]
    m = Table(title="Walks, faults, prefetch, cost", title_justify="left", show_header=False)
    m.add_column("what")
    m.add_column("value", justify="right")
    m.add_row("page walks", f"{report['page_walks']:,}")
    m.add_row("walk memory refs", f"{report['walk_memory_refs']:,}")
    m.add_row("page-walk cache hits", f"{pwc['hits']:,} / {pwc['lookups']:,}")
    nested = report.get("nested")
    if nested:
        host = f"{nested['host_format']}, {format_size(nested['host_page_size'])} host pages"
        m.add_row(f"walk refs guest / host ({host})", f"{nested['guest_refs']:,} / {nested['host_refs']:,}")
        ntlb, hpwc = nested["nested_tlb"], nested["host_pwc"]
        m.add_row("nested TLB hits", f"{ntlb['hits']:,} / {ntlb['lookups']:,}")
        m.add_row("host page-walk cache hits", f"{hpwc['hits']:,} / {hpwc['lookups']:,}")
    m.add_row("demand faults (pages mapped)", f"{f['demand']:,}")
    m.add_row("other faults", f"{f['other']:,}")
    m.add_row("prefetch issued / useful / useless", f"{p['issued']:,} / {p['useful']:,} / {p['useless']:,}")
    m.add_row("modelled cycles per access", f"{c['per_access']:.2f}")
    m.add_row("host throughput", f"{report['accesses_per_s']:,.0f} accesses/s ({report['elapsed_s']:.2f} s)")
    console.print(m)
    n = Table(title=f"NUMA (policy {report['numa']['policy']})", title_justify="left")
    for col in ("node", "size", "pages", "local accesses", "remote accesses"):
        n.add_column(col, justify="right")
    for node in report["numa"]["nodes"]:
        n.add_row(str(node["node"]), format_size(node["size_bytes"]), f"{node['pages']:,}",
                  f"{node['local_accesses']:,}", f"{node['remote_accesses']:,}")  # fmt: skip
    console.print(n)
