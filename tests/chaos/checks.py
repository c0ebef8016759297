"""Invariant checkers: pure functions from the evidence of a finished run to verdicts.

Each check returns one `Verdict`. Only VIOLATED fails a run (WARNING is for what breaks no
invariant; none does now). Why every check that cannot see its evidence fails rather than
passes: issue 19 found a cluster serving no release at all reported "OK" because the release
check called a 404 "not yet available" and that switched the index-membership check off. So a
binhost that serves nothing, a holder the state lists that lacks the file, a follower whose
applied queue differs from the leader's, and a drone leaking job directories are violations.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swarmmesh.harness import index_entries

if TYPE_CHECKING:
    from tests.chaos.evidence import Evidence
    from tests.chaos.workload import Submission

PASSED, VIOLATED, WARNING, SKIPPED = "passed", "VIOLATED", "WARNING", "skipped"
MAX_DETAILS = 20

_LEADING = re.compile(r" (\S+)\[\d+\] swarmmesh\.orchestrator: leading in term (\d+)")
_RECEIVED = re.compile(r"swarmmesh\.\w+: received (\S+) from [^(]*\(\d+ bytes, sha256 ([0-9a-f]+)\)")
_STORED = re.compile(r"swarmmesh\.drone: job (\S+) stored \(sha256 ([0-9a-f]+)\)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Verdict:
    name: str
    status: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        shown = self.details[:MAX_DETAILS]
        more = [f"    ... and {len(self.details) - MAX_DETAILS} more"] if len(self.details) > MAX_DETAILS else []
        return [f"[{self.status}] {self.name}"] + [f"    {d}" for d in shown] + more


def verdict(name: str, problems: list[str], status: str = VIOLATED) -> Verdict:
    return Verdict(name, status if problems else PASSED, problems)


def run_all(ev: Evidence, submissions: list[Submission]) -> list[Verdict]:
    return [check_submissions(ev, submissions), check_settled(ev), check_no_silent_block(ev), check_exactly_once(ev),
            check_release_count(ev, submissions), check_converged(ev), check_views_agree(ev),
            check_one_leader_per_term(ev), check_release_index(ev), check_store(ev), check_replication(ev),
            check_drones_deleted_after_commit(ev), check_drones_hold_nothing(ev), check_orphans(ev)]


# --- the queue ---------------------------------------------------------------------------------


def packages(ev: Evidence) -> dict[str, dict]:
    return {pkg["key"]: pkg for pkg in ev.snapshot.get("packages", [])}


def check_submissions(ev: Evidence, submissions: list[Submission]) -> Verdict:
    """No acknowledged work is lost: every acked batch and every package of it is in the state."""
    batches = {b["id"] for b in ev.snapshot.get("batches", [])}
    cpvs = {pkg["cpv"] for pkg in packages(ev).values()}
    problems = []
    for sub in submissions:
        if sub.batch_id is None:
            last = sub.errors[-1] if sub.errors else "no attempt"
            problems.append(f"a batch of {len(sub.batch.packages)} from {sub.batch.client} was never "
                            f"acknowledged ({sub.attempts} attempts; last: {last})")
        elif sub.batch_id not in batches:
            problems.append(f"acknowledged batch {sub.batch_id} of {sub.batch.client} is missing from the state")
        else:
            lost = [a for a in sub.batch.packages if a.lstrip("=") not in cpvs]
            problems += [f"{a} of acknowledged batch {sub.batch_id} is missing from the state" for a in lost]
    return verdict("every acknowledged batch and package is in the state", problems)


def blocked(pkgs: dict[str, dict], deps: dict[str, list[str]]) -> dict[str, str]:
    """Needed packages that wait, directly or through others, on a failed one: key -> that one."""
    out: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for key, pkg in pkgs.items():
            if pkg["state"] != "needed" or key in out:
                continue
            for dep in deps.get(key, ()):
                state = pkgs.get(dep, {}).get("state")
                cause = dep if state == "failed" else out.get(dep)
                if cause is not None:
                    out[key], changed = cause, True
                    break
    return out


def check_settled(ev: Evidence) -> Verdict:
    """Nothing is left needed or building, except what waits on a failed package (apart)."""
    held = blocked(packages(ev), ev.deps)
    stuck = [f"{k}: {p['state']} (drone {p['drone']}, attempts {p['attempts']}, {p['error'] or 'no error'})"
             for k, p in packages(ev).items() if p["state"] in ("needed", "delegated") and k not in held]
    return verdict("every package settled (received or failed) before the deadline", stuck)


def check_no_silent_block(ev: Evidence) -> Verdict:
    """A package whose dependency failed can never be built; it must end failed with that reason,
    not stay needed forever (which also forces every finalize)."""
    problems = [f"{k} stays needed with no reason: its dependency {dep} failed"
                for k, dep in sorted(blocked(packages(ev), ev.deps).items())]
    return verdict("no package left needed behind a failed dependency", problems)


def check_exactly_once(ev: Evidence) -> Verdict:
    """Received or failed with a reason, never both; the release holds every received one once."""
    pkgs = packages(ev)
    problems = [f"{k} failed without a reason" for k, p in pkgs.items() if p["state"] == "failed" and not p["error"]]
    if _release(ev) is None:
        problems.append(f"release {ev.release_id} is not in the state")
    problems += _index_membership(ev, pkgs)
    return verdict("each package received exactly once in the release or failed with a reason, not both",
                   problems)


def _release(ev: Evidence) -> dict | None:
    return next((r for r in ev.snapshot.get("releases", []) if r["id"] == ev.release_id), None)


def served_indexes(ev: Evidence) -> dict[bytes, list[str]]:
    """Each distinct Packages an orchestrator serves -> the nodes serving it."""
    out: dict[bytes, list[str]] = defaultdict(list)
    for node, index in sorted(ev.indexes.items()):
        if isinstance(index, bytes):
            out[index].append(node)
    return out


def _index_membership(ev: Evidence, pkgs: dict[str, dict]) -> list[str]:
    """In every served index: received CPVs appear once, failed ones never. Always runs: with no
    index served, the membership of the release is unknown, and that is a violation."""
    served = served_indexes(ev)
    if not served:
        return ["no orchestrator serves a Packages index: the release's membership cannot be checked"]
    by_cpv = {p["cpv"]: p for p in pkgs.values()}
    problems = []
    for index, nodes in served.items():
        where = f" (served by {', '.join(nodes)})"
        seen = index_cpvs(index)
        problems += [f"{cpv} is listed {n} times in Packages{where}" for cpv, n in seen.items() if n > 1]
        problems += [f"{cpv} is in Packages{where} but {by_cpv[cpv]['state'] if cpv in by_cpv else 'not in the state'}"
                     for cpv in seen if by_cpv.get(cpv, {}).get("state") != "received"]
        if ev.settled:  # else the release was forced and later receipts are rightly missing from it
            problems += [f"{p['cpv']} was received but is not in Packages{where}" for p in pkgs.values()
                         if p["state"] == "received" and p["cpv"] not in seen]
    return problems


def index_cpvs(index: bytes) -> dict[str, int]:
    """CPV -> how many entries of the index list it."""
    seen: dict[str, int] = defaultdict(int)
    for entry in index_entries(index):
        seen[entry.get("CPV", "?")] += 1
    return seen


def check_release_count(ev: Evidence, submissions: list[Submission]) -> Verdict:
    """The release is judged against what the clients sent, not against the snapshot it was
    made from: it lists only submitted packages, every acknowledged package is either in it or
    failed with a reason, and its count is the number of entries the binhosts serve."""
    asked = {a.lstrip("=") for s in submissions for a in s.batch.packages}
    acked = {a.lstrip("=") for s in submissions if s.batch_id is not None for a in s.batch.packages}
    failed = {k for k, p in packages(ev).items() if p["state"] == "failed"}
    release, problems = _release(ev), []
    if release is None:
        problems.append(f"release {ev.release_id} is not in the state: nothing to count")
    for index, nodes in served_indexes(ev).items():
        listed = set(index_cpvs(index))
        where = f"the Packages of {', '.join(nodes)}"
        problems += [f"{cpv} is in {where} but no client submitted it" for cpv in sorted(listed - asked)]
        if release is not None and release["count"] != len(index_entries(index)):
            problems.append(f"release {release['id']} counts {release['count']} packages, {where} lists "
                            f"{len(index_entries(index))}")
        if ev.settled:
            missing = sorted(acked - listed - failed)
            problems += [f"{k} was submitted and acknowledged but is neither in {where} nor failed" for k in missing]
    low, high = len(acked - failed), len(asked - failed)  # a batch never acked may still have committed
    if release is not None and ev.settled and not low <= release["count"] <= high:
        problems.append(f"release {release['id']} counts {release['count']} packages; the clients submitted "
                        f"{high} that did not fail ({low} of them acknowledged)")
    return verdict("the release holds what the clients submitted, less what failed", problems)


def check_converged(ev: Evidence) -> Verdict:
    prints = set(ev.fingerprints.values())
    problems = [] if len(prints) == 1 and None not in prints else [
        f"{n}: {f[:16] if f else 'no answer'}" for n, f in sorted(ev.fingerprints.items())]
    return verdict("every orchestrator applied the same state (equal fingerprints)", problems)


def check_views_agree(ev: Evidence) -> Verdict:
    """Each follower's own view of the queue (counts by state, the received builds and their
    artifacts) equals the leader's: a follower that applied something else but reports the
    leader's fingerprint (or computes it wrongly) is caught here, not by the fingerprints."""
    leader = ev.snapshot.get("leader")
    ref = ev.views.get(leader) if isinstance(leader, str) else None
    if not isinstance(ref, dict):
        return verdict("every follower's queue view equals the leader's",
                       [f"the leader {leader!r} gave no view of its own ({ref or 'not asked'}): this check is blind"])
    want_counts, want = ref.get("counts"), received_builds(ref)
    problems = []
    for node, view in sorted(ev.views.items()):
        if node == leader:
            continue
        if not isinstance(view, dict):
            problems.append(f"{node}: {view}")
            continue
        if view.get("counts") != want_counts:
            problems.append(f"{node} counts {view.get('counts')}, the leader {leader} {want_counts}")
        got = received_builds(view)
        problems += [f"{node} has {k} received (sha256 {str(sha)[:12]}), the leader {leader} does not"
                     for k, sha in sorted(got - want, key=str)]
        problems += [f"{node} lacks {k} received (sha256 {str(sha)[:12]}) that the leader {leader} has"
                     for k, sha in sorted(want - got, key=str)]
    if len(ev.views) < 2:
        problems.append(f"only {len(ev.views)} view(s) collected: no follower to compare")
    return verdict("every follower's queue view equals the leader's", problems)


