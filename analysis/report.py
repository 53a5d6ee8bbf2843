"""Statistics, summary.json and REPORT.md, all computed from the run's data frames.

Every number in the report text is formatted from these frames: the explanations are
templates whose wording also follows the data (a trend is called rising only if it rises),
so a rerun with other settings yields a report that is still true.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from analysis.workload import expected_kth, std_kth

BOOTSTRAP_SAMPLES = 2000


# --- statistics -------------------------------------------------------------------------------


def bootstrap_ci(values: np.ndarray, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: no normality assumption for skewed latencies."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(BOOTSTRAP_SAMPLES, len(values))).mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def quorum_stats(writes: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Per quorum: latency (mean, CI, spread), theory, drawn k-th delay, overhead, confirmations."""
    n, lo, hi = meta["followers"], meta["min_delay_ms"], meta["max_delay_ms"]
    rows = []
    for q, group in writes.groupby("quorum"):
        q = int(q)
        ok = group[group["success"]]
        latency, overhead = ok["latency_ms"].to_numpy(), ok["overhead_ms"].to_numpy()
        ci_low, ci_high = bootstrap_ci(latency, meta["seed"] + q)
        rows.append({
            "quorum": q, "writes": len(group), "failed": int((~group["success"]).sum()),
            "latency_mean_ms": latency.mean(), "ci_low_ms": ci_low, "ci_high_ms": ci_high,
            "latency_median_ms": np.median(latency), "latency_p95_ms": np.percentile(latency, 95),
            "latency_std_ms": latency.std(ddof=1) if len(latency) > 1 else math.nan,
            "latency_min_ms": latency.min(), "latency_max_ms": latency.max(),
            "theory_ms": expected_kth(lo, hi, q, n), "theory_std_ms": std_kth(lo, hi, q, n),
            "kth_mean_ms": ok["kth_delay_ms"].mean(),
            "kth_se_ms": std_kth(lo, hi, q, n) / math.sqrt(len(ok)),
            "overhead_mean_ms": overhead.mean(), "overhead_median_ms": np.median(overhead),
            "overhead_p95_ms": np.percentile(overhead, 95), "overhead_min_ms": overhead.min(),
            "overhead_max_ms": overhead.max(),
            "confirmations_mean": ok["confirmations"].mean(),
            "above_quorum": int((ok["confirmations"] > q).sum()),
            "sends_left_at_answer": int((n - ok["confirmations"]).sum()),
            "writes_per_s": len(ok) / (ok["end_s"].max() - ok["start_s"].min()),
        })
    return pd.DataFrame(rows)


def consistency_stats(consistency: pd.DataFrame) -> pd.DataFrame:
    """Per quorum: staleness at the snapshot, convergence, and the log comparison."""
    rows = []
    for q, g in consistency.groupby("quorum"):
        known = g["prefix_consistent"].dropna()
        late = g[~g["identical_at_snapshot"].astype(bool) & g["converged"].astype(bool)]
        margin = late["converge_s"] - late["predicted_converge_s"]
        rows.append({
            "quorum": int(q), "followers": len(g),
            "identical": int(g["identical_at_snapshot"].sum()),
            "keys_differing_mean": g["keys_differing"].mean(), "keys_differing_max": int(g["keys_differing"].max()),
            "keys_missing": int(g["keys_missing"].sum()), "keys_stale": int(g["keys_stale"].sum()),
            "entries_behind_mean": g["entries_behind"].mean(), "entries_behind_max": int(g["entries_behind"].max()),
            "entries_behind_sum": int(g["entries_behind"].sum()),
            "waiting_for_gap": int(g["waiting_for_gap"].sum()),
            "sends_pending_est": int(g["sends_pending_est"].sum()),
            "prefix_ok": int(known.astype(bool).sum()), "prefix_known": len(known),
            "converged": int(g["converged"].sum()),
            "converge_max_s": g["converge_s"].max(), "converge_mean_s": g["converge_s"].mean(),
            "predicted_max_s": g["predicted_converge_s"].max(),
            "snapshot_after_ms": g["snapshot_after_ms"].max(),
            "snapshot_done_ms": g["snapshot_done_ms"].max(),
            "late_followers": len(late),
            "margin_min_s": margin.min() if len(late) else math.nan,
            "margin_max_s": margin.max() if len(late) else math.nan,
            "logs_equal": bool(g["logs_equal"].all()),
            "out_of_order": int(g["log_out_of_order"].sum()),
            "arrival_divergent": int(g["arrival_order_divergent_keys"].sum()),
            "arrival_divergent_followers": int((g["arrival_order_divergent_keys"] > 0).sum()),
        })
    return pd.DataFrame(rows)


