"""The compaction study's outputs: compaction.csv, compaction.png and REPORT.md, every number and
verdict computed from the measured rows.

A row is one measurement: (config, writes, metric, node, value). A metric's growth is its value
at the last checkpoint over its value at the first; a configuration "stays within 20%" on a
metric when that ratio is at most ``LIMIT`` for every node measured, so the data directory's
verdict is its worst node's.
"""

from __future__ import annotations

import math
import os
import platform
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullFormatter

from analysis.report import md_table

LIMIT = 1.2
# metric -> (what it is called in the report, unit, divisor from the raw value)
GROWTH_METRICS = {
    "leader_rss_bytes": ("leader memory (VmRSS)", "MiB", 2**20),
    "data_dir_bytes": ("data directory", "MiB", 2**20),
    "leader_restart_s": ("leader restart", "s", 1),
    "follower_resync_s": ("wiped follower's resync", "s", 1),
}
COLUMNS = ["config", "writes", "metric", "node", "value"]
FIGURE = "compaction.png"
DPI = 120


# --- computation ------------------------------------------------------------------------------


def growth(frame: pd.DataFrame) -> pd.DataFrame:
    """Per growth metric, config and node: the value at the first and the last checkpoint and
    their ratio (NaN when the first is not positive: no ratio to speak of)."""
    first, last = frame["writes"].min(), frame["writes"].max()
    rows = []
    for (metric, config, node), g in frame[frame["metric"].isin(GROWTH_METRICS)].groupby(["metric", "config", "node"]):
        at = dict(zip(g["writes"], g["value"]))
        v1, v2 = at.get(first, math.nan), at.get(last, math.nan)
        rows.append({"metric": metric, "config": config, "node": node, "first": v1, "last": v2,
                     "ratio": v2 / v1 if v1 > 0 else math.nan})
    return pd.DataFrame(rows, columns=["metric", "config", "node", "first", "last", "ratio"])


def verdicts(grown: pd.DataFrame, limit: float = LIMIT) -> pd.DataFrame:
    """Per config and metric, the node that grew most and whether it stayed within ``limit``
    (None when a ratio is missing: then no verdict)."""
    rows = []
    for config in grown["config"].unique():
        for metric in GROWTH_METRICS:
            g = grown[(grown["config"] == config) & (grown["metric"] == metric)]
            if g.empty:
                continue
            if g["ratio"].isna().any():
                rows.append({**g[g["ratio"].isna()].iloc[0].to_dict(), "within": None})
            else:
                worst = g.loc[g["ratio"].idxmax()].to_dict()
                rows.append({**worst, "within": bool(worst["ratio"] <= limit)})
    return pd.DataFrame(rows, columns=["metric", "config", "node", "first", "last", "ratio", "within"])


def same_run(frame: pd.DataFrame, with_c: str, without_c: str) -> pd.DataFrame:
    """At the last checkpoint, each growth metric with compaction against without it; the data
    directory as the six together."""
    last = frame[(frame["writes"] == frame["writes"].max()) & frame["metric"].isin(GROWTH_METRICS)]
    totals = last.groupby(["metric", "config"])["value"].sum().unstack("config")
    rows = []
    for metric in GROWTH_METRICS:
        if metric not in totals.index or with_c not in totals or without_c not in totals:
            continue
        a, b = totals.loc[metric, with_c], totals.loc[metric, without_c]
        rows.append({"metric": metric, "with": a, "without": b, "ratio": a / b if b > 0 else math.nan})
    return pd.DataFrame(rows, columns=["metric", "with", "without", "ratio"])


# --- wording ----------------------------------------------------------------------------------


def amount(metric: str, value: float) -> str:
    _, unit, scale = GROWTH_METRICS[metric]
    return "n/a" if value is None or math.isnan(value) else f"{value / scale:,.{1 if unit == 'MiB' else 2}f} {unit}"


def times(ratio: float) -> str:
    return "n/a" if ratio is None or math.isnan(ratio) else f"×{ratio:.2f}"


def judged(within: bool | None, limit: float = LIMIT) -> str:
    if within is None or pd.isna(within):
        return "no verdict (nothing measured at the first checkpoint)"
    return f"**within {limit - 1:.0%}**" if within else f"**grows by more than {limit - 1:.0%}**"


def verdict_line(row: dict, first: int, last: int) -> str:
    """One sentence per metric and config: the two values, the ratio, which node, the verdict."""
    name = GROWTH_METRICS[row["metric"]][0]
    return (f"- {row['config']}, {name} ({row['node']}): {amount(row['metric'], row['first'])} at {first:,} writes, "
            f"{amount(row['metric'], row['last'])} at {last:,} ({times(row['ratio'])}): {judged(row['within'])}")


