"""The leader's rules (node.core.leading, shipping, quorum, progress) driven by the tables in
testdata/leader_*.txt, with an injected clock and scripted delays: no loop, no sockets.

Commands (times in ms):
    init followers=f1,f2 quorum=1 timeout=1000 linger=0 batch_bytes=1048576
    write delays=5,10 at=0 [size=N]    number and append an entry; its delay to each follower
    ready at=T                          what to send now, which writes timed out, next deadline
    answer f1 applied=N at=T            f1 confirmed its request; the writes it acknowledged
    fail f1 at=T                        f1's request got no answer
    refuse f1 at=T                      f1 refused its request (a 4xx)
    pulled f1 after=N                   f1 pulled from /log after N
    status                              per follower: match, entries waiting, request out, backoff
"""

from __future__ import annotations

import pytest

from node.core.leading import LeaderCore
from tests.core.datadriven import Case, files, run_file


class ScriptedDelays:
    """Stands in for random.Random: ``uniform`` returns the delays the table gives."""

    def __init__(self) -> None:
        self.next: list[float] = []

    def uniform(self, low: float, high: float) -> float:
        return self.next.pop(0)


def fmt_time(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds * 1000:g}"


class LeaderTable:
    def __init__(self) -> None:
        self.core: LeaderCore | None = None
        self.delays = ScriptedDelays()

    def run(self, case: Case) -> str:
        return getattr(self, case.command.replace("-", "_"))(case)

    def init(self, case: Case) -> str:
        followers = case.arg("followers").split(",")
        self.core = LeaderCore(followers, int(case.arg("quorum", "1")), int(case.arg("timeout", "1000")),
                               0, 0, linger_us=int(case.arg("linger", "0")),
                               max_batch_bytes=int(case.arg("batch_bytes", str(1 << 20))), rng=self.delays)
        return "ok"

    def write(self, case: Case) -> str:
        self.delays.next = [float(d) for d in case.arg("delays").split(",")]
        entry = self.core.number("set", "k", 1, ts=0.0)
        payload = b"x" * int(case.arg("size", "10"))
        delays = self.core.append(entry, payload, case.ms())
        return f"seq={entry.seq} " + " ".join(f"{f}+{d:g}" for f, d in delays.items())

    def ready(self, case: Case) -> str:
        ready = self.core.ready(case.ms())
        lines = [f"send {b.address} {b.seqs}" for b in ready.sends]
        lines += [f"timeout seq={t.seq} confirmations={t.confirmations}/{t.quorum}" for t in ready.timed_out]
        lines.append(f"next {fmt_time(self.core.next_deadline())}")
        return "\n".join(lines)

    def answer(self, case: Case) -> str:
        acked = self.core.answered(case.words[0], int(case.arg("applied", "0")), case.words[0], case.ms())
        return "\n".join(f"ack seq={seq} confirmations={n}" for seq, n in acked) or "no write acknowledged"

    def fail(self, case: Case) -> str:
        self.core.failed(case.words[0], "connection refused", case.ms())
        return self.status(case)

    def refuse(self, case: Case) -> str:
        self.core.refused(case.words[0], "HTTP 409: conflict", case.ms())
        return self.status(case)

    def pulled(self, case: Case) -> str:
        self.core.pulled(case.words[0], int(case.arg("after")))
        return self.status(case)

    def status(self, case: Case) -> str:
        lines = []
        for address, channel in self.core.channels.items():
            p = channel.progress
            parts = [f"{address}: match={p.match}", f"waiting={len(channel)}",
                     f"out={channel.out.seqs if channel.out else None}"]
            if channel.backoff_until is not None:
                parts.append(f"backoff-until={fmt_time(channel.backoff_until)}")
            if p.last_error:
                parts.append(f"error={p.last_error!r}")
            lines.append(" ".join(parts))
        return "\n".join(lines + [f"in-flight={self.core.in_flight}"])


@pytest.mark.parametrize("path", files("leader_"), ids=lambda p: p.stem)
def test_leader_rules(path):
    run_file(path, LeaderTable().run)
