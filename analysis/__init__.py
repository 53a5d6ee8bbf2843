"""The write-quorum study: how WRITE_QUORUM trades write latency against replica freshness.

    python -m analysis            # against the Docker Compose cluster (ports 8000..8005)
    python -m analysis --local    # against six local processes started by node.cluster

For each quorum k the leader is restarted with ``WRITE_QUORUM=k``, the store is cleared, a
fixed number of writes is sent with a fixed number in flight, replicas are compared with the
leader right after the last write and until they converge, and the six logs are compared.
The results land in ``analysis/results/`` (CSV, JSON, PNG figures and REPORT.md).
"""

FOLLOWER_COUNT = 5
NODE_NAMES = ("leader",) + tuple(f"follower{i}" for i in range(1, FOLLOWER_COUNT + 1))


def add_seeded_workload(group, seed_use: str) -> None:
    """The options of the seeded, delayed workload that the study and the benchmark's delays
    mode share; ``check_workload`` checks them."""
    group.add_argument("--writes", type=int, default=100, help="writes per quorum (default: %(default)s)")
    group.add_argument("--min-delay", type=int, default=0, help="MIN_DELAY in ms (default: %(default)s)")
    group.add_argument("--max-delay", type=int, default=1000, help="MAX_DELAY in ms (default: %(default)s)")
    group.add_argument("--seed", type=int, default=1,
                       help=f"seed of {seed_use} (DELAY_SEED, the same for every quorum) (default: %(default)s)")


def check_workload(parser, args, positive: tuple[str, ...]) -> None:
    """Refuse quorums, delays and counts the nodes or the workload would refuse anyway, before
    any cluster is started for nothing (shared by the study and the benchmark)."""
    if not all(1 <= k <= FOLLOWER_COUNT for k in args.quorums):
        parser.error(f"--quorums must lie in 1..{FOLLOWER_COUNT}")
    if not 0 <= args.min_delay <= args.max_delay:
        parser.error("need 0 <= --min-delay <= --max-delay")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
