"""The client's world resolved by Portage's own resolver, as `emerge -puDN @world` would.

Run on the client, inside its Portage environment (`gentoo-prefix run CLIENT swarmmesh client
world` sets it up): the same depgraph `emerge --pretend` builds (`create_depgraph_params` +
`backtrack_depgraph`), then per package of its merge list that would be built from source:

    cpv, repo        exactly what Portage picked
    use              the flags it would build with, within the package's IUSE (what a client's
                     `--binpkg-respect-use` compares with a binary's)
    deps             the batch members it needs before it can build: its build-time edges
                     (DEPEND, BDEPEND, IDEPEND), then everything those need at run time
                     (RDEPEND, PDEPEND), followed through packages outside the batch too (an
                     installed library whose new dependency is in the batch still needs it)

Why the Python API rather than parsing `emerge --tree`: the tree prints each dependency once,
under its first parent, so the edges of the other parents are lost; the depgraph has them all.
`_emerge` is Portage's private API (stable in practice for a decade; `--from-file` with saved
`emerge --pretend` output is the fallback when it moves).
"""

from __future__ import annotations

import logging
from typing import Any

from swarmmesh import buildenv
from swarmmesh.errors import ResolveError
from swarmmesh.plan import Plan, Wanted

log = logging.getLogger(__name__)

WORLD = "@world"
#: `emerge --pretend --update --deep --newuse @world`; for named atoms, what `emerge -p ATOM` does
_WORLD_OPTS = {"--update": True, "--deep": True, "--newuse": True}


def resolve(targets: list[str]) -> Plan:
    """What emerge would build for `targets` ("@world" or atoms), with the client's environment."""
    portage, emerge = _portage()
    config = emerge["load_emerge_config"]()
    settings, trees = config.target_config.settings, config.trees
    opts: dict[str, Any] = {"--pretend": True, "--quiet": True,
                            **(_WORLD_OPTS if targets == [WORLD] else {})}
    params = emerge["create_depgraph_params"](opts, None)
    spinner = emerge["stdout_spinner"]()
    spinner.mode = spinner.QUIET
    try:
        ok, graph, _favorites = emerge["backtrack_depgraph"](settings, trees, opts, params, None,
                                                            list(targets), spinner)
    except portage.exception.PortageException as exc:
        raise ResolveError(f"Portage could not resolve {' '.join(targets)}: {exc}; "
                           f"`emerge -p {' '.join(targets)}` shows the same") from None
    if not ok:
        graph.display_problems()
        raise ResolveError(f"Portage could not resolve {' '.join(targets)} (its reasons are printed above); "
                           f"fix what `emerge -p {' '.join(targets)}` reports, then run this again")
    plan = plan_from_graph(graph, emerge["Package"])
    plan.env = buildenv.client_env(settings)
    return plan


def local_env() -> dict[str, Any] | None:
    """This machine's build environment without resolving anything (for --from-file)."""
    try:
        import portage
    except ImportError:
        return None
    return buildenv.client_env(portage.settings)


def _portage() -> tuple[Any, dict[str, Any]]:
    try:
        import portage
        import portage.exception
        from _emerge.actions import load_emerge_config
        from _emerge.create_depgraph_params import create_depgraph_params
        from _emerge.depgraph import backtrack_depgraph
        from _emerge.Package import Package
        from _emerge.stdout_spinner import stdout_spinner
    except ImportError as exc:
        raise ResolveError(f"Portage's resolver cannot be imported here ({exc}); run this on the client "
                           "inside its Portage environment, or pass --from-file with saved "
                           "`emerge -puDN --verbose --tree --color=n @world` output") from None
    return portage, {"load_emerge_config": load_emerge_config, "create_depgraph_params": create_depgraph_params,
                     "backtrack_depgraph": backtrack_depgraph, "Package": Package, "stdout_spinner": stdout_spinner}


def plan_from_graph(graph: Any, package_type: Any) -> Plan:
    """The builds of a resolved depgraph in merge order, with their USE and in-batch edges."""
    merge_list = graph.altlist()
    builds = [p for p in merge_list if isinstance(p, package_type) and _is_build(p)]
    members = {p: _atom(p) for p in builds}
    digraph = graph._dynamic_config.digraph
    packages = [Wanted(str(p.cpv), str(p.repo) if p.repo else None, _use(p),
                       tuple(members[d] for d in _build_deps(digraph, p, members)),
                       str(p.slot) or None, str(p.sub_slot) if p.sub_slot != p.slot else None)
                for p in builds]
    skipped: dict[str, int] = {}
    for p in merge_list:
        if p not in members:
            kind = getattr(p, "type_name", None) or type(p).__name__.lower()
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
    return Plan(packages, skipped=skipped)


def _is_build(pkg: Any) -> bool:
    return getattr(pkg, "operation", None) == "merge" and getattr(pkg, "type_name", None) == "ebuild"


def _atom(pkg: Any) -> str:
    return f"={pkg.cpv}::{pkg.repo}" if pkg.repo else f"={pkg.cpv}"


def _use(pkg: Any) -> tuple[str, ...]:
    return tuple(sorted(set(pkg.use.enabled) & set(pkg.iuse.all)))


def _build_deps(digraph: Any, pkg: Any, members: dict[Any, str]) -> list[Any]:
    """Batch members reachable by one build-time edge, then by any edges (in merge order)."""
    first = [child for child, prios in _children(digraph, pkg) if any(_buildtime(p) for p in prios)]
    seen, stack, found = set(first), list(first), []
    while stack:
        node = stack.pop()
        if node in members and node is not pkg:
            found.append(node)
        for child, prios in _children(digraph, node):
            if child not in seen and any(not getattr(p, "optional", False) for p in prios):
                seen.add(child)
                stack.append(child)
    order = {p: i for i, p in enumerate(members)}
    return sorted(found, key=order.__getitem__)


def _children(digraph: Any, node: Any) -> list[tuple[Any, list[Any]]]:
    entry = digraph.nodes.get(node)
    return list(entry[0].items()) if entry else []


def _buildtime(priority: Any) -> bool:
    return any(getattr(priority, name, False) for name in ("buildtime", "buildtime_slot_op", "installtime"))
