#!/usr/bin/env python3
"""Goodput per impairment setting from bench/lossy.sh's output, as an SVG bar chart.

    bench/lossy.sh ... 2>&1 | tee lossy.log;  bench/lossy_plot.py lossy.log bench/results/lossy.svg

Reads the per-cell lines ("RUN CELL KIND MB/s ...", KIND iperf3, udp-new, udp-old, dpdk-new,
dpdk-old) and draws the median MB/s of each kind per cell, with each run's figure as a dot.
Standard library only (no matplotlib on the bench host).
"""
import re
import statistics
import sys
from collections import defaultdict

COLORS = {"iperf3": "#444444", "udp-old": "#9ecae1", "udp-new": "#3182bd",
          "dpdk-old": "#fdae6b", "dpdk-new": "#e6550d"}
LABELS = {"iperf3": "kernel TCP (iperf3)", "udp-old": "udp before", "udp-new": "udp after",
          "dpdk-old": "dpdk before", "dpdk-new": "dpdk after"}


def main(log, out):
    runs = defaultdict(list)
    cells = []
    for line in open(log):
        f = line.split()
        if len(f) < 4 or not f[0].isdigit() or f[2] not in COLORS:
            continue
        try:
            v = float(f[3])
        except ValueError:
            continue
        if v != v:  # nan: the cell failed
            continue
        if f[1] not in cells:
            cells.append(f[1])
        runs[(f[1], f[2])].append(v)
    kinds = [k for k in COLORS if any((c, k) in runs for c in cells)]
    top = max(max(v) for v in runs.values())
    top = (int(top / 25) + 1) * 25
    W, H, L, B, T = 760, 360, 50, 60, 30
    cw = (W - L - 10) / len(cells)
    bw = cw * 0.8 / len(kinds)
    y = lambda v: T + (H - T - B) * (1 - v / top)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="18" font-size="13">Goodput through the impairing hop, MB/s (bars: median; dots: runs)</text>']
    for g in range(0, top + 1, 25):
        s.append(f'<line x1="{L}" x2="{W - 10}" y1="{y(g):.1f}" y2="{y(g):.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{L - 6}" y="{y(g) + 4:.1f}" text-anchor="end">{g}</text>')
    for i, c in enumerate(cells):
        x0 = L + i * cw + cw * 0.1
        for j, k in enumerate(kinds):
            v = runs.get((c, k))
            if not v:
                continue
            m = statistics.median(v)
            x = x0 + j * bw
            s.append(f'<rect x="{x:.1f}" y="{y(m):.1f}" width="{bw - 2:.1f}" height="{y(0) - y(m):.1f}" fill="{COLORS[k]}"/>')
            for p in v:
                s.append(f'<circle cx="{x + (bw - 2) / 2:.1f}" cy="{y(p):.1f}" r="2" fill="black"/>')
        s.append(f'<text x="{L + i * cw + cw / 2:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle">{c}</text>')
    s.append(f'<text x="{L + (W - L) / 2:.1f}" y="{y(0) + 32:.1f}" text-anchor="middle">loss / reorder / dup / corrupt %</text>')
    for j, k in enumerate(kinds):
        x = L + j * 140
        s.append(f'<rect x="{x}" y="{H - 16}" width="10" height="10" fill="{COLORS[k]}"/>')
        s.append(f'<text x="{x + 14}" y="{H - 7}">{LABELS[k]}</text>')
    s.append("</svg>")
    open(out, "w").write("\n".join(s) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: lossy_plot.py LOSSY_LOG OUT.svg")
    main(sys.argv[1], sys.argv[2])
