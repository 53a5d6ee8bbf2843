"""The rules of replication, as plain objects: no sockets, no files, no event loop, no clock.

Each object is driven by events that carry the time (``now``, seconds on a monotonic clock)
and answers with what to do; the adapters in ``node.leader`` and ``node.follower`` do it with
Tornado, the log file and the IOLoop's timers. That is why every rule here can be tested with
tables and an injected clock (``tests/core/``), as etcd's raft is.

- ``quorum``: when a write is acknowledged (W distinct durable confirmations) or timed out.
- ``progress``: what the leader knows of one follower.
- ``shipping``: one follower's channel: delay due-times, batching and linger, one request
  out at a time, retry backoff, down-after.
- ``leading``: the leader's rules: numbering, the entries, the channels, the quorum.
- ``following``: the follower's rules: accept (durable on arrival, conflicting entries
  refused), apply in sequence order, when to pull from the leader.
"""
