"""PNG plots of a scenario's runs: TTFT distributions, service over time, queue depth over time.

Small figures (72 dpi, few colours) so that they can live in the repository next to
BENCHMARKS.md. Matplotlib's Agg backend draws without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 72
#: The box plots' whiskers, percentiles (as :func:`loadtest.stats.percentile` defines them).
WHISKERS = (1, 99)


def _grid(count: int, cols: int = 3) -> tuple[int, int]:
    cols = min(cols, count)
    return math.ceil(count / cols), cols


def ttft_plot(title: str, runs: list[dict[str, Any]], path: Path) -> None:
    """Box plots of TTFT per tenant (groups) and run (colours), on a log scale."""
    tenants = list(dict.fromkeys(t for run in runs for t in run["ttft"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tenants) * max(1, len(runs) / 3)), 3.4))
    width = 0.8 / len(runs)
    colours = plt.get_cmap("tab10")
    for i, run in enumerate(runs):
        data = [run["ttft"].get(t) or [math.nan] for t in tenants]
        positions = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(tenants))]
        boxes = ax.boxplot(
            data, positions=positions, widths=width * 0.9, whis=WHISKERS, showfliers=False,
            patch_artist=True, manage_ticks=False,
        )  # fmt: skip
        for box in boxes["boxes"]:
            box.set_facecolor(colours(i % 10))
        ax.plot([], [], color=colours(i % 10), linewidth=6, label=run["label"])
    ax.set_xticks(range(len(tenants)), tenants)
    ax.set_yscale("log")
    ax.set_ylabel("TTFT, simulated s")
    low, high = WHISKERS
    ax.set_title(f"{title}\nTTFT per tenant (box p25-p75, whiskers p{low:g}-p{high:g}; "
                 "plain = whole answer)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, ncol=min(len(runs), 5), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def service_plot(
    title: str, runs: list[dict[str, Any]], weights: dict[str, float], path: Path
) -> None:
    """Cumulative service divided by weight, per tenant over time: parallel lines are fair."""
    rows, cols = _grid(len(runs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        series = run["service_series"]
        for tenant, values in series["by_tenant"].items():
            ax.plot(series["t"], [v / weights[tenant] for v in values], label=tenant)
        ax.set_title(run["label"], fontsize=9)
        ax.set_xlabel("simulated s", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("service / weight (tokens)", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: weighted service over time", fontsize=10)
    _save(fig, path)


def queue_plot(title: str, runs: list[dict[str, Any]], path: Path) -> None:
    """Requests queued in the gateway per tenant, and waiting inside the engines, over time."""
    rows, cols = _grid(len(runs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        samples = run["queue_samples"]
        times = [s["t"] for s in samples]
        tenants = list(dict.fromkeys(t for s in samples for t in s["gateway"]))
        for tenant in tenants:
            ax.plot(
                times, [s["gateway"].get(tenant, 0) for s in samples], label=f"{tenant} (gateway)"
            )
        engine_waiting = [sum(e.get("waiting", 0) for e in s["engines"].values()) for s in samples]
        ax.plot(times, engine_waiting, "k--", label="engines waiting")
        ax.set_title(run["label"], fontsize=9)
        ax.set_xlabel("simulated s", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes.flat[0].set_ylabel("requests queued", fontsize=8)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: queue depth over time", fontsize=10)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