def summarise(stats: pd.DataFrame, cstats: pd.DataFrame, quorum_info: list[dict], meta: dict) -> dict:
    """summary.json: parameters, and per quorum every statistic the report quotes."""
    info = {int(i["quorum"]): i for i in quorum_info}
    merged = stats.merge(cstats, on="quorum", how="left")
    per_quorum = []
    for row in merged.to_dict("records"):
        extra = info.get(int(row["quorum"]), {})
        per_quorum.append({**{k: _plain(v) for k, v in row.items()}, **{k: _plain(v) for k, v in extra.items()}})
    return {"parameters": {k: _plain(v) for k, v in meta.items()}, "quorums": per_quorum}


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (numpy types out, NaN as null)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- formatting helpers -----------------------------------------------------------------------


def ms(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} ms"


def sec(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f} s"


def signed(value: float, unit: str = "ms") -> str:
    return f"{value:+.1f} {unit}"


def md_table(df: pd.DataFrame, columns: list[tuple[str, str, Callable[[Any], str]]]) -> str:
    """A Markdown table of ``df``: (column or callable key, header, formatter) per column."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row[c]) for c, _, fmt in columns) + " |" for row in df.to_dict("records")]
    return "\n".join([head, rule, *body])


def trend(first: float, last: float, tolerance: float) -> str:
    """'rises', 'falls' or 'stays about level', judged against a tolerance in the same unit."""
    if last - first > tolerance:
        return "rises"
    if first - last > tolerance:
        return "falls"
    return "stays about level"


def _q(df: pd.DataFrame, quorum: int) -> dict:
    return df[df["quorum"] == quorum].iloc[0].to_dict()


# --- report sections --------------------------------------------------------------------------


def section_setup(meta: dict) -> str:
    quorums = ", ".join(str(q) for q in meta["quorums"])
    return f"""# Write-quorum study

Generated by `python -m analysis` on {meta['finished_at']} against {meta['cluster']}.
Per quorum: {meta['writes']} writes with {meta['concurrency']} in flight over {meta['keys']} keys
(seed {meta['seed']}). Quorums studied: {quorums}. The leader draws one delay per follower and write,
uniform in {meta['min_delay_ms']}..{meta['max_delay_ms']} ms, for its N = {meta['followers']} followers,
from a generator seeded with DELAY_SEED = {meta['seed']} at every quorum, so every quorum starts from the
same sequence of draws (concurrent writes may still take them in a slightly different order);
FSYNC policy {meta['fsync']}. Measuring took {meta['wall_s']:.1f} s, leader restarts included.

