"""The chart of a run: python benchmarks/chart.py RESULTS.jsonl OUT.png (needs matplotlib).

Left: ours vs each peer (the table's ratios; > 1: ours is better). Right: every server vs raw
Autobahn, so the fan-out figures show even where ours has none yet. Log scale.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    FULL_SCENARIOS,
    QUICK_SCENARIOS,
    aggregate,
    load_rows,
    ratio,
    ratio_rows,
)

LABELS = {"ours": "ours", "autobahn": "raw Autobahn", "daphne": "Daphne+Channels",
          "uvicorn": "uvicorn sansio", "sendloop": "bare send() loop"}
COLORS = {"ours": "#1b9e77", "autobahn": "#7570b3", "daphne": "#d95f02", "uvicorn": "#e7298a",
          "sendloop": "#666666"}


def _panel(ax, records, series, title):
    """``series``: (label, color, function of a record giving a ratio or None)."""
    import numpy as np

    rows = [r for r in records if r["metric"].better]
    names = [f"{r['scenario']}: {r['metric'].label}" for r in rows]
    y = np.arange(len(rows))
    height = 0.8 / max(1, len(series))
    for i, (label, color, fn) in enumerate(series):
        vals = [fn(r) for r in rows]
        plotted = [v if v is not None and math.isfinite(v) and v > 0 else np.nan for v in vals]
        ax.barh(y + i * height, plotted, height, label=label, color=color)
        for yy, v in zip(y + i * height, vals, strict=True):
            if v is None:
                ax.text(1, yy, " n/a", va="center", fontsize=6, color="grey")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_yticks(y + height * (len(series) - 1) / 2)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("ratio, log scale (> 1: better)", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=2,
              frameon=False)


def _vs(srv, base):
    def fn(rec):
        return ratio(rec["values"].get(srv), rec["values"].get(base), rec["metric"].better)

    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("jsonl")
    p.add_argument("out")
    p.add_argument("--servers", default="ours,autobahn,daphne,uvicorn,sendloop")
    p.add_argument("--scenarios", default="")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(a.jsonl) as f:
        agg = aggregate(load_rows(f))
    pool = QUICK_SCENARIOS if a.quick else FULL_SCENARIOS
    wanted = set(a.scenarios.split(",")) if a.scenarios else None
    scenarios = [sc for sc in pool if wanted is None or sc.name in wanted]
    servers = a.servers.split(",")
    records = ratio_rows(agg, scenarios, servers[0], servers[1:])
    panels = []
    if "ours" in servers and len(servers) > 1:
        panels.append(("ours vs each peer (the table's ratios)",
                       [(f"ours vs {LABELS.get(p, p)}", COLORS.get(p), _vs("ours", p))
                        for p in servers if p != "ours"]))
    if "autobahn" in servers and len(servers) > 1:
        panels.append(("each server vs raw Autobahn",
                       [(f"{LABELS.get(p, p)} vs raw Autobahn", COLORS.get(p), _vs(p, "autobahn"))
                        for p in servers if p != "autobahn"]))
    if not panels:
        print("nothing to compare", file=sys.stderr)
        return 1
    n_rows = sum(1 for r in records if r["metric"].better)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 1.5 + 0.45 * n_rows),
                             squeeze=False)
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        _panel(ax, records, series, title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
