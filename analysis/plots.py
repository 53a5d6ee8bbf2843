"""The study's figures (PNG, seaborn on matplotlib's Agg backend: no display needed).

Each function draws one figure from the data frames and returns the file name it wrote, so
the report can embed exactly what was produced.
"""

from __future__ import annotations

import os
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.workload import expected_kth

FIGURES = {
    "latency": "latency_vs_quorum.png",
    "distribution": "latency_distribution.png",
    "overhead": "overhead.png",
    "consistency": "consistency.png",
}
DPI = 120


def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=DPI)
    plt.close(fig)
    return name


def _positions(quorums: list[int]) -> dict[int, int]:
    """Seaborn's categorical axes place category i at x=i; map quorum -> that position."""
    return {q: i for i, q in enumerate(quorums)}


def plot_latency(writes: pd.DataFrame, stats: pd.DataFrame, meta: dict, out_dir: str) -> str:
    """Mean latency with its 95% CI against the expected k-th fastest of N delays.

    The CI comes from ``stats`` (the same numbers as the report's table), not from a second
    bootstrap, so figure and text cannot disagree.
    """
    n = meta["followers"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rng = np.random.default_rng(meta["seed"])
    ok = writes[writes["success"]]
    ax.scatter(ok["quorum"] + rng.uniform(-0.12, 0.12, len(ok)), ok["latency_ms"], s=8, alpha=0.25,
               color="tab:blue", label="single writes")
    k_all = np.arange(1, n + 1)
    theory = [expected_kth(meta["min_delay_ms"], meta["max_delay_ms"], k, n) for k in k_all]
    ax.plot(k_all, theory, "--", color="tab:red", marker="s", ms=4,
            label=f"theory: MIN + (MAX-MIN)·k/(N+1), N={n}")
    ax.plot(stats["quorum"], stats["kth_mean_ms"], ":", color="tab:green", marker="^", ms=5,
            label="mean k-th smallest drawn delay")
    ax.errorbar(stats["quorum"], stats["latency_mean_ms"],
                yerr=[stats["latency_mean_ms"] - stats["ci_low_ms"], stats["ci_high_ms"] - stats["latency_mean_ms"]],
                fmt="o-", color="black", capsize=4, label="measured mean, 95% CI")
    ax.set(xlabel="write quorum k (follower confirmations awaited)", ylabel="write latency (ms)",
           title="Write latency vs quorum", xticks=k_all)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, FIGURES["latency"])


def plot_distribution(writes: pd.DataFrame, meta: dict, out_dir: str) -> str:
    """Whole latency distributions: the order statistic's spread, not just its mean."""
    ok = writes[writes["success"]]
    quorums = sorted(ok["quorum"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sns.violinplot(data=ok, x="quorum", y="latency_ms", order=quorums, cut=0, inner=None,
                   color="lightsteelblue", ax=ax)
    sns.stripplot(data=ok, x="quorum", y="latency_ms", order=quorums, size=2.5, color="black",
                  alpha=0.45, jitter=0.2, ax=ax)
    pos = _positions(quorums)
    theory = [expected_kth(meta["min_delay_ms"], meta["max_delay_ms"], q, meta["followers"]) for q in quorums]
    ax.scatter([pos[q] for q in quorums], theory, marker="D", color="tab:red", zorder=5, label="theoretical mean")
    ax.set(xlabel="write quorum k", ylabel="write latency (ms)", title="Latency distribution per quorum")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, FIGURES["distribution"])


def plot_overhead(writes: pd.DataFrame, out_dir: str) -> str:
    """Latency minus the k-th smallest drawn delay: everything the simulation does not explain."""
    ok = writes[writes["success"]]
    quorums = sorted(ok["quorum"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    with warnings.catch_warnings():  # seaborn 0.13 still passes matplotlib's deprecated `vert`
        warnings.simplefilter("ignore", DeprecationWarning)
        sns.boxplot(data=ok, x="quorum", y="overhead_ms", order=quorums, color="wheat", showfliers=False, ax=ax)
    sns.stripplot(data=ok, x="quorum", y="overhead_ms", order=quorums, size=2.5, color="black",
                  alpha=0.45, jitter=0.2, ax=ax)
    ax.set(xlabel="write quorum k", ylabel="overhead (ms)",
           title="Overhead: latency − k-th smallest drawn delay")
    return _save(fig, out_dir, FIGURES["overhead"])


def plot_consistency(consistency: pd.DataFrame, out_dir: str) -> str:
    """Right after the writes (keys differing, entries behind) and afterwards (time to converge)."""
    quorums = sorted(consistency["quorum"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    panels = [("keys_differing", "keys differing from leader", "Staleness right after the writes"),
              ("entries_behind", "entries not yet applied", "Replication lag right after the writes")]
    for ax, (column, label, title) in zip(axes, panels):
        sns.barplot(data=consistency, x="quorum", y=column, order=quorums, color="lightsteelblue",
                    errorbar=None, ax=ax)
        sns.stripplot(data=consistency, x="quorum", y=column, order=quorums, color="black", size=4,
                      jitter=0.2, ax=ax)
        ax.set(xlabel="write quorum k", ylabel=f"{label} (per follower)", title=title)
    plot_convergence(axes[2], consistency, quorums)
    return _save(fig, out_dir, FIGURES["consistency"])


def plot_convergence(ax: plt.Axes, consistency: pd.DataFrame, quorums: list[int]) -> None:
    """Per follower: measured time to match (dot) beside when its last send landed (cross), joined."""
    pos = _positions(quorums)
    offsets = np.linspace(-0.3, 0.3, max(consistency.groupby("quorum").size().max(), 1))
    for q, group in consistency.groupby("quorum"):
        for offset, row in zip(offsets, group.sort_values("predicted_converge_s").to_dict("records")):
            x = pos[q] + offset
            ax.plot([x, x], [row["predicted_converge_s"], row["converge_s"]], color="grey", lw=0.8)
            ax.scatter(x, row["converge_s"], color="black", s=16, zorder=3)
            ax.scatter(x, row["predicted_converge_s"], color="tab:red", marker="x", s=22, zorder=3)
    ax.scatter([], [], color="black", s=16, label="measured: matches leader (poll)")
    ax.scatter([], [], color="tab:red", marker="x", s=22, label="last send's delay over (drawn delays)")
    ax.set_xticks(range(len(quorums)), [str(q) for q in quorums])
    ax.legend(fontsize=8, loc="best")
    ax.set(xlabel="write quorum k (one pair per follower)", ylabel="seconds after the last write returned",
           title="Time until each follower matches the leader")


def plot_all(writes: pd.DataFrame, consistency: pd.DataFrame, stats: pd.DataFrame, meta: dict,
             out_dir: str) -> dict[str, str]:
    """All four figures; returns figure key -> file name (relative to ``out_dir``)."""
    sns.set_theme(style="whitegrid", context="notebook")
    return {
        "latency": plot_latency(writes, stats, meta, out_dir),
        "distribution": plot_distribution(writes, meta, out_dir),
        "overhead": plot_overhead(writes, out_dir),
        "consistency": plot_consistency(consistency, out_dir),
    }
