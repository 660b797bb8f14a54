#!/usr/bin/env python3
"""Plot a bench/run.py result: throughput per receiver per data set, and peak RSS against
object size.

    .venv/bin/python bench/plot.py [bench/out/latest/results.json] [--out-dir DIR]

Writes throughput.png and rss.png next to results.json (or into --out-dir).
Needs matplotlib (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path(__file__).resolve().parent


def _label(results: dict, rid: str) -> str:
    for r in results["receivers"]:
        if r["id"] == rid:
            return r["label"]
    return rid


def plot_throughput(results: dict, path: Path) -> None:
    rows = results["rows"]
    names = list(results["datasets"])
    receivers = [r["id"] for r in results["receivers"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        per_object = name == "tiny"
        cells = sorted({r["associations"] for r in rows if r["dataset"] == name})
        width = 0.8 / max(1, len(receivers))
        for i, rid in enumerate(receivers):
            values, failed = [], []
            for a in cells:
                row = next((r for r in rows if r["dataset"] == name and r["associations"] == a
                            and r["receiver"] == rid), None)
                value = (row or {}).get("objects_per_s" if per_object else "mb_per_s")
                values.append(value or 0)
                failed.append(row is not None and value is None)
            xs = [c + (i - (len(receivers) - 1) / 2) * width for c in range(len(cells))]
            bars = ax.bar(xs, values, width, label=_label(results, rid))
            for x, bad in zip(xs, failed):
                if bad:
                    ax.text(x, 0, "FAILED", rotation=90, ha="center", va="bottom", fontsize=7)
            del bars
        ax.set_xticks(range(len(cells)), [f"{a} assoc" for a in cells])
        spec = results["datasets"][name]
        n = len(spec["files"])
        ax.set_title(f"{name}: {n} x {spec['total_bytes'] / n / 1e6:.3g} MB")
        ax.set_ylabel("objects/s" if per_object else "MB/s")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"Receive throughput, DCMTK storescu sender, loopback (run {results['run_id']})")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(results: dict, path: Path) -> None:
    rows = results["rows"]
    sizes = {name: spec["total_bytes"] / len(spec["files"]) for name, spec in results["datasets"].items()}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in results["receivers"]:
        if not r.get("stores", True):
            continue
        points = []
        for name, size in sorted(sizes.items(), key=lambda kv: kv[1]):
            peaks = [row["peak_rss_single"] for row in rows
                     if row["dataset"] == name and row["receiver"] == r["id"] and row.get("peak_rss_single")]
            if peaks:
                points.append((size / 1e6, max(peaks) / 1e6))
        if points:
            ax.plot(*zip(*points), marker="o", label=r["label"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("object size (MB)")
    ax.set_ylabel("peak RSS of the largest receiver process (MB)")
    ax.set_title("Peak RSS against object size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=BENCH / "out" / "latest" / "results.json")
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--prefix", default="", help="prefix for the PNG file names")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    out = args.out_dir or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    plot_throughput(results, out / f"{args.prefix}throughput.png")
    plot_rss(results, out / f"{args.prefix}rss.png")
    print(f"wrote {out / (args.prefix + 'throughput.png')} and {out / (args.prefix + 'rss.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
