"""Statistics of a study run: per-quorum latency and consistency figures, and summary.json.

Computed once from the run's data frames; REPORT.md and the figures only quote these numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.workload import expected_kth, std_kth

BOOTSTRAP_SAMPLES = 2000


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
