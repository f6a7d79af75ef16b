#!/usr/bin/env python3
"""Plots and a Markdown table from bench/run.sh sweep's CSV.

    plot.py bench/results/sweep.csv bench/results

Writes latency.png (half round trip vs message size) and rate.png (one-to-one
message rate vs size), each wyvern transport against every peer in the CSV,
and sweep.md (medians and the wyvern-tcp / peer ratio per size).
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def human(n):
    n = int(n)
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def main():
    src, out = sys.argv[1], sys.argv[2]
    data = defaultdict(dict)  # (metric, system) -> {size: median}
    runs = {}
    with open(src) as f:
        for row in csv.DictReader(f):
            key = (row["metric"], row["system"])
            size = int(row["size"])
            data[key][size] = float(row["median"])
            runs[(row["metric"], row["system"], size)] = row["runs"]
    systems = sorted({s for (_, s) in data})
    sizes = sorted({z for d in data.values() for z in d})
    styles = {"wyvern-tcp": "o-", "wyvern-udp": "s-", "ucx": "^--", "mpi": "v--"}
    for metric, fname, ylabel, title in (
        ("latency_us", "latency.png", "half round trip, p50 (µs)", "Latency vs message size"),
        ("rate_msgs", "rate.png", "messages per second, 1 sender → 1 receiver", "Message rate vs message size"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        for s in systems:
            d = data.get((metric, s))
            if not d:
                continue
            xs = sorted(d)
            ax.plot(xs, [d[x] for x in xs], styles.get(s, ".-"), label=s)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([human(z) for z in sizes], rotation=30)
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        ax.set_title(title + " (two agents on loopback, 2-core VM)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{out}/{fname}")
        plt.close(fig)
    lines = []
    for metric, unit, better in (("latency_us", "µs", "lower"), ("rate_msgs", "msg/s", "higher")):
        peers = [s for s in systems if not s.startswith("wyvern")]
        head = ["size"] + [f"{s} ({unit})" for s in systems] + [f"wyvern-tcp ÷ {p}" for p in peers]
        lines.append(f"**{'Latency' if metric == 'latency_us' else 'One-to-one message rate'}** ({better} is better; medians, runs in the CSV)")
        lines.append("")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for z in sizes:
            row = [human(z)]
            for s in systems:
                v = data.get((metric, s), {}).get(z)
                row.append("—" if v is None else (f"{v:.2f}" if metric == "latency_us" else f"{v:,.0f}"))
            w = data.get((metric, "wyvern-tcp"), {}).get(z)
            for p in peers:
                v = data.get((metric, p), {}).get(z)
                row.append("—" if not w or not v else f"{w / v:.2f}×")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines.append("![latency](latency.png) ![rate](rate.png)")
    with open(f"{out}/sweep.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}/latency.png, {out}/rate.png, {out}/sweep.md")


if __name__ == "__main__":
    main()