def received_builds(view: dict) -> set[tuple[str, str | None]]:
    """(key, sha256) of every received package in one node's view."""
    return {(p["key"], p.get("sha256")) for p in view.get("packages", []) if p.get("state") == "received"}


# --- terms -------------------------------------------------------------------------------------


def leaders_from_logs(logs: dict[str, str]) -> dict[int, set[str]]:
    """term -> every node that logged "leading in term N" (each node logs only its own claim)."""
    out: dict[int, set[str]] = defaultdict(set)
    for text in logs.values():
        for node, term in _LEADING.findall(text):
            out[int(term)].add(node)
    return out


def check_one_leader_per_term(ev: Evidence) -> Verdict:
    """No two orchestrators led (accepted mutations) in one term: from their own logs, from the
    replicated `violations` list, and the logs must agree with the replicated term map.
    Equal fingerprints (checked apart) make the state's map and list those of every node."""
    terms = ev.snapshot.get("terms", {})
    problems = [f"replicated violation: {v}" for v in ev.snapshot.get("violations", [])]
    logged = leaders_from_logs(ev.logs)
    if terms and not logged:
        problems.append("no orchestrator log has a \"leading in term N\" line: the log format changed and "
                        "this check is blind; update checks._LEADING")
    for term, nodes in sorted(logged.items()):
        if len(nodes) > 1:
            problems.append(f"term {term}: {', '.join(sorted(nodes))} all logged \"leading\"")
        elif terms.get(str(term)) not in nodes:
            problems.append(f"term {term}: {', '.join(nodes)} logged \"leading\" but the state says "
                            f"{terms.get(str(term))!r} led it")
    return verdict("no two orchestrators led in the same term", problems)


