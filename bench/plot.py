#!/usr/bin/env python3
"""Plots and a Markdown table from bench/run.sh sweep's CSV.

    plot.py bench/results/sweep.csv bench/results [--stamp "git 585bf46, 2026-11-28"]

CSV columns: metric (latency_us, rate_msgs, rate4_msgs, frames_s), size,
system, runs, median, secs (each run's wall time), note. Writes

    latency.png    half round trip p50 vs message size
    rate.png       one-to-one message rate vs size
    rate4.png      four-to-one message rate vs size (peers: 4 pairs, summed)
    bandwidth.png  one-to-one bandwidth (rate x size, MB/s) vs size

Every legend entry says which transport the system ran on (the peers were
forced to tcp on loopback), and every figure carries the stamp (the commit and
date the data was measured at; bench/run.sh passes them) in its corner and in
the PNG's metadata ("Description").

each wyvern transport against every peer in the CSV (log-log axes), and
sweep.md: one table per metric with the medians and wyvern-tcp ÷ each peer,
followed by the notes the CSV carries (sizes a peer measured differently,
failed cells), and, when the CSV has frames_s rows, a small table of the
frame rate at full-size frames: wyvern-dpdk against testpmd on the same
veth pair, every run, the medians and their ratio (no plot).
"""
import csv
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402

WYVERN = "wyvern-tcp"  # the ratio columns divide this one by each peer
ORDER = ["wyvern-tcp", "wyvern-udp", "wyvern-dpdk", "ucx", "mpi", "sockperf", "iperf3"]
STYLE = {  # marker/line, colour
    "wyvern-tcp": ("o-", "tab:blue"),
    "wyvern-udp": ("s-", "tab:cyan"),
    "wyvern-dpdk": ("P-", "tab:purple"),
    "ucx": ("^--", "tab:orange"),
    "mpi": ("v--", "tab:green"),
    "sockperf": ("D:", "tab:gray"),
    "iperf3": ("x:", "tab:red"),
}
# What each system ran on, in every legend (UCX and MPI were forced to tcp).
ON = {
    "wyvern-tcp": "tcp transport, loopback",
    "wyvern-udp": "udp transport, own reliability, loopback",
    "wyvern-dpdk": "dpdk transport, net_af_packet, one veth pair",
    "ucx": "UCX_TLS=tcp, loopback",
    "mpi": "ob1, tcp btl, loopback",
    "sockperf": "kernel TCP, loopback",
    "iperf3": "kernel TCP, loopback",
}
# The bandwidth plot: the 1 -> 1 rate times the message size.
BANDWIDTH = (
    "bandwidth.png",
    "Bandwidth, 1 sender → 1 receiver (MB/s = msg/s × size)",
    "MB/s (10⁶ bytes per second)",
    "Bandwidth vs size, 1 → 1",
    "higher",
    {
        "ucx": "UCX tag_bw",
        "mpi": "Open MPI (mpi_rate.c, 1 pair)",
        "iperf3": "iperf3 stream",
    },
)
METRICS = {
    # metric: (png, table title, y label, plot title, better, legend labels)
    "latency_us": (
        "latency.png",
        "Latency: half round trip, p50 (µs)",
        "half round trip, p50 (µs)",
        "Latency vs message size",
        "lower",
        {
            "ucx": "UCX tag_lat",
            "mpi": "Open MPI ping-pong (mpi_lat.c)",
            "sockperf": "sockperf ping-pong (kernel TCP)",
        },
    ),
    "rate_msgs": (
        "rate.png",
        "Message rate, 1 sender → 1 receiver (msg/s)",
        "messages per second",
        "Message rate vs size, 1 → 1",
        "higher",
        {
            "ucx": "UCX tag_bw",
            "mpi": "Open MPI (mpi_rate.c, 1 pair)",
            "iperf3": "iperf3 stream (bytes/s ÷ size)",
        },
    ),
    "rate4_msgs": (
        "rate4.png",
        "Message rate, 4 senders → 1 receiver (msg/s; peers: 4 pairs, rates summed)",
        "messages per second (sum)",
        "Message rate vs size, 4 → 1",
        "higher",
        {
            "wyvern-tcp": "wyvern-tcp (4 senders → 1 receiver)",
            "wyvern-dpdk": "wyvern-dpdk (4 senders → 1 receiver)",
            "ucx": "UCX tag_bw × 4 pairs",
            "mpi": "Open MPI × 4 pairs (mpi_rate.c)",
        },
    ),
}


