"""Draw bench/compare.py's results: wall time and peak PSS against the number of certificates.

Run with the bench venv's python, which has matplotlib (the project does not):

    build/bench-certbot/bin/python bench/plot.py results.json plot.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (
    ("median_s", "wall time (s, median; bars: min-max)", "log"),
    ("peak_pss_mib", "peak PSS of the process tree (MiB)", "linear"),
)


def draw(report: dict[str, Any], out: Path) -> None:
    """Two panels side by side, one line per client, log-scale N."""
    results = [r for r in report["results"] if not r["error"] and r["runs"]]
    clients = list(dict.fromkeys(r["client"] for r in results))
    counts = report["counts"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, (metric, label, yscale) in zip(axes, PANELS, strict=True):
        for client in clients:
            rows = sorted((r for r in results if r["client"] == client), key=lambda r: r["count"])
            xs = [r["count"] for r in rows]
            ys = [r[metric] for r in rows]
            if metric == "median_s":
                below = [r["median_s"] - r["min_s"] for r in rows]
                above = [r["max_s"] - r["median_s"] for r in rows]
                axis.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=client)
            else:
                axis.plot(xs, ys, marker="o", label=client)
        axis.set_xscale("log")
        axis.set_yscale(yscale)
        if yscale == "linear":
            axis.set_ylim(bottom=0)
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.set_xlabel("certificates (N)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if report.get("letskencrypt_config_mode") is False:
        figure.text(0.5, 0.01, "letskencrypt: one run per certificate (no --config yet)",
                    ha="center", fontsize=8)
    machine = report["machine"]
    figure.suptitle(
        f"ACME clients against pebble {machine['pebble']}, {machine['nproc']} CPUs, "
        f"{machine['date']}"
    )
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(out, dpi=120)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} RESULTS.json PLOT.png")
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