# --- the release index -------------------------------------------------------------------------


def check_release_index(ev: Evidence) -> Verdict:
    """After the final finalize, every orchestrator serves that release: a byte-identical
    Packages (and Packages.gz of the same content, which clients read first), every listed file
    matching its SIZE/MD5/SHA1. A binhost that answers nothing (404, refused) at the end of the
    bounded wait is a violation, never "not available"."""
    name = "every orchestrator serves the final release: the same Packages; every file matches SIZE/MD5/SHA1"
    if ev.release_id is None:
        return verdict(name, ["no release was finalized: there is nothing every binhost must serve"])
    problems = [f"{n} serves no Packages ({i})" for n, i in sorted(ev.indexes.items()) if isinstance(i, str)]
    if not ev.indexes:
        problems.append("no orchestrator's binhost was asked for Packages: this check is blind")
    problems += [f"{n} serves release {ev.serving.get(n)}, not the final {ev.release_id}"
                 for n in sorted(ev.indexes) if ev.serving.get(n) != ev.release_id]
    served = served_indexes(ev)
    if len(served) > 1:
        problems.append("the Packages files differ: " + ", ".join(
            f"{'/'.join(nodes)} {len(i)} bytes" for i, nodes in served.items()))
    for node, index in sorted(ev.indexes.items()):
        if isinstance(index, bytes):
            gz = ev.gz.get(node, "not fetched")
            if gz != index:
                problems.append(f"{node}: Packages.gz {gz if isinstance(gz, str) else 'differs from Packages'}")
            problems += _file_mismatches(node, index, ev.served.get(node, {}))
    return verdict(name, problems)


