"""The one exception tree for swarmmesh's own errors.

Every message says what was wrong and what to do about it: these strings reach users
through the CLI and the gateway unchanged.

    SwarmError
    ├── ConfigError          a node config file is missing, unreadable or invalid
    ├── InputError           a package list or request body is invalid (nothing was queued)
    │   ├── BadAtomsError    some lines are not valid atoms; carries the bad lines
    │   └── ResolveError     Portage could not resolve what the client asked for
    ├── ProtocolError        a network frame is malformed, oversized or of an unknown type
    ├── ClusterError         the cluster cannot serve the request right now
    │   ├── NotLeaderError   this orchestrator does not lead; carries the leader if known
    │   ├── NoLeaderError    no leader is known (election in progress or no quorum)
    │   └── CommitError      a mutation was not committed (leader change, timeout)
    ├── RefusedError         the request is valid but the queue refuses it (e.g. finalize
    │   │                    while packages are still building)
    │   └── AuthError        no admin token, or one the gateway does not know (HTTP 401/403)
    └── ArtifactError        an uploaded or stored artifact failed validation
        ├── TransferError    the bytes did not arrive intact: the drone sends them again
        ├── CorruptError     a stored file no longer matches its sha256: fetch it again
        ├── FetchError       no holder could supply a file; says why, per holder
        └── SignatureError   a package's OpenPGP signature is missing, bad or by a key the
                             swarm does not trust, or a package could not be signed
"""

from __future__ import annotations


class SwarmError(Exception):
    """Base of every error swarmmesh raises on purpose."""

    #: A short machine-readable code, sent over the wire and used for exit codes.
    code = "error"


class ConfigError(SwarmError):
    code = "config"


class InputError(SwarmError):
    code = "invalid"


class BadAtomsError(InputError):
    """Some lines of a submission are not package atoms; the batch is rejected whole."""

    def __init__(self, bad_lines: list[tuple[int, str, str]]):
        self.bad_lines = bad_lines
        shown = "; ".join(f"line {n}: {text!r} ({why})" for n, text, why in bad_lines[:10])
        more = f" and {len(bad_lines) - 10} more" if len(bad_lines) > 10 else ""
        super().__init__(
            f"{len(bad_lines)} invalid line(s), nothing was queued: {shown}{more}. "
            "Fix or remove them and submit again (atoms look like cat/pkg-1.0 or =cat/pkg-1.0::repo)."
        )


class ResolveError(InputError):
    """Portage's resolver refused the client's targets (or cannot run here): nothing was queued."""


class ProtocolError(SwarmError):
    code = "protocol"


class ClusterError(SwarmError):
    code = "unavailable"


class NotLeaderError(ClusterError):
    code = "not_leader"

    def __init__(self, leader: str | None, message: str | None = None):
        self.leader = leader
        super().__init__(message or f"this orchestrator is not the leader; the leader is {leader or 'unknown'}")


class NoLeaderError(ClusterError):
    code = "no_leader"


class CommitError(ClusterError):
    code = "not_committed"


class RefusedError(SwarmError):
    code = "refused"


class AuthError(RefusedError):
    code = "unauthorized"


class ArtifactError(SwarmError):
    code = "artifact"


class TransferError(ArtifactError):
    """The bytes did not arrive intact: the drone should send them again."""

    PREFIX = "transfer: "

    def __init__(self, message: str) -> None:
        super().__init__(self.PREFIX + message)


class CorruptError(ArtifactError):
    """A stored file no longer matches its sha256: it must be fetched again."""

    def __init__(self, sha256: str, message: str) -> None:
        self.sha256 = sha256
        super().__init__(message)


class FetchError(ArtifactError):
    """No holder could supply a file; the message lists why, per holder."""


class SignatureError(ArtifactError):
    """A package's signature is missing, bad or untrusted, or it could not be signed."""

    code = "signature"