def overall(table: pd.DataFrame, config: str, limit: float = LIMIT) -> str:
    """The configuration's verdict over all growth metrics, computed, never assumed."""
    rows = table[table["config"] == config]
    judged_rows = [(GROWTH_METRICS[m][0], w) for m, w in zip(rows["metric"], rows["within"]) if w is not None and not pd.isna(w)]
    held = [name for name, within in judged_rows if within]
    broke = [name for name, within in judged_rows if not within]
    if not held and not broke:
        return f"Verdict for {config}: no metric could be judged."
    if not broke:
        return f"Verdict for {config}: stays within {limit - 1:.0%} on all {len(held)} metrics (ratio <= {limit:g})."
    kept = f"; within it: {', '.join(held)}" if held else ""
    return (f"Verdict for {config}: does not stay within {limit - 1:.0%}: {', '.join(broke)} grew by more "
            f"(ratio > {limit:g}){kept}.")


def memory_line(frame: pd.DataFrame, config: str) -> str:
    """The leader's VmRSS before and right after its restart at the last checkpoint: a fresh
    process holds the state alone, so what the long-running one has beyond it is history kept
    in memory or by the allocator, not state."""
    last = frame[(frame["config"] == config) & (frame["writes"] == frame["writes"].max())]
    at = dict(zip(last["metric"], last["value"]))
    if "leader_rss_bytes" not in at or "leader_rss_restarted_bytes" not in at:
        return ""
    before, after = at["leader_rss_bytes"], at["leader_rss_restarted_bytes"]
    return (f"At {int(last['writes'].iloc[0]):,} writes, {config}: the leader's VmRSS was {before / 2**20:,.1f} MiB "
            f"before its restart and {after / 2**20:,.1f} MiB right after it (×{before / after:.2f}).")


def compaction_seen(frame: pd.DataFrame, with_c: str, without_c: str) -> str:
    """Whether the nodes really snapshotted: without any snapshot file both configurations ran
    the same code path and the comparison says nothing about compaction."""
    snaps = frame[frame["metric"] == "snapshot_files"].groupby("config")["value"].max()
    got, bad = int(snaps.get(with_c, 0)), int(snaps.get(without_c, 0))
    if got == 0:
        line = (f"No node held a snapshot file at any checkpoint in the {with_c} configuration: these nodes did "
                f"not compact (a build without compaction ignores SNAPSHOT_EVERY), so both configurations measured "
                f"the same thing and the {with_c} verdict below is not about compaction.")
    else:
        line = f"With {with_c}, nodes held up to {got} snapshot file(s) under DATA_DIR/snapshots/ at a checkpoint."
    if bad:
        line += f" Yet with {without_c} (SNAPSHOT_EVERY=0) a node held {bad}: SNAPSHOT_EVERY=0 was not honoured."
    return line


# --- outputs ----------------------------------------------------------------------------------


def plot(frame: pd.DataFrame, out: str) -> str:
    """One panel per growth metric, x = writes, hue = config; the data directory's line is the
    mean of the six nodes with their range as the band."""
    data = frame[frame["metric"].isin(GROWTH_METRICS)].copy()
    data["shown"] = [v / GROWTH_METRICS[m][2] for m, v in zip(data["metric"], data["value"])]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    checkpoints = sorted(data["writes"].unique())
    for ax, (metric, (name, unit, _)) in zip(axes.flat, GROWTH_METRICS.items()):
        sub = data[data["metric"] == metric]
        sns.lineplot(data=sub, x="writes", y="shown", hue="config", marker="o", errorbar=("pi", 100), ax=ax)
        ax.set(title=name + (" (mean of six nodes, band: range)" if metric == "data_dir_bytes" else ""),
               xlabel="writes", ylabel=unit, xscale="log" if checkpoints[-1] >= 10 * checkpoints[0] else "linear")
        ax.set_xticks(checkpoints, [f"{c:,}" for c in checkpoints])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, max(sub["shown"].max(), 1e-9) * 1.1)  # from zero: the growth is seen as it is
    fig.tight_layout()
    fig.savefig(os.path.join(out, FIGURE), dpi=DPI)
    plt.close(fig)
    return FIGURE


def section_setup(meta: dict) -> str:
    configs = meta["configs"]
    settings = "; ".join(f"{name}: {' '.join(f'{k}={v}' for k, v in facts['settings'].items()) or 'nodes default'}"
                         for name, facts in configs.items())
    facts = next(iter(configs.values()), {})
    return f"""# Compaction study

Generated by `{meta['command']}` on {meta['finished_at']} in {meta['wall_s']:.0f} s, on {meta['cpus']} CPU(s),
Python {meta['python']} ({meta['platform']}); load average {meta['loadavg'][0]:.1f} at the start and
{meta['loadavg'][1]:.1f} at the end{busy(meta)}.

Two configurations, one after the other, each on a fresh cluster of six local processes (MIN_DELAY = MAX_DELAY = 0,
WRITE_QUORUM {facts.get('write_quorum')}, FSYNC {facts.get('fsync')}): {settings}. Values of {meta['value_bytes']} bytes
over {meta['keys']} keys, {meta['concurrency']} writes in flight; at {', '.join(f'{c:,}' for c in meta['checkpoints'])}
writes the load stops, every follower catches up, and the leader's VmRSS and each data directory are measured,
then the leader's restart (SIGTERM until it leads with its last_seq back) and the resync of {meta['wiped']} after
its data directory is deleted (until its applied_seq is the leader's last_seq). The leader measured at a later
checkpoint was restarted at the earlier ones, and {meta['wiped']} rebuilt from nothing.

{code_line(meta['code'], meta['code_after'])}

Raw data: [`compaction.csv`](compaction.csv) (config, writes, metric, node, value).
"""