def _file_mismatches(node: str, index: bytes, served: dict) -> list[str]:
    out = []
    for entry in index_entries(index):
        path = entry.get("PATH") or f"{entry.get('CPV', '?')}.gpkg.tar"
        got = served.get(path, "not fetched")
        want = (int(entry.get("SIZE", "-1")), entry.get("MD5", ""), entry.get("SHA1", ""))
        if got != want:
            out.append(f"{node} {path}: index says {want}, served {got}")
    return out


# --- files on disk -----------------------------------------------------------------------------


def received_prefixes(logs: dict[str, str]) -> dict[str, set[str]]:
    """sha256 prefix -> keys an orchestrator logged as received with it (the accepted artifacts,
    duplicates included: the log is the only place /swarm does not hide the digests)."""
    out: dict[str, set[str]] = defaultdict(set)
    for text in logs.values():
        for key, prefix in _RECEIVED.findall(text):
            out[prefix].add(key)
    return out


def referenced(ev: Evidence) -> set[str] | None:
    """The sha256 of every received package, if the snapshot shows them (None if it does not)."""
    shas = set()
    for pkg in packages(ev).values():
        sha = pkg.get("sha256") or (pkg.get("result") or {}).get("sha256")
        if pkg["state"] == "received":
            if not sha:
                return None
            shas.add(sha)
    return shas


def check_store(ev: Evidence) -> Verdict:
    """The store holds nothing the state does not know about, each file is intact (its content
    hashes to its name), tmp/ is empty, and every received package is stored somewhere."""
    known, pkgs = referenced(ev), packages(ev)
    problems = [f"{n}: store/{f} left in tmp/" for n, files in sorted(ev.tmp.items()) for f in files]
    problems += [f"{n}: store/{f} is corrupt or misnamed (its content hashes to {sha[:16]})"
                 for n, files in sorted(ev.stores.items()) for f, (sha, _) in sorted(files.items())
                 if sha != f.rsplit("/", 1)[-1]]
    strays, held = _by_state(ev, known) if known is not None else _by_logs(ev)
    problems += strays
    problems += [f"{k} is received but no orchestrator stores its artifact" for k, p in sorted(pkgs.items())
                 if p["state"] == "received" and not held.get(k)]
    return verdict("no stray or corrupt files in any store; tmp/ empty; every received artifact stored",
                   problems)