Raw data: [`writes.csv`](writes.csv) (one row per write), [`consistency.csv`](consistency.csv)
(one row per follower and quorum), [`summary.json`](summary.json).
"""


def section_latency(stats: pd.DataFrame, meta: dict, figures: dict) -> str:
    n, lo, hi = meta["followers"], meta["min_delay_ms"], meta["max_delay_ms"]
    first, last = stats.iloc[0], stats.iloc[-1]
    table = md_table(stats, [
        ("quorum", "k", str), ("writes", "writes", str), ("failed", "failed", str),
        ("latency_mean_ms", "mean", ms),
        ("ci_low_ms", "95% CI low", ms), ("ci_high_ms", "95% CI high", ms),
        ("latency_median_ms", "median", ms), ("latency_p95_ms", "p95", ms),
        ("theory_ms", "theory", ms), ("kth_mean_ms", "mean k-th drawn delay", ms),
        ("overhead_mean_ms", "mean overhead", ms),
    ])
    lines = [deviation_sentence(row, meta) for row in stats.to_dict("records")]
    growth = (f"From k = {int(first['quorum'])} to k = {int(last['quorum'])} the mean latency went from "
              f"{ms(first['latency_mean_ms'])} to {ms(last['latency_mean_ms'])} "
              f"({signed(last['latency_mean_ms'] - first['latency_mean_ms'])}); the formula predicts "
              f"{signed(last['theory_ms'] - first['theory_ms'])}, i.e. (MAX − MIN)/(N + 1) = "
              f"{(hi - lo) / (n + 1):.1f} ms per extra confirmation.") if len(stats) > 1 else ""
    monotone = stats["latency_mean_ms"].is_monotonic_increasing
    order = ("The measured means increase with every step of k, as the order statistic says they must."
             if monotone else
             "The measured means do not increase at every step of k: with this many writes the sampling "
             "noise of the drawn delays is larger than the step between neighbouring quorums.")
    return f"""## 1. Write latency grows with the quorum

![Mean write latency vs quorum]({figures['latency']})

The leader answers a write once k followers have confirmed it (and its own log is durable). Each
follower's send first sleeps its own delay, drawn independently and uniformly from
[{lo}, {hi}] ms, so the k-th confirmation cannot come before the **k-th smallest of the N = {n}
drawn delays**. That is an order statistic, and the expected k-th smallest of N uniform draws is
MIN + (MAX − MIN)·k/(N + 1): {', '.join(f"k = {int(r['quorum'])}: {ms(r['theory_ms'])}" for r in stats.to_dict('records'))}.
Every extra confirmation waits for one more, slower, follower; the latency climbs by the gap
between consecutive order statistics, not by a fixed cost per follower.

{table}

{growth} {order}

How far the measurement sits from the theory splits exactly into two parts, because for every
write latency = k-th smallest drawn delay + overhead: (mean k-th drawn delay − theory), which is
sampling noise of the simulated delays, plus the mean overhead, which is real cost.

{chr(10).join(lines)}
"""


def deviation_sentence(row: dict, meta: dict) -> str:
    """One bullet: measured vs theory, split into draw noise and overhead, with a noise verdict."""
    q = int(row["quorum"])
    noise = row["kth_mean_ms"] - row["theory_ms"]
    z = noise / row["kth_se_ms"] if row["kth_se_ms"] > 0 else 0.0
    verdict = ("within two standard errors, i.e. ordinary sampling noise" if abs(z) <= 2 else
               "more than two standard errors, an unusually lucky or unlucky set of draws")
    return (f"- k = {q}: measured {ms(row['latency_mean_ms'])} vs theory {ms(row['theory_ms'])} "
            f"({signed(row['latency_mean_ms'] - row['theory_ms'])}). The drawn k-th smallest delays "
            f"averaged {ms(row['kth_mean_ms'])} ({signed(noise)}, {abs(z):.1f} standard errors of "
            f"{ms(row['kth_se_ms'])} for {int(row['writes'] - row['failed'])} writes: {verdict}); "
            f"overhead added {signed(row['overhead_mean_ms'])}.")


def section_distribution(stats: pd.DataFrame, figures: dict) -> str:
    table = md_table(stats, [
        ("quorum", "k", str), ("latency_min_ms", "min", ms), ("latency_median_ms", "median", ms),
        ("latency_max_ms", "max", ms), ("latency_std_ms", "std dev", ms), ("theory_std_ms", "theoretical std dev", ms),
    ])
    widest_theory = stats.loc[stats["theory_std_ms"].idxmax()]
    widest_measured = stats.loc[stats["latency_std_ms"].idxmax()]
    return f"""## 2. Latency distribution per quorum

