"""PNG plots of a simulation report (matplotlib, Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "write_plots"]

log = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write miss_rate.png, hit_rates.png and numa_traffic.png into ``out_dir``; return their paths."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    w = report["windows"]
    ends, total = [], 0
    for n in w["accesses"]:
        total += n
        ends.append(total)
    l1 = [m / n if n else 0.0 for m, n in zip(w["l1_misses"], w["accesses"], strict=True)]
    walks = [m / n if n else 0.0 for m, n in zip(w["page_walks"], w["accesses"], strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(ends, l1, label="L1 TLB misses per access (ITLB + DTLB when split)", drawstyle="steps-pre")
    ax.plot(ends, walks, label="page walks per access", drawstyle="steps-pre")
    ax.set_xlabel("accesses")
    ax.set_ylabel("miss rate")
    ax.set_ylim(0, 1.05)
    ax.set_title("TLB miss rate over the trace")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "miss_rate.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    names = list(report["tlb"])  # l1i, l1d (or l1), l2, ...: one bar per side of a split L1
    rates = [report["tlb"][n]["hit_rate"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, rates)
    for i, r in enumerate(rates):
        ax.text(i, r, f"{100 * r:.1f}%", ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("hit rate (hits / lookups at that level)")
    ax.set_title("TLB hit rate per level")
    fig.tight_layout()
    paths.append(out / "hit_rates.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    nodes = report["numa"]["nodes"]
    labels = [f"node {n['node']}" for n in nodes]
    local = [n["local_accesses"] for n in nodes]
    remote = [n["remote_accesses"] for n in nodes]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, local, label="local")
    ax.bar(labels, remote, bottom=local, label="remote")
    ax.set_ylabel("accesses served by the node")
    ax.set_title(f"NUMA traffic per node (policy {report['numa']['policy']})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "numa_traffic.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    log.info("plots written to %s", out)
    return paths
