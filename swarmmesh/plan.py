"""What a client asks the swarm to build: packages in merge order, each with its USE and edges.

Both ways of learning a client's world end here: Portage's own resolver (`swarmmesh.resolver`)
and saved `emerge --pretend` output (`swarmmesh.pretend`). The plan is what `POST /build`
carries (`packages`, `use`, `deps`, `env`); the gateway and the leader validate it again, so this
module only keeps it well-formed on the client's side.

Why `use` is "the enabled flags within IUSE": that is what a client's Portage compares with a
binary's USE (`--binpkg-respect-use`), so two clients that agree on it can share one binary,
and the flags outside IUSE (ARCH, ELIBC, ...) are the environment's business, not the package's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Wanted:
    """One package to build: exact CPV, its repository, its USE, the batch members it needs."""

    cpv: str
    repo: str | None = None
    use: tuple[str, ...] | None = None  # enabled flags within IUSE, sorted; None: not known
    deps: tuple[str, ...] = ()  # atoms (`=cpv::repo`) of batch members it needs built first
    slot: str | None = None
    subslot: str | None = None

    @property
    def atom(self) -> str:
        return f"={self.cpv}::{self.repo}" if self.repo else f"={self.cpv}"


@dataclass
class Plan:
    """The packages to build in merge order, plus the client's build environment."""

    packages: list[Wanted] = field(default_factory=list)
    env: dict[str, Any] | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # kind (binary, nomerge, ...) -> lines

    def request(self, client: str) -> dict[str, Any]:
        """The JSON body of `POST /build`; keys without information are left out, so an older
        gateway or leader sees exactly the request it already understands."""
        body: dict[str, Any] = {"packages": [w.atom for w in self.packages], "client": client}
        deps = {w.atom: list(w.deps) for w in self.packages if w.deps}
        use = {w.atom: list(w.use) for w in self.packages if w.use is not None}
        if deps:
            body["deps"] = deps
        if use:
            body["use"] = use
        if self.env:
            body["env"] = self.env
        return body