![Latency distribution per quorum]({figures['distribution']})

{table}

The k-th smallest of N uniform delays has variance (MAX − MIN)²·k(N + 1 − k)/((N + 1)²(N + 2)):
the extremes (k = 1, the fastest follower; k = N, the slowest) are pinned near one end of the range,
the middle quorums spread the most. Among the quorums run, theory puts the widest spread at
k = {int(widest_theory['quorum'])} ({ms(widest_theory['theory_std_ms'])}); the measured standard deviation
is largest at k = {int(widest_measured['quorum'])} ({ms(widest_measured['latency_std_ms'])}). {skew_text(stats)}
"""


def skew_text(stats: pd.DataFrame) -> str:
    """Where the mass sits: median vs mean at the smallest and the largest quorum run."""
    parts = []
    for row in (stats.iloc[0], stats.iloc[-1]) if len(stats) > 1 else (stats.iloc[0],):
        med, mean = row["latency_median_ms"], row["latency_mean_ms"]
        tail = "a long tail towards MAX" if med < mean else "a long tail towards MIN"
        parts.append(f"at k = {int(row['quorum'])} the median ({ms(med)}) is "
                     f"{'below' if med < mean else 'above'} the mean ({ms(mean)}): {tail}")
    return ("Skew: " + "; ".join(parts) + ". Waiting for the fastest of N bunches the latencies near "
            "MIN; waiting for the slowest bunches them near MAX.")


def section_overhead(stats: pd.DataFrame, meta: dict, figures: dict) -> str:
    table = md_table(stats, [
        ("quorum", "k", str), ("overhead_min_ms", "min", ms), ("overhead_median_ms", "median", ms),
        ("overhead_mean_ms", "mean", ms), ("overhead_p95_ms", "p95", ms), ("overhead_max_ms", "max", ms),
        ("confirmations_mean", "mean confirmations at answer", lambda v: f"{v:.2f}"),
    ])
    first, last = stats.iloc[0], stats.iloc[-1]
    low, high = stats["overhead_median_ms"].min(), stats["overhead_median_ms"].max()
    direction = trend(first["overhead_median_ms"], last["overhead_median_ms"], tolerance=max(1.0, 0.2 * low))
    share = (stats["overhead_mean_ms"] / stats["latency_mean_ms"] * 100)
    negative = stats["overhead_min_ms"].min()
    sign = ("is never negative" if negative >= 0 else
            f"dips to {ms(negative)} at worst, within clock resolution of zero")
    above = int(stats["above_quorum"].sum())
    extra_confirmations = (f" {above} write(s) were answered with more than k confirmations: several "
                           f"confirmations were handled in the same turn of the leader's loop before the "
                           f"waiting write resumed." if above else
                           " Every write was answered with exactly k confirmations.")
    rising = ("" if direction != "rises" else
              " It grows with k because the k-th confirmation is the slowest of k (delay + round trip) "
              "sums: the more confirmations a write waits for, the more chances that one slow round trip "
              "or fsync becomes the critical one.")
    return f"""## 3. Overhead: what the simulated delay does not explain

![Overhead per quorum]({figures['overhead']})

{table}

Overhead = latency − k-th smallest drawn delay. It {sign} (minimum {ms(negative)}), as it must be: no
write can hold k confirmations before k delays have run out. The median overhead per quorum lies
between {ms(low)} and {ms(high)}; from k = {int(first['quorum'])} to k = {int(last['quorum'])} it
{direction} ({ms(first['overhead_median_ms'])} → {ms(last['overhead_median_ms'])}).{rising} Relative to the
mean latency, overhead is {share.min():.1f}%–{share.max():.1f}% of it. {load_text(stats, meta)}

