"""The chaos plan: every random choice of a run, drawn from one seed before the run starts.

Why up front: a failing run must be replayable, so what to break, when, and for how long, and
what the clients submit and when, all come from `random.Random(seed)`. What cannot be planned
(which node happens to lead at that moment) is recorded as the run goes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

KILL_LEADER = "kill_leader"
KILL_FOLLOWER = "kill_follower"
KILL_DRONE_BUILD = "kill_drone_build"
KILL_DRONE_UPLOAD = "kill_drone_upload"
POWER_LOSS = "power_loss"
PAUSE_LEADER = "pause_leader"
PARTITION_LEADER = "partition_leader"
KINDS = (KILL_LEADER, KILL_FOLLOWER, KILL_DRONE_BUILD, KILL_DRONE_UPLOAD, POWER_LOSS, PAUSE_LEADER,
         PARTITION_LEADER)
#: Never planned: what a planned power loss is recorded as when an orchestrator was still down
#: (faults.Injector._power_loss), so a run never counts two of three as a power loss.
PARTIAL_POWER_LOSS = "partial_power_loss"
#: Faults after which the cluster has to find a leader again (recovery is measured for these).
LEADER_LOSS = (KILL_LEADER, POWER_LOSS, PARTIAL_POWER_LOSS, PAUSE_LEADER, PARTITION_LEADER)

#: Every run has at least these: the leader is killed several times, everything else once.
MANDATORY = (KILL_LEADER, KILL_LEADER, KILL_LEADER, KILL_FOLLOWER, KILL_DRONE_BUILD, KILL_DRONE_UPLOAD,
             POWER_LOSS, PAUSE_LEADER, PARTITION_LEADER)
#: Weights of the extra faults of a longer run.
WEIGHTS = {KILL_LEADER: 3, KILL_FOLLOWER: 2, KILL_DRONE_BUILD: 2, KILL_DRONE_UPLOAD: 2, POWER_LOSS: 1,
           PAUSE_LEADER: 2, PARTITION_LEADER: 2}
#: How long a fault lasts (restart delay, pause, partition), in seconds. A pause and a
#: partition outlast leader_fallback (1.5 s) and the election timeout (0.6 s) of FAST_RAFT.
HOLD = {KILL_LEADER: (0.5, 4.0), KILL_FOLLOWER: (0.5, 5.0), KILL_DRONE_BUILD: (0.5, 5.0),
        KILL_DRONE_UPLOAD: (0.5, 5.0), POWER_LOSS: (0.5, 3.0), PAUSE_LEADER: (1.8, 4.5),
        PARTITION_LEADER: (2.5, 6.0)}
SECONDS_PER_FAULT = 8.0
PACKAGES_PER_MINUTE = 200
CATEGORIES = ("app-misc", "dev-libs", "sys-apps", "net-misc", "dev-util")
SHARED_PER_BATCH = 4      # packages a batch of the second client repeats from the first client
DEP_SHARE = 0.2           # share of a batch's packages that depend on an earlier one of the batch
CLIENTS = ("client-a", "client-b")


@dataclass(frozen=True)
class Fault:
    at: float      # seconds after the workload starts
    kind: str
    hold: float    # seconds until the node is restarted / resumed / reconnected


@dataclass(frozen=True)
class Batch:
    client: str
    at: float
    packages: tuple[str, ...]                               # atoms, =cat/pkg-ver
    deps: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    seed: int
    seconds: float
    faults: tuple[Fault, ...]
    batches: tuple[Batch, ...]

    def deps(self) -> dict[str, list[str]]:
        """Planned dependency edges between queue keys (atoms without the leading '=')."""
        return {a.lstrip("="): [d.lstrip("=") for d in ds] for b in self.batches for a, ds in b.deps.items()}

    def describe(self) -> str:
        lines = [f"plan for seed {self.seed}: {len(self.faults)} faults in {self.seconds:.0f} s, "
                 f"{len(self.batches)} batches of {sum(len(b.packages) for b in self.batches)} atoms"]
        lines += [f"  t+{f.at:6.1f}s  {f.kind:<18} hold {f.hold:.1f}s" for f in self.faults]
        lines += [f"  t+{b.at:6.1f}s  submit {len(b.packages):3d} from {b.client}" for b in self.batches]
        return "\n".join(lines)


def make_plan(seed: int, minutes: float, packages: int | None = None) -> Plan:
    """The whole schedule of a run of `minutes` of faults."""
    rng = random.Random(seed)
    seconds = max(30.0, minutes * 60.0)
    total = packages or max(150, round(PACKAGES_PER_MINUTE * minutes))
    faults = _faults(rng, seconds)
    batches = _batches(rng, seconds, total)
    return Plan(seed, seconds, tuple(faults), tuple(batches))


def _faults(rng: random.Random, seconds: float) -> list[Fault]:
    count = max(len(MANDATORY), round(seconds / SECONDS_PER_FAULT))
    kinds = list(MANDATORY) + rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=count - len(MANDATORY))
    rng.shuffle(kinds)
    start, slot = 3.0, (seconds - 3.0) / count
    return [Fault(round(start + i * slot + rng.uniform(0.1, 0.9) * slot, 2), kind,
                  round(rng.uniform(*HOLD[kind]), 2)) for i, kind in enumerate(kinds)]


def _batches(rng: random.Random, seconds: float, total: int) -> list[Batch]:
    """Several batches per client over the first 80% of the run, so the drones stay busy while
    faults hit; the second client repeats a few packages of the first (built once)."""
    count = max(4, 2 * round(seconds / 30))
    atoms = [_atom(rng, n) for n in range(total)]
    sizes = _split(rng, total, count)
    window = seconds * 0.8
    out, used = [], 0
    for i, size in enumerate(sizes):
        own = atoms[used:used + size]
        used += size
        client = CLIENTS[i % 2]
        shared = rng.sample(atoms[:used - size], min(SHARED_PER_BATCH, used - size)) if client == CLIENTS[1] else []
        at = 0.0 if i == 0 else round(rng.uniform(0, window), 2)
        out.append(Batch(client, at, tuple(own + shared), _deps(rng, own)))
    return sorted(out, key=lambda b: b.at)


def _split(rng: random.Random, total: int, count: int) -> list[int]:
    cuts = sorted(rng.sample(range(1, total), count - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def _atom(rng: random.Random, n: int) -> str:
    return f"={rng.choice(CATEGORIES)}/chaos{n}-1.{rng.randint(0, 9)}"


def _deps(rng: random.Random, atoms: list[str]) -> dict[str, list[str]]:
    return {atom: [rng.choice(atoms[:i])] for i, atom in enumerate(atoms) if i and rng.random() < DEP_SHARE}
