"""The failover study's figures (seaborn on matplotlib's Agg backend: no display needed).

Each function draws one figure from the study's frames and returns the file name it wrote,
so the report embeds exactly what was produced.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.failover_model import ACKNOWLEDGED, REFUSED, UNKNOWN

FIGURES = {"unavailability": "unavailability.png", "timeline": "timeline.png"}
DPI = 120
OUTCOME_COLOURS = {ACKNOWLEDGED: "tab:green", UNKNOWN: "tab:orange", REFUSED: "tab:red"}
PHASES = [("key_free_s", "kill → leader key gone (lease)"), ("election_s", "key gone → new leader (election)"),
          ("elected_to_first_ack_s", "new leader → first acknowledged write")]


def _save(fig: plt.Figure, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=DPI)
    plt.close(fig)
    return name


def plot_unavailability(runs: pd.DataFrame, out_dir: str) -> str:
    """Left: the longest gap without an acknowledged write, per W and TTL, each run a dot, the
    TTL drawn as a dashed line of the same colour. Right: the mean gap split into its phases."""
    ttls = sorted(runs["ttl_ms"].unique())
    palette = dict(zip(ttls, sns.color_palette("deep", len(ttls))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    data = runs.assign(TTL=runs["ttl_ms"].map(lambda t: f"{t} ms"))
    hue_palette = {f"{t} ms": palette[t] for t in ttls}
    sns.barplot(data=data, x="W", y="unavailable_s", hue="TTL", palette=hue_palette, errorbar=None, alpha=0.55, ax=left)
    sns.stripplot(data=data, x="W", y="unavailable_s", hue="TTL", palette=hue_palette, dodge=True, color="black",
                  size=5, legend=False, ax=left)
    for ttl in ttls:
        left.axhline(ttl / 1000, ls="--", lw=1, color=palette[ttl])
    left.set(xlabel="write quorum W", ylabel="seconds without an acknowledged write",
             title="Unavailability around the leader's SIGKILL (dashed: LEADER_TTL)")
    plot_phases(right, runs, ttls)
    return _save(fig, out_dir, FIGURES["unavailability"])


def plot_phases(ax: plt.Axes, runs: pd.DataFrame, ttls: list[int]) -> None:
    """Stacked mean phases per (W, TTL): where the time without a leader goes."""
    means = runs.groupby(["ttl_ms", "W"])[[c for c, _ in PHASES]].mean().reset_index()
    quorums = sorted(runs["W"].unique())
    width = 0.8 / len(ttls)
    colours = sns.color_palette("muted", len(PHASES))
    for i, ttl in enumerate(ttls):
        part = means[means["ttl_ms"] == ttl].set_index("W").reindex(quorums)
        x = [q - 0.4 + width * (i + 0.5) for q in quorums]
        bottom = [0.0] * len(quorums)
        for (column, label), colour in zip(PHASES, colours):
            heights = [0.0 if math.isnan(v) else v for v in part[column]]
            ax.bar(x, heights, width * 0.9, bottom=bottom, color=colour, edgecolor="white",
                   label=label if i == 0 else None)
            bottom = [b + h for b, h in zip(bottom, heights)]
        for xi, top in zip(x, bottom):
            ax.text(xi, top, f"{ttl // 1000}s", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(quorums)
    ax.set(xlabel="write quorum W (bars labelled with LEADER_TTL)", ylabel="seconds after the kill (mean of runs)",
           title="Where the time goes")
    ax.legend(fontsize=8, loc="upper left")


def plot_timeline(writes: pd.DataFrame, events: pd.DataFrame, runs: pd.DataFrame, out_dir: str) -> str:
    """One failover per panel (the smallest TTL, the smallest and largest W, first repeat):
    every write a line from its start to its outcome, the leader changes as vertical lines."""
    chosen = timeline_runs(runs)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(12, 3.8 * len(chosen)), squeeze=False)
    for ax, run in zip(axes[:, 0], chosen):
        key = (writes["W"] == run["W"]) & (writes["ttl_ms"] == run["ttl_ms"]) & (writes["repeat"] == run["repeat"])
        ekey = (events["W"] == run["W"]) & (events["ttl_ms"] == run["ttl_ms"]) & (events["repeat"] == run["repeat"])
        draw_run(ax, writes[key], events[ekey], run)
    return _save(fig, out_dir, FIGURES["timeline"])


def timeline_runs(runs: pd.DataFrame) -> list[dict]:
    first = runs[(runs["ttl_ms"] == runs["ttl_ms"].min()) & (runs["repeat"] == runs["repeat"].min())]
    picked = first[first["W"].isin({first["W"].min(), first["W"].max()})].sort_values("W")
    return picked.to_dict("records")


def draw_run(ax: plt.Axes, writes: pd.DataFrame, events: pd.DataFrame, run: dict) -> None:
    for outcome, colour in OUTCOME_COLOURS.items():
        part = writes[writes["outcome"] == outcome]
        ax.hlines(part["write"], part["start_s"], part["end_s"], color=colour, lw=1.2,
                  label=f"{outcome} ({len(part)})")
    ax.axvspan(run["unavailable_from_s"], run["unavailable_to_s"], color="grey", alpha=0.12,
               label=f"no acknowledged write for {run['unavailable_s']:.2f} s")
    marks = [(0.0, "leader SIGKILLed", "black")]
    marks += [(e["t_s"], "leader key gone", "tab:purple") for e in events.to_dict("records")
              if e["node"] == "etcd" and e["event"] == "key" and not isinstance(e["detail"], str) and e["t_s"] > 0]
    marks += [(e["t_s"], f"{e['node']} leads term {int(e['term'])}", "tab:blue") for e in events.to_dict("records")
              if e["event"] == "leads" and e["t_s"] > 0]
    if not math.isnan(run["old_leader_back_s"]):
        marks.append((run["old_leader_back_s"], "old leader answers again", "tab:brown"))
    top = writes["write"].max() if len(writes) else 1
    for i, (t, text, colour) in enumerate(marks):
        ax.axvline(t, color=colour, ls="--", lw=1)
        ax.text(t, top * (0.97 - 0.09 * (i % 4)), " " + text, color=colour, fontsize=8, va="top")
    ax.axvline(run["ttl_ms"] / 1000, color="grey", ls=":", lw=1)
    ax.set(xlabel="seconds after the leader's SIGKILL", ylabel="write number",
           title=f"W={run['W']}, LEADER_TTL={run['ttl_ms']} ms (dotted: one TTL after the kill)")
    ax.legend(fontsize=8, loc="lower right")


def plot_all(runs: pd.DataFrame, writes: pd.DataFrame, events: pd.DataFrame, out_dir: str) -> dict[str, str]:
    sns.set_theme(style="whitegrid", context="notebook")
    return {"unavailability": plot_unavailability(runs, out_dir),
            "timeline": plot_timeline(writes, events, runs, out_dir)}
