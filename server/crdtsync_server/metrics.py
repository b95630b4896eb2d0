"""Relay counters, exposed as Prometheus text on ``GET /metrics``."""

from __future__ import annotations

import attrs

from crdtsync.core.protocol import Ack, Conflict, Rejected, Unresolvable, Verdict

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: The stages of a push, in order, each counted in ``crdtsync_push_stage_seconds_total``:
#: ``decode`` (the session decoding a push frame), ``load`` (opening the transaction, the
#: retransmission check, loading each record, its cached state and access facts),
#: ``decide`` (:func:`~.merge.decide`), ``store`` (writing accepted changes: record, log,
#: uniques, client ids; a refusal's bookkeeping), ``commit`` (ending the transaction: the
#: log position and the commit's fsync), ``fanout`` (:meth:`~.fanout.FanOut.changes`).
#: ``load`` + ``decide`` + ``store`` + ``commit`` is ``crdtsync_merge_seconds_sum``.
PUSH_STAGES = ("decode", "load", "decide", "store", "commit", "fanout")
_VERDICT_NAMES = {
    Ack: "accepted",
    Conflict: "conflicted",
    Unresolvable: "unresolvable",
    Rejected: "errored",
}


@attrs.define
class Metrics:
    """What the relay counts. Plain attributes; rendered by :meth:`render`."""

    connections: int = 0
    changes: dict[str, int] = attrs.field(
        factory=lambda: {"accepted": 0, "conflicted": 0, "unresolvable": 0, "errored": 0}
    )
    frames_rejected: int = 0
    #: accepted changes decided by prediction (the common edit, see fastpath.py)
    changes_predicted: int = 0
    #: push frames decided again change by change after yrs did not do what was predicted
    frames_mispredicted: int = 0
    frames_rate_limited: int = 0
    connections_refused: int = 0
    merge_seconds_sum: float = 0.0
    merge_count: int = 0
    merge_buckets: list[int] = attrs.field(factory=lambda: [0] * len(_BUCKETS))
    #: seconds spent in each stage of the push path (:data:`PUSH_STAGES`), all frames
    push_stage_seconds: dict[str, float] = attrs.field(
        factory=lambda: dict.fromkeys(PUSH_STAGES, 0.0)
    )

    def count(self, outcome: str, n: int = 1) -> None:
        self.changes[outcome] = self.changes.get(outcome, 0) + n

    def count_verdict(self, verdict: Verdict) -> None:
        self.count(_VERDICT_NAMES[type(verdict)])

    def observe_merge(self, seconds: float, changes: int) -> None:
        """One push frame of ``changes`` changes took ``seconds`` to decide and commit."""
        if changes <= 0:
            return
        per_change = seconds / changes
        self.merge_seconds_sum += seconds
        self.merge_count += changes
        for i, bound in enumerate(_BUCKETS):
            if per_change <= bound:
                self.merge_buckets[i] += changes

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One push frame spent ``seconds`` in ``stage`` (one of :data:`PUSH_STAGES`)."""
        self.push_stage_seconds[stage] += seconds

    def observe_push(self, load: float, decide: float, store: float, commit: float) -> None:
        """One push frame's seconds in the stages of its transaction."""
        stages = self.push_stage_seconds
        stages["load"] += load
        stages["decide"] += decide
        stages["store"] += store
        stages["commit"] += commit

    def render(self) -> str:
        lines = [
            "# HELP crdtsync_connections Open replica connections.",
            "# TYPE crdtsync_connections gauge",
            f"crdtsync_connections {self.connections}",
            "# HELP crdtsync_changes_total Pushed changes by verdict.",
            "# TYPE crdtsync_changes_total counter",
        ]
        lines += [
            f'crdtsync_changes_total{{verdict="{name}"}} {count}'
            for name, count in sorted(self.changes.items())
        ]
        lines += [
            "# HELP crdtsync_changes_predicted_total Accepted changes decided by prediction "
            "(the common edit: plain fields overwritten).",
            "# TYPE crdtsync_changes_predicted_total counter",
            f"crdtsync_changes_predicted_total {self.changes_predicted}",
            "# HELP crdtsync_frames_mispredicted_total Push frames decided again change by "
            "change because a prediction did not hold.",
            "# TYPE crdtsync_frames_mispredicted_total counter",
            f"crdtsync_frames_mispredicted_total {self.frames_mispredicted}",
            "# HELP crdtsync_frames_rejected_total Frames refused as malformed.",
            "# TYPE crdtsync_frames_rejected_total counter",
            f"crdtsync_frames_rejected_total {self.frames_rejected}",
            "# HELP crdtsync_frames_rate_limited_total Frames dropped over the per-connection "
            "rate limit.",
            "# TYPE crdtsync_frames_rate_limited_total counter",
            f"crdtsync_frames_rate_limited_total {self.frames_rate_limited}",
            "# HELP crdtsync_connections_refused_total Websocket upgrades refused (HTTP 503) "
            "over max_connections.",
            "# TYPE crdtsync_connections_refused_total counter",
            f"crdtsync_connections_refused_total {self.connections_refused}",
            "# HELP crdtsync_merge_seconds Time to decide and commit one change.",
            "# TYPE crdtsync_merge_seconds histogram",
        ]
        lines += [
            f'crdtsync_merge_seconds_bucket{{le="{bound}"}} {count}'
            for bound, count in zip(_BUCKETS, self.merge_buckets, strict=True)
        ]
        lines += [
            f'crdtsync_merge_seconds_bucket{{le="+Inf"}} {self.merge_count}',
            f"crdtsync_merge_seconds_sum {self.merge_seconds_sum}",
            f"crdtsync_merge_seconds_count {self.merge_count}",
            "# HELP crdtsync_push_stage_seconds_total Time spent in each stage of the push "
            "path (decode, load, decide, store, commit, fanout).",
            "# TYPE crdtsync_push_stage_seconds_total counter",
        ]
        lines += [
            f'crdtsync_push_stage_seconds_total{{stage="{stage}"}} {seconds}'
            for stage, seconds in self.push_stage_seconds.items()
        ]
        return "\n".join(lines) + "\n"