Where it comes from, in the order a write experiences it: the client's HTTP request to the leader
(a fresh TCP connection and JSON encoding, in Python), the leader appending the entry and starting
its own fsync (FSYNC={meta['fsync']}; it runs in parallel with the delays, so it only shows when the
k-th delay is shorter than the fsync); the timer that ends the simulated delay; the POST of the entry
to the follower; the follower's fsync before it confirms (every confirmation means "durable"); the
answer back and the quorum bookkeeping. All of it runs on single-threaded Python event loops that
are shared: with {meta['concurrency']} writes in flight the leader juggles up to
{meta['concurrency'] * meta['followers']} sends at once, so a callback may wait for others to finish. The
tail (p95 up to {ms(stats['overhead_p95_ms'].max())}, max {ms(stats['overhead_max_ms'].max())}) comes from
moments when several requests, timers and fsyncs compete for the same loops and cores.{container_note(meta)}{extra_confirmations}
"""


def cpu_note(meta: dict) -> str:
    cpus = meta.get("cpus")
    local = any(h in meta.get("leader_url", "") for h in ("127.0.0.1", "localhost"))
    return f" (client and six nodes share this machine's {cpus} CPU core(s))" if cpus and local else ""


def container_note(meta: dict) -> str:
    """Containers add costs of their own to every request; say so when the run used them."""
    if not str(meta.get("cluster", "")).startswith("Docker Compose"):
        return ""
    return (" The nodes ran in containers: the client's requests pass Docker's port publishing, and "
            "every send from the leader crosses the bridge network on a fresh TCP connection (the "
            "follower's service name is resolved through Docker's DNS at most every 2 s), which makes "
            "each hop dearer than between local processes.")


def load_text(stats: pd.DataFrame, meta: dict) -> str:
    """Overhead against load: a faster quorum pushes more requests per second through one loop."""
    busiest = stats.loc[stats["writes_per_s"].idxmax()]
    worst = stats.loc[stats["overhead_median_ms"].idxmax()]
    rates = ", ".join(f"k = {int(r['quorum'])}: {r['writes_per_s']:.1f}" for r in stats.to_dict("records"))
    per_write = 1 + meta["followers"]
    head = (f"Write rates (writes/s, with {meta['concurrency']} in flight): {rates}; each write is "
            f"{per_write} HTTP requests through the leader (its own and one send per follower).")
    medians = stats["overhead_median_ms"]
    if len(stats) > 1 and medians.max() - medians.min() <= max(3.0, 0.25 * medians.min()):
        slowest = stats["writes_per_s"].min()
        return (f"{head} The median overhead hardly moves with k ({medians.min():.1f}–{medians.max():.1f} ms) "
                f"while the rate changes {busiest['writes_per_s'] / slowest:.1f}-fold, so at this load the "
                f"overhead is a cost per request, not queueing behind other requests.")
    if len(stats) > 1 and int(busiest["quorum"]) == int(worst["quorum"]):
        return (f"{head} The highest median overhead, at k = {int(worst['quorum'])}, coincides with the "
                f"highest rate, which fits queueing: the shorter the quorum wait, the sooner the "
                f"{meta['concurrency']} clients come back, and the more requests per second compete for the "
                f"same single-threaded loops{cpu_note(meta)}.")
    return (f"{head} The highest median overhead (k = {int(worst['quorum'])}) does not coincide with the "
            f"highest rate (k = {int(busiest['quorum'])}), so load alone does not explain the differences.")


def section_consistency(cstats: pd.DataFrame, stats: pd.DataFrame, meta: dict, figures: dict) -> str:
    n = meta["followers"]
    table = md_table(cstats, [
        ("quorum", "k", str), ("identical", f"followers equal to leader (of {n})", str),
        ("keys_differing_mean", "keys differing (mean)", lambda v: f"{v:.1f}"),
        ("keys_differing_max", "keys differing (max)", str),
        ("entries_behind_mean", "entries behind (mean)", lambda v: f"{v:.1f}"),
        ("entries_behind_max", "entries behind (max)", str),
        ("waiting_for_gap", "durable, waiting for a gap", str),
        ("sends_pending_est", "sends not yet landed (from delays)", str),
        ("converge_max_s", "slowest convergence", sec), ("predicted_max_s", "last send lands", sec),
        ("logs_equal", "logs equal", lambda v: "yes" if v else "NO"),
    ])
    below = cstats[cstats["quorum"] < n]
    parts = [f"""## 4. Replicas right after the writes, and convergence