def check_replication(ev: Evidence) -> Verdict:
    """Every received artifact is held, intact, by every orchestrator the state lists as its
    holder, and by a majority at least: "received" means "on a majority", not "somewhere"."""
    nodes = ev.orchestrators
    majority = len(nodes) // 2 + 1
    problems = []
    for key, pkg in sorted(packages(ev).items()):
        if pkg["state"] != "received":
            continue
        sha, holders = pkg.get("sha256"), pkg.get("holders")
        if not isinstance(sha, str) or not isinstance(holders, list):
            problems.append(f"{key} is received but the state shows no sha256 and holders: this check is blind")
            continue
        intact = {n for n in nodes if ev.stores.get(n, {}).get(f"{sha[:2]}/{sha}", ("",))[0] == sha}
        for holder in sorted(holders):
            if holder not in intact:
                got = ev.stores.get(holder, {}).get(f"{sha[:2]}/{sha}")
                why = "does not have it" if got is None else f"holds a copy hashing to {got[0][:16]}"
                problems.append(f"{key}: the state lists {holder} as a holder of {sha[:12]}, but {holder} {why}")
        if len(holders) < majority:
            problems.append(f"{key}: {len(holders)} holder(s) listed ({', '.join(holders) or 'none'}), "
                            f"fewer than a majority of {majority}")
        if len(intact) < majority:
            problems.append(f"{key}: {sha[:12]} is intact on {len(intact)} of {len(nodes)} orchestrators "
                            f"({', '.join(sorted(intact)) or 'none'}), fewer than a majority")
    return verdict("every received artifact is intact on each listed holder, and on a majority", problems)


def _logged_keys(prefixes: dict[str, set[str]], name: str) -> set[str]:
    return prefixes.get(name[:12], set()) if _SHA256.fullmatch(name) else set()


def _files(ev: Evidence, with_released: bool = False) -> list[tuple[str, str, str, str]]:
    """(node, path in the store, sha256 name, sha1 of the content), files of a release excluded
    unless asked: a release keeps its files even after their package is received again."""
    released = set() if with_released else {
        e.get("SHA1") for i in ev.indexes.values() if isinstance(i, bytes) for e in index_entries(i)}
    return [(n, f, f.rsplit("/", 1)[-1], sha1) for n, files in sorted(ev.stores.items())
            for f, (_, sha1) in sorted(files.items()) if sha1 not in released]


def _by_state(ev: Evidence, known: set[str]) -> tuple[list[str], dict[str, set[str]]]:
    """Strays, and who holds each received package, from the digests /swarm shows."""
    strays = [f"{n}: store/{f} is not the artifact of any received package{_hint(ev, name)}"
              for n, f, name, _ in _files(ev) if name not in known]
    names = {n: {f.rsplit("/", 1)[-1] for f in files} for n, files in ev.stores.items()}
    held = {k: {n for n, have in names.items() if p.get("sha256") in have} for k, p in packages(ev).items()}
    return strays, held


def _by_logs(ev: Evidence) -> tuple[list[str], dict[str, set[str]]]:
    """The same without digests in /swarm: the orchestrators' "received" lines say what was
    accepted; a node keeping two artifacts of one package keeps one the state does not know."""
    pkgs, prefixes = packages(ev), received_prefixes(ev.logs)
    strays, held = [], defaultdict(set)
    per_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node, _f, name, _ in _files(ev, with_released=True):
        for key in _logged_keys(prefixes, name):
            held[key].add(node)
    for node, f, name, _ in _files(ev):
        keys = _logged_keys(prefixes, name)
        for key in keys:
            per_key[(node, key)].append(name)
        if not any(pkgs.get(k, {}).get("state") == "received" for k in keys):
            strays.append(f"{node}: store/{f} belongs to no received package{_hint(ev, name)}")
    strays += [f"{node}: {len(shas)} artifacts of {key} in the store, the state keeps one: "
               + ", ".join(s[:12] for s in shas) for (node, key), shas in sorted(per_key.items()) if len(shas) > 1]
    return strays, held


