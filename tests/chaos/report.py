"""What a chaos run found, as text for people and figures for bench/README.md.

On a violation the text carries everything needed to replay and diagnose it: the seed, the
plan, the faults as they were injected (with their real targets) and the node logs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos import plan as p
from tests.chaos.checks import VIOLATED, WARNING, Verdict


@dataclass
class Report:
    seed: int
    minutes: float
    plan: p.Plan
    cluster_dir: Path
    topology: str = "not started"
    aborted: str = ""
    logs: str = ""
    elapsed: float = 0.0
    records: list = field(default_factory=list)
    submissions: list = field(default_factory=list)
    recoveries: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    release: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)

    def fill(self, records: list, submissions: list, recoveries: list, snapshot: dict, release: str | None,
             verdicts: list[Verdict]) -> None:
        self.records, self.submissions, self.recoveries = records, submissions, recoveries
        self.counts, self.release, self.verdicts = dict(snapshot.get("counts", {})), release, verdicts

    # --- verdict ---------------------------------------------------------------------------------
    @property
    def violations(self) -> list[Verdict]:
        found = [v for v in self.verdicts if v.status == VIOLATED]
        if self.aborted:
            found.append(Verdict("the run completed", VIOLATED, [self.aborted]))
        return found

    @property
    def ok(self) -> bool:
        return not self.violations

    # --- figures ---------------------------------------------------------------------------------
    def injected(self) -> Counter:
        return Counter(r.kind for r in self.records if not r.skipped)

    def skipped(self) -> Counter:
        return Counter(r.kind for r in self.records if r.skipped)

    def worst(self, attr: str, include_overlapped: bool = False) -> float | None:
        values = [getattr(r, attr) for r in self.recoveries
                  if (include_overlapped or not r.overlapped) and not (attr == "to_progress" and r.idle)]
        if any(v is None for v in values):
            return float("inf")
        return max(values, default=None)

    def worst_by_kind(self) -> dict[str, float | None]:
        """Worst "dispatching again" per fault kind: a power loss includes the restart delay and
        start-up of every orchestrator, a kill only an election among the survivors."""
        out: dict[str, float | None] = {}
        for r in self.recoveries:
            if r.idle:
                continue
            value = float("inf") if r.to_progress is None else r.to_progress
            out[r.kind] = max(out.get(r.kind) or 0.0, value)
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "minutes": self.minutes, "topology": self.topology,
            "faults_injected": dict(sorted(self.injected().items())),
            "faults_skipped": dict(sorted(self.skipped().items())),
            "packages": self.counts.get("total", 0),
            "processed": self.counts.get("received", 0) + self.counts.get("failed", 0),
            "received": self.counts.get("received", 0), "failed": self.counts.get("failed", 0),
            "violations": len(self.violations),
            "warnings": sum(1 for v in self.verdicts if v.status == WARNING),
            "worst_to_leader_s": self.worst("to_leader", include_overlapped=True),
            "worst_recovery_s": self.worst("to_progress"),
            "worst_recovery_overlapped_s": self.worst("to_progress", include_overlapped=True),
            "worst_recovery_by_kind_s": self.worst_by_kind(),
            "elapsed_s": round(self.elapsed, 1),
        }

    # --- text ------------------------------------------------------------------------------------
    def text(self, with_logs: bool | None = None) -> str:
        with_logs = (not self.ok) if with_logs is None else with_logs
        parts = [self._head(), self._faults(), self._load(), self._recovery(), self._checks(), self._result()]
        if not self.ok:
            parts.insert(1, self.plan.describe())
        if with_logs:
            parts.append("node logs:\n" + self.logs)
        return "\n\n".join(part for part in parts if part)

    def _head(self) -> str:
        return (f"chaos run: seed {self.seed}, {self.minutes:g} min of faults, topology {self.topology}\n"
                f"cluster directory: {self.cluster_dir}"
                + (f"\nABORTED: {self.aborted}" if self.aborted else ""))

    def _faults(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.injected().items()))
        skipped = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped().items()))
        lines = ["fault schedule (as injected):"] + [f"  {r.line()}" for r in self.records]
        lines.append(f"faults injected by kind: {kinds or 'none'}" + (f"; skipped: {skipped}" if skipped else ""))
        return "\n".join(lines)

    def _load(self) -> str:
        acked = [s for s in self.submissions if s.batch_id]
        retries = sum(s.attempts - 1 for s in acked)
        k = self.counts
        return (f"submissions: {len(self.submissions)} batches from {len(p.CLIENTS)} clients, {len(acked)} "
                f"acknowledged ({retries} retries while the cluster could not commit)\n"
                f"packages: {k.get('total', 0)} in the queue, {k.get('received', 0)} received, "
                f"{k.get('failed', 0)} failed, {k.get('needed', 0)} needed, {k.get('delegated', 0)} delegated; "
                f"release {self.release}")

    def _recovery(self) -> str:
        if not self.recoveries:
            return ""
        lines = ["recovery after leader loss (to a leader of a newer term / to its first new result):"]
        lines += [f"  {r.line()}" for r in self.recoveries]
        lines.append(f"worst: leader {_fmt(self.worst('to_leader', True))}, dispatching again "
                     f"{_fmt(self.worst('to_progress'))} (faults not overlapped), "
                     f"{_fmt(self.worst('to_progress', True))} (all)")
        lines.append("worst by kind: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(self.worst_by_kind().items())))
        return "\n".join(lines)

    def _checks(self) -> str:
        return "checks:\n" + "\n".join("  " + line for v in self.verdicts for line in v.lines())

    def _result(self) -> str:
        n = len(self.violations)
        return (f"result: {'OK' if self.ok else 'FAILED'}, {n} invariant violation(s); seed {self.seed}; "
                f"{self.elapsed:.0f} s")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "never" if value == float("inf") else f"{value:.2f}s"