![Staleness and convergence]({figures['consistency']})

Each follower was read (`GET /all`, `GET /status`) right after the last write of the quorum had
returned (requests sent at most {ms(cstats['snapshot_after_ms'].max())} later, all twelve answered within
{ms(cstats['snapshot_done_ms'].max())}), compared with the leader, and then
polled every {meta['poll_interval_s']} s (for at most {meta['converge_timeout_s']:.0f} s) until it held exactly
the leader's data and applied_seq. "Last send lands" is what the drawn delays predict: the moment the
last of that follower's sends finishes its delay, measured from the same instant.

{table}
"""]
    if len(below):
        parts.append(staleness_text(below, stats, meta))
    parts.append(convergence_text(cstats, meta))
    if n in set(cstats["quorum"]):
        parts.append(full_quorum_text(_q(cstats, n), meta))
    return "\n".join(parts)


def staleness_text(below: pd.DataFrame, stats: pd.DataFrame, meta: dict) -> str:
    n = meta["followers"]
    left = stats[stats["quorum"] < n]
    per_q = "; ".join(f"k = {int(r['quorum'])}: {int(r['sends_left_at_answer'])}" for r in left.to_dict("records"))
    prefix_ok, prefix_known = int(below["prefix_ok"].sum()), int(below["prefix_known"].sum())
    gap = int(below["waiting_for_gap"].sum())
    behind, in_flight = int(below["entries_behind_sum"].sum()), int(below["sends_pending_est"].sum())
    compare = (f"The lag ({behind} entries, summed) is larger than the number of sends still in their delay "
               f"({in_flight}): a follower applies strictly in sequence order, so one entry that is still on its "
               f"way holds back every later entry that already arrived" if behind > in_flight else
               f"The lag ({behind} entries, summed) is no larger than the number of sends still in their delay "
               f"({in_flight}), so here almost every unapplied entry had simply not arrived yet")
    prefix = (f"In {prefix_ok} of {prefix_known} follower snapshots at k < {n} the follower held exactly the "
              f"state the leader had after that follower's applied_seq: a consistent prefix of the "
              f"leader's history, older but never a mix."
              if prefix_ok == prefix_known else
              f"Only {prefix_ok} of {prefix_known} follower snapshots at k < {n} matched the leader's "
              f"state at the follower's applied_seq; the others are not a prefix of the leader's history "
              f"and need investigating.")
    return f"""**Why replicas differ right after the writes at k < {n}.** A write returns as soon as k