def busy(meta: dict) -> str:
    """Timings on a machine busy with other work are slower and noisier than they would be alone."""
    if max(meta["loadavg"]) <= meta["cpus"]:
        return ""
    return " (more runnable processes than CPUs: other work shared the machine, timings are noisier)"


def code_line(before: dict, after: dict) -> str:
    """Which node code was measured, and whether it changed while the study ran."""
    dirty = f" with {before['modified']} file(s) under node/ modified" if before["modified"] != "0" else ""
    line = f"Node code: commit {before['commit']}{dirty} (node/**/*.py hash {before['hash']})."
    if after["hash"] != before["hash"]:
        line += (f" **node/ changed while the study ran** (hash {after['hash']} at the end): nodes started after the "
                 f"change ran other code, so the checkpoints may compare two builds.")
    return line


def section_growth(table: pd.DataFrame, meta: dict) -> str:
    first, last = meta["checkpoints"][0], meta["checkpoints"][-1]
    lines = "\n".join(verdict_line(row, first, last) for row in table.to_dict("records"))
    verdict = "\n\n".join(overall(table, config) for config in table["config"].unique())
    memory = " ".join(memory_line(meta["frame"], config) for config in table["config"].unique())
    return f"""## Growth from {first:,} to {last:,} writes

Ratio = value at {last:,} / value at {first:,}; for the data directory, the node that grew most.
{meta['seen']}

{lines}

{verdict}

{memory}
"""


def section_same_run(compared: pd.DataFrame, with_c: str, without_c: str, last: int) -> str:
    columns = [("metric", f"at {last:,} writes", lambda m: GROWTH_METRICS[m][0]), ("with_s", with_c, str),
               ("without_s", without_c, str), ("ratio", f"{with_c} / {without_c}", times)]
    shown = compared.assign(with_s=[amount(m, v) for m, v in zip(compared["metric"], compared["with"])],
                            without_s=[amount(m, v) for m, v in zip(compared["metric"], compared["without"])])
    return f"""## Same run: {with_c} against {without_c}

The data directory here is the six together.

{md_table(shown, columns)}
"""


def section_runs(frame: pd.DataFrame, meta: dict) -> str:
    rates = frame[frame["metric"] == "write_rate_per_s"].pivot_table(index="config", columns="writes", values="value")
    fresh = frame[frame["metric"] == "leader_rss_restarted_bytes"].pivot_table(index="config", columns="writes",
                                                                                 values="value")
    seqs = frame[frame["metric"] == "leader_last_seq"].pivot_table(index="config", columns="writes", values="value")
    lines = []
    for name, facts in meta["configs"].items():
        rate = ", ".join(f"{rates.loc[name, c]:,.0f}/s up to {c:,}" for c in rates.columns) if name in rates.index else "n/a"
        seq = ", ".join(f"{int(seqs.loc[name, c]):,}" for c in seqs.columns) if name in seqs.index else "n/a"
        rss = (", ".join(f"{fresh.loc[name, c] / 2**20:,.1f} MiB at {c:,}" for c in fresh.columns)
               if name in fresh.index else "n/a")
        lines.append(f"- {name}: {facts['wall_s']:.0f} s; writes {rate}; {facts['failed_writes']} failed and "
                     f"replaced; leader's last_seq at the checkpoints {seq}; leader's VmRSS just after its restart "
                     f"(the same state in a fresh process) {rss}")
    return "## The runs\n\n" + "\n".join(lines) + "\n"


def write_report(frame: pd.DataFrame, meta: dict, figure: str, out: str) -> str:
    with_c, without_c = list(meta["configs"])[-1], list(meta["configs"])[0]
    table = verdicts(growth(frame))
    meta = {**meta, "seen": compaction_seen(frame, with_c, without_c), "frame": frame}
    text = "\n".join([section_setup(meta), section_growth(table, meta),
                      section_same_run(same_run(frame, with_c, without_c), with_c, without_c, meta["checkpoints"][-1]),
                      f"![growth per metric]({figure})\n", section_runs(frame, meta)])
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def write_outputs(rows: list[dict], meta: dict, out: str) -> dict[str, str]:
    """CSV, figure and report in ``out``; output name -> path."""
    os.makedirs(out, exist_ok=True)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    meta = {**meta, "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    paths = {"csv": os.path.join(out, "compaction.csv")}
    frame.to_csv(paths["csv"], index=False)
    figure = plot(frame, out)
    paths["figure"] = os.path.join(out, figure)
    paths["report"] = write_report(frame, meta, figure, out)
    return paths
