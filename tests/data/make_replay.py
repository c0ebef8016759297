"""Write the journal-replay fixture: real PySyncObj data directories made by a 1-node cluster.

Why: a data directory written by one version of swarmmesh must open and replay in the next
(PySyncObj numbers the @replicated methods by their sorted names, an `update` entry carries
[(name, args)] lists, and a snapshot pickles BuildQueue's attributes). The fixture in
tests/data/replay/ was written by this script at commit 8b484ee, before the replicated
commands became typed values; tests/test_replay.py replays it with the current code.

It drives one in-process `Election` (a real SyncObj with its journal and dump files) through
the @replicated methods themselves, the interface every version keeps, with fixed arguments
(times, terms, names), so the state it ends in is the same on every run:

- ``dump/``: the first part of the commands, then a forced log compaction (``raft.dump``),
  then the rest, which stays in ``raft.journal`` as the tail after the dump;
- ``journal/``: the same commands, never compacted: the whole history in ``raft.journal``;
- ``expected.json``: the queue's fingerprint, counts and /swarm snapshot after them, and the
  result of every command (both directories must end in that state).

Run from the repository root:  .venv/bin/python tests/data/make_replay.py tests/data/replay
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from swarmmesh.cluster import init_cluster
from swarmmesh.config import load_config
from swarmmesh.election import Election
from swarmmesh.harness import FAST_RAFT, wait_until

SHA = {name: (c * 64) for name, c in (("base", "a"), ("lib", "b"), ("app", "c"), ("old", "d"), ("lib2", "e"))}


def result(name: str, cpv: str) -> dict:
    """What `complete` carries for a received file (as artifacts.received_result makes it)."""
    category, pf = cpv.split("/")
    return {"sha256": SHA[name], "size": 4096 + len(name), "md5": "0" * 32, "sha1": "1" * 40, "build_id": 1,
            "path": f"{category}/{pf.rsplit('-', 1)[0]}/{pf}-1.gpkg.tar", "holders": ["orch-1"],
            "metadata": {"BUILD_TIME": "1700000000", "USE": "", "SLOT": "0"}}


ITEMS = [("a/base-1", "a/base-1", None), ("a/lib-1", "a/lib-1", "gentoo"), ("a/app-1", "a/app-1", None),
         ("a/tool-1", "a/tool-1", None)]
DEPS = {"a/lib-1": ["a/base-1"], "a/app-1": ["a/lib-1", "a/base-1"], "a/tool-1": ["a/app-1"]}

#: Before the compaction: the commands the dump covers.
BEFORE: list[tuple[str, tuple]] = [
    ("note_leader", (1, "orch-1")),
    ("submit", ("b-0", "old", [("z/old-1", "z/old-1", None)], None, 100.0)),
    ("delegate", ("z/old-1", "d1", 1, 101.0, 161.0)),
    ("complete", ("z/old-1", "d1", 1, result("old", "z/old-1"), 102.0)),
    ("finalize", ("r-0", 103.0, False)),
    ("reset", ()),
    ("submit", ("b-1", "alice", ITEMS, DEPS, 200.0)),
    ("submit", ("b-2", "bob", [("a/app-1", "a/app-1", None), ("b/flaky-1", "b/flaky-1", None)],
                {"b/flaky-1": ["a/base-1"]}, 201.0)),
    ("submit", ("b-1", "alice", ITEMS, DEPS, 202.0)),  # a repeat: duplicate
    ("delegate", ("a/base-1", "d1", 1, 210.0, 270.0)),
    ("delegate", ("a/lib-1", "d1", 1, 210.0, 270.0)),  # waiting for a/base-1
    ("renew", ("d1", 1, 280.0, None)),
    ("renew", ("d1", 1, 290.0, ["a/base-1", "a/nope-1"])),
    ("complete", ("a/base-1", "d1", 1, result("base", "a/base-1"), 220.0)),
    ("hold", (SHA["base"], "orch-2")),
    ("hold", (SHA["base"], "orch-3")),
    ("unhold", (SHA["base"], "orch-3")),
    ("hold", (SHA["app"], "orch-2")),  # unknown file
    ("delegate", ("a/lib-1", "d2", 1, 230.0, 290.0)),
    ("fail", ("a/lib-1", "d2", 1, "emerge exited 1", 231.0, 1, 3)),  # last attempt: a/app-1 fails too
    ("unblock", (["a/lib-1"], 240.0)),
    ("delegate", ("b/flaky-1", "d3", 1, 241.0, 301.0)),
    ("fail", ("b/flaky-1", "d3", 1, "oom", 242.0, 3, 1)),  # attempts left; d3 grounded
    ("delegate", ("b/flaky-1", "d3", 1, 243.0, 303.0)),  # grounded
    ("unblock", (["d3", "x/unknown-1"], 244.0)),
    ("delegate", ("a/lib-1", "d1", 1, 250.0, 310.0)),
    ("requeue", (["a/lib-1", "a/base-1"], "d1 had no free slot", 251.0)),
    ("delegate", ("a/lib-1", "d1", 1, 252.0, 255.0)),
    ("expire", (260.0,)),
    ("delegate", ("b/flaky-1", "d2", 1, 261.0, 321.0)),
    ("release_drone", ("d2", "drone went silent", 262.0)),
    ("finalize", ("r-1", 263.0, False)),  # refused: work pending
    ("finalize", ("r-1", 264.0, True)),
]

#: After the compaction: the journal's tail, with batched entries (`update`).
AFTER: list[tuple[str, Any]] = [
    ("update", [("delegate", ["a/lib-1", "d1", 1, 300.0, 360.0]),
                ("complete", ["a/lib-1", "d1", 1, result("lib", "a/lib-1"), 301.0]),
                ("hold", [SHA["lib"], "orch-2"]),
                ("fingerprint", []),  # not a command: refused inside the batch
                ("delegate", ["a/app-1", "d1", 1, 302.0, 362.0])]),
    ("update", [("renew", ["d1", 1, 370.0, ["a/app-1"]]),
                ("complete", ["a/app-1", "d1", 1, result("app", "a/app-1"), 303.0]),
                ("delegate", ["b/flaky-1", "d1", 1, 304.0, 364.0])]),
    ("fail", ("b/flaky-1", "d1", 1, "oom again", 305.0, 2, 3)),
    ("unblock", (None, 306.0)),
    ("lose", ("a/lib-1", SHA["lib"], "no orchestrator holds its file", 307.0)),
    ("lose", ("a/lib-1", SHA["lib"], "late repeat", 308.0)),  # not received any more
    ("delegate", ("a/lib-1", "d1", 1, 309.0, 369.0)),
    ("complete", ("a/lib-1", "d1", 1, result("lib2", "a/lib-1"), 310.0)),
    ("delegate", ("a/tool-1", "d1", 1, 311.0, 371.0)),
    ("complete", ("a/tool-1", "d4", 1, result("old", "a/tool-1"), 312.0)),  # stale: another drone has it
    ("requeue", (["a/tool-1"], "handed back by d1", 313.0)),
    ("finalize", ("r-2", 314.0, True)),
    ("rollback", ("r-1", "r-3", 315.0)),
    ("rollback", ("r-9", "r-4", 316.0)),  # unknown release
    ("finalize", ("r-2", 317.0, True)),  # duplicate
    ("note_leader", (1, "orch-x")),  # a second leader in term 1: a violation
    ("note_leader", (0, "orch-y")),  # its entry is of term 1: a stale claim
]


def call(election: Election, name: str, args: Any) -> Any:
    """One @replicated call, waited for: (result, PySyncObj's error code)."""
    done = threading.Event()
    got: list[Any] = []

    def callback(res: Any, err: int) -> None:
        got.append((res, err))
        done.set()

    method = getattr(election.state, name)
    if name == "update":
        method(args, callback=callback)
    else:
        method(*args, callback=callback)
    if not done.wait(10):
        raise TimeoutError(f"{name} did not commit in 10 s")
    res, err = got[0]
    if err != 0:
        raise RuntimeError(f"{name} failed: PySyncObj error {err}")
    return res


def compact(election: Election, data: Path) -> None:
    """Force a snapshot and wait until the journal keeps only what follows it."""
    raft = election._raft
    raft.forceLogCompaction()
    wait_until(lambda: (data / "raft.dump").exists() and raft._SyncObj__raftLog[0][1] > 1, 10,
               "the dump to be written and the journal trimmed")


def observe(q: Any) -> dict:
    """What the fixture records of a queue: its logical state and what its indexes answer."""
    return {"fingerprint": q.fingerprint(), "counts": q.counts(), "snapshot": q.snapshot(),
            "dispatchable": q.dispatchable(10), "artifacts": q.artifacts(),
            "artifact": {sha: q.artifact(sha) for sha in sorted(SHA.values())},
            "received": q.received(), "unreleased": q.unreleased_batches()}


def run(workdir: Path, with_dump: bool) -> tuple[dict, list]:
    init_cluster(workdir, orchestrators=1, drones=0, base_port=0, raft_overrides=FAST_RAFT)
    config = load_config(workdir / "orch-1.toml")
    election = Election(config)
    try:
        wait_until(election.raft_is_leader, 10, "the single node to lead")
        assert election.term == 1, f"expected the first term, got {election.term}"
        results = [call(election, name, args) for name, args in BEFORE]
        if with_dump:
            compact(election, Path(config.data_dir))
        results += [call(election, name, args) for name, args in AFTER]
        state = election.read(observe)
    finally:
        election.close()
    return {**state, "data_dir": str(config.data_dir)}, results


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Any] = {}
    for kind, with_dump in (("dump", True), ("journal", False)):
        with tempfile.TemporaryDirectory() as tmp:
            state, results = run(Path(tmp), with_dump)
            target = out / kind
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            data = Path(state.pop("data_dir"))
            for name in ("raft.journal", "raft.dump") if with_dump else ("raft.journal",):
                shutil.copy(data / name, target / name)
            if expected and (expected["fingerprint"], expected["results"]) != (state["fingerprint"], results):
                raise SystemExit("the two runs disagree: the fixture would not be deterministic")
            expected = {**state, "results": results}
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: fingerprint {expected['fingerprint'][:16]}, counts {expected['counts']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/replay"))