followers confirmed it; the other N − k sends are still sleeping their own delays and are delivered
afterwards in the background. Summed over each quorum's writes, this many sends were still
outstanding when the client got its answer — {per_q}. When the last write returned, the drawn
delays put {in_flight} sends (all followers, all k < {n}) still in their delay, so the followers
lagged by {below['entries_behind_mean'].min():.1f}–{below['entries_behind_mean'].max():.1f} entries on average
per quorum and showed {int(below['keys_missing'].sum())} missing and {int(below['keys_stale'].sum())} stale
keys in total (missing only for a key whose first write had not been applied yet, stale when an older
value was still shown). {compare}. At the snapshot {gap} entries were durable on a follower but not applied,
waiting for such a gap: "confirmed durable" and "visible" are different moments. {prefix}
"""


def convergence_text(cstats: pd.DataFrame, meta: dict) -> str:
    total, converged = int(cstats["followers"].sum()), int(cstats["converged"].sum())
    worst = cstats.loc[cstats["converge_max_s"].idxmax()] if converged else None
    if converged < total:
        head = (f"**Convergence.** Only {converged} of {total} follower runs matched the leader within "
                f"{meta['converge_timeout_s']:.0f} s; the others did not converge, see consistency.csv.")
    else:
        head = (f"**Convergence.** All {total} follower runs matched the leader again, without any further "
                f"write: the slowest took {sec(worst['converge_max_s'])} (k = {int(worst['quorum'])}), where "
                f"the drawn delays had its last send landing after {sec(worst['predicted_max_s'])}. "
                f"{margin_text(cstats, meta)} {converge_trend_text(cstats)}")
    logs = ("The six replication logs held the same set of entries (keyed by seq, with equal contents) "
            "after every quorum."
            if cstats["logs_equal"].all() else
            "The replication logs were NOT all equal after every quorum; see the logs columns of consistency.csv.")
    return f"{head} {logs} (Log comparison: {meta['log_comparison_source']}.)\n"


def margin_text(cstats: pd.DataFrame, meta: dict) -> str:
    """Measured convergence vs the moment the last send's delay ran out, for followers that lagged."""
    late = int(cstats["late_followers"].sum())
    if not late:
        return "No follower lagged at the snapshot, so there was nothing to wait for."
    lo, hi = cstats["margin_min_s"].min(), cstats["margin_max_s"].max()
    where = ("after" if lo >= 0 else "around")
    return (f"For the {late} followers that lagged at the snapshot, convergence was observed "
            f"{sec(lo)} to {sec(hi)} {where} their last send's delay ran out: the poll interval "
            f"({meta['poll_interval_s']} s), the send's own HTTP round trip and fsync, and the apply of the "
            f"entries that waited behind it. Nothing but those background sends was needed.")


def converge_trend_text(cstats: pd.DataFrame) -> str:
    """Why convergence is faster at higher k: the client already waited out more of the delays."""
    if len(cstats) < 2:
        return ""
    first, last = cstats.iloc[0], cstats.iloc[-1]
    direction = trend(first["converge_max_s"], last["converge_max_s"], tolerance=0.05)
    return (f"From k = {int(first['quorum'])} to k = {int(last['quorum'])} the slowest convergence {direction} "
            f"({sec(first['converge_max_s'])} → {sec(last['converge_max_s'])}): the larger k, the more of each "
            f"write's delays the client has already waited out when it gets its answer, so less background "
            f"work remains after the last write.")


def full_quorum_text(row: dict, meta: dict) -> str:
    n = meta["followers"]
    if row["identical"] == row["followers"]:
        return (f"**At k = {n}** every write waited for all {n} followers to confirm the entry durable, and "
                f"a follower confirms only after applying whatever became applicable, so right after the "
                f"last write all {int(row['followers'])} followers already matched the leader: "
                f"{int(row['keys_differing_max'])} keys differing, {int(row['entries_behind_max'])} entries "
                f"behind, {int(row['waiting_for_gap'])} entries waiting for a gap. (Applied can lag durable "
                f"in general — an entry that arrives before its predecessor is durable but not visible — but "
                f"once every entry is confirmed by every follower there is no gap left.)\n")
    return (f"**At k = {n}** {int(row['followers'] - row['identical'])} of {int(row['followers'])} followers did "
            f"not match the leader right after the last write although every entry was confirmed by all "
            f"{n}: {int(row['keys_differing_max'])} keys differing at most, {int(row['entries_behind_max'])} "
            f"entries behind at most, {int(row['waiting_for_gap'])} entries durable but waiting for a gap. "
            f"\"Confirmed\" means durable, not applied: these entries were on disk but not yet visible, "
            f"and they converged within {sec(row['converge_max_s'])}.\n")


