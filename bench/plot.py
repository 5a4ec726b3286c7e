#!/usr/bin/env python3
"""The picture of one bench/compare.py run: one panel per figure, a bar per
proxy (the mean of its runs), each run drawn as a dot so that the spread
shows.

  /usr/bin/python3 bench/plot.py bench/results/DATE-HOST.json [OUT.png]

Needs python3-matplotlib (Debian). Writes OUT.png (default: beside the JSON).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [  # scenario, key, title, higher is better
    ("throughput", "rps_100B", "req/s, 64 conns, 100 B", True),
    ("throughput", "proxy_cpu_us_per_request_100B", "proxy CPU per request, 100 B (µs)", False),
    ("throughput", "rps_64KiB", "req/s, 64 conns, 64 KiB", True),
    ("throughput", "p99_ms_100B", "p99 latency, 100 B (ms)", False),
    ("idle", "bytes_per_connection", "memory per idle connection (B)", False),
    ("slowloris", "rps_with", "req/s with slowloris open", True),
    ("slowreaders", "rps_during", "req/s with slow readers", True),
    ("split", "backend_cpu_us_per_request", "backend CPU per split request (µs)", False),
    ("passthrough", "gb_per_s", "pass-through (GB/s)", True),
]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.splitext(src)[0] + ".png"
    with open(src) as f:
        results = json.load(f)
    panels = []
    for scenario, key, title, higher in PANELS:
        by_proxy = results["scenarios"].get(scenario, {})
        series = {p: [r[key] for r in runs if isinstance(r.get(key), (int, float))] for p, runs in by_proxy.items()}
        series = {p: v for p, v in series.items() if v}
        if series:
            panels.append((title + ("" if higher else "  (lower is better)"), series))
    if not panels:
        sys.exit(f"plot.py: no figures in {src}")
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        names = list(series)
        means = [sum(v) / len(v) for v in series.values()]
        colors = ["tab:orange" if n.startswith("agent") else "tab:gray" for n in names]
        ax.bar(names, means, color=colors)
        for i, v in enumerate(series.values()):
            ax.plot([i] * len(v), v, "k.", markersize=5)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    v = results.get("versions", {})
    fig.suptitle(f"{results.get('host')} {results.get('date')}, kernel {results.get('kernel')}, "
                 f"{results.get('cpus')} CPUs; {v.get('agent')}, {v.get('nginx')}, "
                 f"{(v.get('haproxy') or '').split(' - ')[0]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot.py: {out}")


if __name__ == "__main__":
    main()