def human(n):
    n = int(n)
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def ok(v):
    return v is not None and math.isfinite(v) and v > 0


def legend(system, labels):
    """The system's label and, in parentheses, what it ran on."""
    name = labels.get(system, system)
    on = ON.get(system)
    if not on or on in name:
        return name
    return f"{name[:-1]}; {on})" if name.endswith(")") else f"{name} ({on})"


def parse_args(argv):
    args = [a for a in argv[1:]]
    stamp = ""
    if "--stamp" in args:
        i = args.index("--stamp")
        if i + 1 >= len(args):
            sys.exit("plot.py: --stamp needs a value (e.g. \"git 585bf46, 2026-11-28\")")
        stamp = args[i + 1]
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit("usage: plot.py SWEEP.csv OUT_DIR [--stamp 'git COMMIT, DATE']")
    return args[0], args[1], stamp


def main():
    src, out, stamp = parse_args(sys.argv)
    data = defaultdict(dict)  # (metric, system) -> {size: median}
    runs = defaultdict(dict)  # (metric, system) -> {size: "r1 r2 ..."}
    notes = defaultdict(list)  # metric -> ["system, size: note"]
    with open(src) as f:
        for row in csv.DictReader(f):
            metric, system, size = row["metric"], row["system"], int(row["size"])
            runs[(metric, system)][size] = row.get("runs", "")
            try:
                data[(metric, system)][size] = float(row["median"])
            except ValueError:
                data[(metric, system)][size] = float("nan")
            note = (row.get("note") or "").strip()
            # the per-run means stay in the CSV; the table notes say what differs
            keep = [p.strip() for p in note.split(";") if p.strip().startswith(("measured at", "FAILED"))]
            if keep:
                notes[metric].append(f"{system}, {human(size)}: " + "; ".join(keep))
    for (m, system), d in list(data.items()):
        if m == "rate_msgs":
            data[("bandwidth_mbs", system)] = {z: v * z / 1e6 for z, v in d.items()}
    metrics = dict(METRICS)
    metrics["bandwidth_mbs"] = BANDWIDTH
    sizes = sorted({z for (m, _), d in data.items() if m in metrics for z in d})
    written = []
    lines = []
    for metric, (png, table_title, ylabel, title, better, labels) in metrics.items():
        systems = [s for s in ORDER if (metric, s) in data] + sorted(
            s for (m, s) in data if m == metric and s not in ORDER
        )
        if not systems:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
        for s in systems:
            d = data[(metric, s)]
            xs = [x for x in sorted(d) if ok(d[x])]
            if not xs:
                continue
            fmt, colour = STYLE.get(s, (".-", None))
            ax.plot(xs, [d[x] for x in xs], fmt, color=colour, label=legend(s, labels))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        # plain numbers (3, 40, 2k, 1M) rather than 3×10⁰ on the log axis;
        # minor ticks labelled at 2 and 5 of each decade only
        plain = mticker.EngFormatter(places=0, sep="") if metric not in ("latency_us", "bandwidth_mbs") else None

        def label(v, _pos, plain=plain):
            return plain(v) if plain else f"{v:g}"

        def minor(v, _pos, plain=plain):
            lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9)) if v > 0 else 0
            return label(v, _pos) if lead in (2, 5) else ""

        ax.yaxis.set_major_formatter(mticker.FuncFormatter(label))
        ax.yaxis.set_minor_formatter(mticker.FuncFormatter(minor))
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.set_xticks(sizes)
        ax.set_xticklabels([human(z) for z in sizes], rotation=30)
        ax.set_xlabel("message size")
        ax.set_ylabel(ylabel)
        where = "two agents on loopback"
        if any(s == "wyvern-dpdk" for s in systems):
            where += "; dpdk: two namespaces, one veth pair"
        ax.set_title(f"{title} ({better} is better)\n{where}, 2-core VM", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        if stamp:
            fig.text(0.995, 0.005, stamp, ha="right", va="bottom", fontsize=7, color="dimgray")
        fig.tight_layout()
        fig.savefig(f"{out}/{png}", metadata={"Description": f"{title}; {stamp}" if stamp else title})
        plt.close(fig)
        written.append(png)

        peers = [s for s in systems if not s.startswith("wyvern")]
        head = ["size"] + systems + [f"{WYVERN} ÷ {p}" for p in peers]
        lines.append(f"**{table_title}**: {better} is better; medians, every run in the CSV"
                     + (f" ({stamp})" if stamp else ""))
        lines.append("")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for z in sizes:
            row = [human(z)]
            for s in systems:
                v = data[(metric, s)].get(z)
                row.append("—" if not ok(v) else (f"{v:,.2f}" if metric in ("latency_us", "bandwidth_mbs") else f"{v:,.0f}"))
            w = data.get((metric, WYVERN), {}).get(z)
            for p in peers:
                v = data[(metric, p)].get(z)
                row.append("—" if not ok(w) or not ok(v) else f"{w / v:.2f}×")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if metric == "rate_msgs" and "iperf3" in systems:
            lines.append(
                "iperf3 is a byte stream, not messages: its column is received bytes/s ÷ size "
                "(writes of `-l size`, at most 1 MiB), the kernel-TCP ceiling for that size."
            )
            lines.append("")
        for n in notes.get(metric, []):
            lines.append(f"* {n}")
        if notes.get(metric):
            lines.append("")
    frames = {s: data.get(("frames_s", s), {}) for s in ("wyvern-dpdk", "testpmd")}
    if any(frames.values()):
        w = next(iter(frames["wyvern-dpdk"].values()), None)
        t = next(iter(frames["testpmd"].values()), None)
        wr = next(iter(runs.get(("frames_s", "wyvern-dpdk"), {}).values()), "")
        tr = next(iter(runs.get(("frames_s", "testpmd"), {}).values()), "")

        def cell(v):
            return "—" if not ok(v) else f"{v:,.0f}"

        def per_run(r):
            return " / ".join("—" if x == "nan" else f"{float(x):,.0f}" for x in r.split()) or "—"

        lines.append(
            "**Frame rate at full-size (1514 B) frames, net_af_packet on one veth pair** "
            "(higher is better; medians, every run listed)"
        )
        lines.append("")
        lines.append("| system | runs (frames/s) | median (frames/s) | wyvern-dpdk ÷ testpmd |")
        lines.append("|---|---|---|---|")
        ratio = "—" if not ok(w) or not ok(t) else f"{w / t:.2f}×"
        lines.append(f"| wyvern-dpdk: 1 MiB messages, frames the receiving agent took / its time | {per_run(wr)} | {cell(w)} | {ratio} |")
        lines.append(f"| dpdk-testpmd txonly → rxonly | {per_run(tr)} | {cell(t)} | 1 |")
        lines.append("")
        for n in notes.get("frames_s", []):
            lines.append(f"* {n}")
        if notes.get("frames_s"):
            lines.append("")
    shown = [s for s in ORDER if any(sy == s for (_, sy) in data)]
    lines.append("What each system ran on: " + "; ".join(f"{s}: {ON[s]}" for s in shown) + ".")
    lines.append("")
    lines.append(" ".join(f"![{p[:-4]}]({p})" for p in written))
    with open(f"{out}/sweep.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {', '.join(f'{out}/{p}' for p in written)}, {out}/sweep.md")


if __name__ == "__main__":
    main()