def section_breaking(cstats: pd.DataFrame, stats: pd.DataFrame, quorum_info: list[dict]) -> str:
    ooo = "; ".join(f"k = {int(r['quorum'])}: {int(r['out_of_order'])}" for r in cstats.to_dict("records"))
    div = "; ".join(f"k = {int(r['quorum'])}: {int(r['arrival_divergent'])} keys on "
                    f"{int(r['arrival_divergent_followers'])} followers" for r in cstats.to_dict("records"))
    last = quorum_info[-1]
    inversions, ties, entries = last.get("ts_inversions"), last.get("ts_ties"), last.get("leader_log_records")
    lww = (f"In the leader's log after the last quorum ({entries} entries), the timestamps went backwards "
           f"{inversions} times and repeated {ties} times between consecutive sequence numbers."
           if inversions is not None else "The leader's log timestamps were not examined.")
    outstanding = int(stats["sends_left_at_answer"].sum())
    return f"""## 5. What would break convergence, and why it does not happen here

* **Applying in arrival order.** Sends overtake each other: counting records that reached a follower's
  log after a record with a higher seq gives {ooo} (summed over the followers). Replaying each
  follower's log in arrival order instead of sequence order leaves a final state different from the
  leader's — {div}. Those followers would never converge, since no later message corrects them.
  Here a follower appends in arrival order but *applies* only in sequence order.
* **Last-write-wins on timestamps.** {lww} A single leader stamping with its wall clock makes LWW
  work only while that clock never steps back and never ties; with a clock step (NTP), a tie, or more
  than one writer, LWW picks a winner that is not the last write and replicas that saw different
  candidates can disagree for good. The sequence number is assigned by one counter with no gaps and
  decides the order everywhere.
* **Cancelled or lost background sends.** Over the whole study {outstanding} sends were still on their
  way when the client had its answer. Cancelling them once the quorum is met would leave those
  followers without the entry — and, because application is in sequence order, stuck behind the
  hole for every later entry. Here sends are never cancelled (the quorum wait ends, the sends do
  not), a failing send is retried with backoff, and whatever is still lost is pulled: every
  follower asks the leader's `/log` for missing entries at start-up and on every catch-up tick.

Sequence numbers, in-order application, never-cancelled sends and the pull catch-up together make
every replica apply the same entries in the same order, which is why all followers converged above.
"""


def render(writes: pd.DataFrame, consistency: pd.DataFrame, quorum_info: list[dict], meta: dict,
           figures: dict, stats: pd.DataFrame, cstats: pd.DataFrame) -> str:
    """The full REPORT.md text."""
    return "\n".join([
        section_setup(meta),
        section_latency(stats, meta, figures),
        section_distribution(stats, figures),
        section_overhead(stats, meta, figures),
        section_consistency(cstats, stats, meta, figures),
        section_breaking(cstats, stats, quorum_info),
    ])


def write_outputs(writes: pd.DataFrame, consistency: pd.DataFrame, quorum_info: list[dict], meta: dict,
                  out_dir: str) -> dict[str, str]:
    """CSV, summary.json, figures and REPORT.md into ``out_dir``.

    Returns name -> path: writes, consistency, summary, report, figure_latency, figure_distribution,
    figure_overhead, figure_consistency.
    """
    from analysis.plots import plot_all

    os.makedirs(out_dir, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("finished_at", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    stats, cstats = quorum_stats(writes, meta), consistency_stats(consistency)
    paths = {"writes": os.path.join(out_dir, "writes.csv"), "consistency": os.path.join(out_dir, "consistency.csv"),
             "summary": os.path.join(out_dir, "summary.json"), "report": os.path.join(out_dir, "REPORT.md")}
    writes.to_csv(paths["writes"], index=False)
    consistency.to_csv(paths["consistency"], index=False)
    with open(paths["summary"], "w") as f:
        json.dump(summarise(stats, cstats, quorum_info, meta), f, indent=2)
    figures = plot_all(writes, consistency, stats, meta, out_dir)
    with open(paths["report"], "w") as f:
        f.write(render(writes, consistency, quorum_info, meta, figures, stats, cstats))
    paths.update({f"figure_{k}": os.path.join(out_dir, v) for k, v in figures.items()})
    return paths
