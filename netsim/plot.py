#!/usr/bin/env python3
"""Plot time to connect per scenario from report.json (a strip of every call plus p50/p95)."""
import json, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

report = json.load(open(sys.argv[1]))
scen = report["scenarios"]
fig, ax = plt.subplots(figsize=(12, 0.55 * len(scen) + 1.5))
for i, s in enumerate(scen):
    ts = s["times_ms"]
    ax.scatter(ts, [i] * len(ts), s=14, alpha=0.6, color="#5b8cff")
    if s["p50_ms"] is not None:
        ax.plot([s["p50_ms"]], [i], marker="|", markersize=16, color="#2ecc8f")
        ax.plot([s["p95_ms"]], [i], marker="|", markersize=16, color="#f5b942")
    if s.get("target_p95_ms"):
        ax.plot([s["target_p95_ms"]], [i], marker="x", color="#ff5d6c")
    fails = s["calls"] - s["first_attempt"]
    label = f'{s["scenario"]}  ({s["first_attempt"]}/{s["calls"]})' + (f"  {fails} failed" if fails else "")
    ax.text(1.01, i, label, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
ax.set_yticks([])
ax.set_xlabel("invite → connected (ms); green p50, amber p95, red × target")
ax.set_title(f'firstcall netsim: time to connect ({report["mode"]}, {report["calls_per_scenario"]} calls/scenario)')
ax.set_xlim(left=0)
ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