def _hint(ev: Evidence, sha: str) -> str:
    """What the logs say about a file (its package, who received or fetched it), for the report."""
    lines = [line for text in ev.logs.values() for line in text.splitlines() if sha[:12] in line]
    return f" (logs: {lines[0].split(' ', 3)[-1][:160]})" if lines else " (no log line mentions it)"


def job_key(dirname: str, keys: list[str]) -> str:
    """The package a drone work dir was made for (the drone names it `<sanitized key>-<n>`)."""
    stem = dirname.rsplit("-", 1)[0]
    for key in keys:
        if (re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64].strip("._-") or "job") == stem:
            return key
    return f"? ({dirname})"


def stored_by_drones(logs: dict[str, str]) -> list[tuple[str, str, str]]:
    """(drone, key, sha256 prefix) for every `job KEY stored` line: the drone deleted it."""
    return [(n, key, sha) for n, text in sorted(logs.items()) if n.startswith("drone")
            for key, sha in _STORED.findall(text)]


def check_drones_deleted_after_commit(ev: Evidence) -> Verdict:
    """A drone deletes an artifact only once it is committed: every key a drone logged as
    stored is received, with an artifact an orchestrator accepted."""
    pkgs, prefixes = packages(ev), received_prefixes(ev.logs)
    stored = stored_by_drones(ev.logs)
    received = sum(1 for p in pkgs.values() if p["state"] == "received")
    problems = [] if stored or not received else [
        f"{received} packages are received but no drone log has a \"job KEY stored\" line (or no "
        "orchestrator log a \"received\" line): the log format changed and this check is blind"]
    if received and not prefixes:
        problems.append("no orchestrator log has a \"received KEY from ...\" line: this check is blind")
    for drone, key, sha in stored:
        if pkgs.get(key, {}).get("state") != "received":
            problems.append(f"{drone} deleted {key} (sha256 {sha}) but the state has it "
                            f"{pkgs.get(key, {}).get('state', 'unknown')}")
        elif key not in prefixes.get(sha, set()):
            problems.append(f"{drone} deleted {key} (sha256 {sha}) that no orchestrator logged as received")
    return verdict("no drone deleted an artifact before its completion was committed", problems)


def check_drones_hold_nothing(ev: Evidence) -> Verdict:
    """After everything settled, a running drone holds no job directory and no artifact."""
    name = "no running drone still holds an artifact (or job) after the run settled"
    if not ev.settled:
        return Verdict(name, SKIPPED, ["the queue never settled: the drones were frozen mid-work for the checks"])
    keys, stored = list(packages(ev)), {(d, k) for d, k, _ in stored_by_drones(ev.logs)}
    problems = []
    for drone, dirs in sorted(ev.drone_dirs.items()):
        for d, artifact in sorted(dirs.items()):
            if d in ev.orphans.get(drone, set()):
                continue
            key = job_key(d, keys)
            told = " although it logged it stored" if (drone, key) in stored else ""
            what = "an artifact" if artifact else "a job directory"
            problems.append(f"{drone} still holds {what} for {key} in work/{d}{told}")
    return verdict(name, problems)


def check_orphans(ev: Evidence) -> Verdict:
    """Work dirs of SIGKILLed drone processes that the restarted drone never cleans up. No
    package is lost (the leader re-queues the job), but a drone that leaks a directory per
    restart fills its disk: the drone clears them at start, so one left is a violation."""
    keys = list(packages(ev))
    problems = [f"{drone}: work/{d} ({job_key(d, keys)}) {'with its artifact' if ev.drone_dirs[drone][d] else ''}"
                for drone, dirs in sorted(ev.orphans.items()) for d in sorted(dirs)
                if d in ev.drone_dirs.get(drone, {})]
    return verdict("job directories of killed drone processes are cleaned up", problems)
