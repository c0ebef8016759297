"""The `swarmmesh` command line: node roles, client commands and local cluster management.

Commands stay thin: they parse options, call one function of the module that does the
work, and print. The working modules are imported inside the commands, so `--help` stays
fast and a role whose module is missing or broken does not break the other commands.

Every `SwarmError` becomes one line on stderr and an exit code from `EXIT_CODES`, so scripts
can tell bad input (2) from a refusal (3) from an unavailable cluster (1) without parsing text.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from swarmmesh import errors, logs

log = logging.getLogger(__name__)

DEFAULT_GATEWAY = "http://127.0.0.1:8090"

#: Exit codes by error class; the first matching entry wins, any other SwarmError exits 1.
#: Usage errors exit 2 too (click's own convention).
EXIT_CODES: tuple[tuple[type[errors.SwarmError], int], ...] = (
    (errors.InputError, 2),
    (errors.ConfigError, 2),
    (errors.RefusedError, 3),
)

#: Old `swarm-coordinator` commands: (arguments, the swarmmesh command that replaces it, summary).
COORDINATOR_COMMANDS = {
    "init-from-list": ("FILE", "submit", "queue the packages listed in FILE"),
    "status": ("", "status", "show the leader, the orchestrators and the counts"),
    "balance": ("", "balance", "take jobs back from busy drones for idle ones"),
    "finalize": ("[--force]", "finalize", "release the received packages"),
    "unblock": ("[CPV...]", "unblock", "requeue failed packages, release grounded drones"),
}



def exit_code(exc: errors.SwarmError) -> int:
    """The process exit code for an expected error."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 1)


def _report(exc: errors.SwarmError) -> None:
    """Print an expected error as one line; a bad submission first lists every bad line."""
    from swarmmesh.views import one_line

    message = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, errors.BadAtomsError):
        for number, text, why in exc.bad_lines:
            click.echo(f"line {number}: {text!r} ({why})", err=True)
        message = (f"{len(exc.bad_lines)} invalid line(s) listed above, nothing was queued; "
                   "fix or remove them and submit again")
    click.echo(f"swarmmesh: error: {message}", err=True)


class _SwarmGroup(click.Group):
    """A command group that turns expected errors into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.SwarmError as exc:
            log.debug("command failed", exc_info=True)
            _report(exc)
            ctx.exit(exit_code(exc))


@click.group(cls=_SwarmGroup)
@click.option("--log-level", type=click.Choice(logs.LEVELS, case_sensitive=False), default=None,
              metavar="LEVEL", help="debug, info, warning, error or critical "
              "(default: the config's log_level for nodes, warning for client commands).")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """swarmmesh: a distributed, fault-tolerant binary-package build system for Gentoo."""
    ctx.ensure_object(dict)["log_level"] = log_level


def _log_level(default: str) -> str:
    obj = click.get_current_context().find_root().obj or {}
    return obj.get("log_level") or default


# --- node roles -------------------------------------------------------------------------

def _config_option(required: bool) -> Callable:
    return click.option("--config", "config_path", metavar="FILE", envvar="SWARMMESH_CONFIG",
                        required=required, help="Node config file (TOML); env SWARMMESH_CONFIG.")


def _load_config(path: str | None) -> Any:
    from swarmmesh.config import load_config

    return load_config(path)


def _load_role_config(path: str, role: str) -> Any:
    """Load a node config and refuse to start it under the wrong role."""
    logs.configure(_log_level("warning"))  # until the config names the node and its level
    config = _load_config(path)
    if config.role != role:
        raise errors.ConfigError(
            f'{path} is a {config.role} config (role = "{config.role}"); '
            f"start it with `swarmmesh {config.role} --config {path}`")
    return config


def _run_node(config: Any, run: Callable[[], None]) -> None:
    logs.configure(_log_level(config.log_level), node=config.name)
    log.info("starting %s %s", config.role, config.name)
    try:
        run()
    except KeyboardInterrupt:
        log.info("interrupted, %s %s stopped", config.role, config.name)
        raise click.exceptions.Exit(130) from None


@cli.command()
@_config_option(required=True)
def orchestrator(config_path: str) -> None:
    """Run an orchestrator node.

    Orchestrators hold the replicated queue; the leader dispatches jobs; all serve the binhost.
    """
    config = _load_role_config(config_path, "orchestrator")
    from swarmmesh.orchestrator import run_orchestrator

    _run_node(config, lambda: run_orchestrator(config))


@cli.command()
@_config_option(required=True)
def gateway(config_path: str) -> None:
    """Run a gateway node, the stateless HTTP front of the cluster."""
    config = _load_role_config(config_path, "gateway")
    from swarmmesh.gateway import run_gateway

    _run_node(config, lambda: run_gateway(config))


@cli.command()
@_config_option(required=True)
@click.option("--once", is_flag=True, help="Build at most one job, then exit (for tests).")
def drone(config_path: str, once: bool) -> None:
    """Run a drone node, which builds packages for the leader."""
    config = _load_role_config(config_path, "drone")
    try:
        from swarmmesh.drone import run_drone
    except ImportError as exc:
        if not (exc.name or "").startswith("swarmmesh"):
            raise  # a missing third-party dependency is an installation bug: show it whole
        detail = "" if exc.name == "swarmmesh.drone" else f" ({exc})"
        raise errors.SwarmError(f"the drone role is not available in this version{detail}") from None
    _run_node(config, lambda: run_drone(config, once=once))


# --- client commands --------------------------------------------------------------------

def _client_settings(gateway: str | None, token: str | None, config_path: str | None) -> tuple[str, str | None]:
    """The gateway URL (--gateway / SWARMMESH_GATEWAY, else the config's, else the default)
    and the admin token (--token / SWARMMESH_TOKEN, else the config's [client] token)."""
    if config_path and not (gateway and token):
        from swarmmesh.config import load_client

        from_file, file_token = load_client(config_path)
        gateway, token = gateway or from_file, token or file_token
    return gateway or DEFAULT_GATEWAY, token


def client_command(fn: Callable) -> click.Command:
    """Register `fn(api, **options)` as a command that talks to a gateway.

    Adds --gateway, --token and --config, configures logging and hands `fn` a ready
    GatewayClient.
    """
    @click.option("--gateway", metavar="URL", envvar="SWARMMESH_GATEWAY",
                  help=f"Gateway URL; env SWARMMESH_GATEWAY (else from --config, else {DEFAULT_GATEWAY}).")
    @click.option("--token", metavar="TOKEN", envvar="SWARMMESH_TOKEN",
                  help="Admin token for commands that change the cluster; env SWARMMESH_TOKEN "
                  "(else [client] token from --config).")
    @_config_option(required=False)
    @functools.wraps(fn)
    def command(gateway: str | None, token: str | None, config_path: str | None, **options: Any) -> None:
        logs.configure(_log_level("warning"))
        from swarmmesh.api import GatewayClient

        url, token = _client_settings(gateway, token, config_path)
        fn(GatewayClient(url, token=token), **options)

    return cli.command()(command)


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise errors.InputError(f"cannot read {file}: {exc.strerror}; check the path and its permissions") \
            from None


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InputError(
            f"{name} is not UTF-8 text (invalid byte at offset {exc.start}); "
            "submit a plain-text list of atoms, one per line") from None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _echo_lines(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


def _echo_result(title: str, result: Any) -> None:
    from swarmmesh.views import result_lines

    _echo_lines(result_lines(title, result))


@client_command
@click.argument("file", default="-", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--client", "client_name", metavar="NAME", help="Batch owner (default: user@host).")
def submit(api: Any, file: str, client_name: str | None) -> None:
    """Queue the packages listed in FILE (default -: stdin).

    FILE holds atoms, one per line, or the output of `emerge -p`. The batch is rejected whole
    if any line is not an atom.
    """
    text = _decode(_read(file), "stdin" if file == "-" else file)
    from swarmmesh.client import default_name

    reply = api.submit_text(text, client=client_name or default_name())
    click.echo(f"queued batch {reply['batch']}: {reply['count']} packages ({reply['new']} new)")


@client_command
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's status JSON unchanged.")
@click.option("--check", is_flag=True,
              help="Exit 0 if a leader is known and a majority of orchestrators is healthy, else 1.")
def status(api: Any, as_json: bool, check: bool) -> None:
    """Show the leader, the orchestrators and the package counts."""
    from swarmmesh.views import health, status_lines

    data = api.status()
    if as_json:
        _echo_json(data)
    elif not check:
        _echo_lines(status_lines(data, time.time()))
    if check:
        healthy, verdict = health(data)
        if not (healthy and as_json):  # with --json, stdout stays pure JSON: problems go to stderr
            click.echo(verdict, err=as_json)
        if not healthy:
            raise click.exceptions.Exit(1)


@client_command
@click.option("--force", is_flag=True, help="Release even if packages are still needed, delegated or failed.")
def finalize(api: Any, force: bool) -> None:
    """Release the received packages to the production binhost."""
    _echo_result("finalize", api.finalize(force=force))


@client_command
def balance(api: Any) -> None:
    """Take back jobs held by drones that are gone, and jobs drones queued but have not started,
    so that free drones build them (no attempt charged)."""
    _echo_result("balance", api.balance())


@client_command
@click.argument("cpvs", nargs=-1, metavar="[CPV]...")
def unblock(api: Any, cpvs: tuple[str, ...]) -> None:
    """Requeue failed packages and release grounded drones.

    Without CPVs: every failed package and every grounded drone.
    """
    _echo_result("unblock", api.unblock(list(cpvs) or None))


@client_command
@click.option("--yes", is_flag=True, help="Confirm: this empties the queue.")
def reset(api: Any, yes: bool) -> None:
    """Empty the build queue on every orchestrator."""
    if not yes:
        raise errors.InputError("reset empties the whole build queue; pass --yes to confirm")
    _echo_result("reset", api.reset())


@client_command
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer unchanged.")
def releases(api: Any, as_json: bool) -> None:
    """List the releases, oldest first; `*` marks the current one."""
    from swarmmesh.views import release_lines

    data = api.releases()
    if as_json:
        _echo_json(data)
    else:
        _echo_lines(release_lines(data))


@client_command
@click.argument("release_id", metavar="ID")
def rollback(api: Any, release_id: str) -> None:
    """Serve release ID again (published as a new release, so clients see it as newer)."""
    _echo_result("rollback", api.rollback(release_id))


@client_command
def binhost(api: Any) -> None:
    """Print a healthy orchestrator's binhost URL (for binrepos.conf)."""
    click.echo(api.binhost())


class _ClientGroup(click.Group):
    """`swarmmesh client trust` is a subcommand; anything else (`client world`, `client ATOM...`,
    `client --from-file F`) goes to the build command, so both interfaces keep their spelling."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group("client", cls=_ClientGroup)
def client_group() -> None:
    """This machine as a client: build its world (`client world|ATOM...`), trust the swarm's key."""


@client_group.command("trust")
@click.option("--gateway", metavar="URL", envvar="SWARMMESH_GATEWAY",
              help=f"Gateway to fetch /signing-key.asc from; env SWARMMESH_GATEWAY (default {DEFAULT_GATEWAY}).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust this public key file instead of fetching it.")
@click.option("--gnupg-home", type=click.Path(file_okay=False, path_type=Path),
              help="GnuPG home Portage verifies with (default: its BINPKG_GPG_VERIFY_GPG_HOME).")
@click.option("--print", "show", is_flag=True, help="Only print the commands that would be run.")
def client_trust(gateway: str | None, key_file: Path | None, gnupg_home: Path | None, show: bool) -> None:
    """Make Portage trust the swarm's signing key, as getuto sets up /etc/portage/gnupg."""
    logs.configure(_log_level("warning"))
    from swarmmesh import clienttrust
    from swarmmesh.api import GatewayClient

    api = GatewayClient(gateway or DEFAULT_GATEWAY)
    armored = key_file.read_text(errors="replace") if key_file else api.signing_key()
    home = gnupg_home or clienttrust.portage_gnupg_home()
    if show:
        url = key_file.resolve().as_uri() if key_file else f"{api.url}/signing-key.asc"
        click.echo(clienttrust.printed(home, url, clienttrust.fingerprints(armored)), nl=False)
        return
    for fpr in clienttrust.trust(armored, home):
        click.echo(f"trusted {fpr} in {home}")


@client_command
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's queue JSON unchanged.")
def swarm(api: Any, as_json: bool) -> None:
    """Show the build queue: counts, then one line per package."""
    from swarmmesh.views import swarm_lines

    data = api.swarm()
    if as_json:
        _echo_json(data)
    else:
        _echo_lines(swarm_lines(data))


@client_command
@click.argument("targets", nargs=-1, metavar="world | ATOM...")
@click.option("--from-file", metavar="FILE", help="Saved `emerge -puDN --verbose --tree --color=n @world` "
              "output (- for stdin) instead of running Portage's resolver.")
@click.option("--finalize", "do_finalize", is_flag=True, help="Release the swarm's packages once the batch is built.")
@click.option("--no-wait", is_flag=True, help="Return once the batch is queued.")
@click.option("--write-binrepos", metavar="PATH", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the binrepos.conf entry to PATH (e.g. /etc/portage/binrepos.conf/swarmmesh.conf).")
@click.option("--client", "client_name", metavar="NAME", help="Batch owner (default: user@host).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Give up waiting after S seconds (default: wait as long as it takes).")
def client(  # noqa: PLR0917 -- click hands every option over as an argument
           api: Any, targets: tuple[str, ...], from_file: str | None, do_finalize: bool, no_wait: bool,
           write_binrepos: Path | None, client_name: str | None, timeout: float | None) -> None:
    """Build this machine's world (or ATOMs) on the swarm, as its own emerge would.

    Resolves what `emerge -uDN @world` would build (Portage's resolver, with each package's USE
    and build-time dependencies, and this machine's CHOST, profile and flags), submits it, shows
    the progress until it is built, and prints the binrepos.conf entry and the emerge command.
    """
    from swarmmesh import client as run

    text = None if from_file is None else _decode(_read(from_file), "stdin" if from_file == "-" else from_file)
    plan, wanted = run.plan(targets, text)
    for kind, count in sorted(plan.skipped.items()):
        click.echo(f"not built: {count} [{kind}] line(s)", err=True)
    reply = run.submit(api, plan, client_name or run.default_name())
    batch = reply["batch"]
    click.echo(f"queued batch {batch}: {reply['count']} packages ({reply['new']} new)")
    if no_wait:
        return
    done = run.watch(api, batch, lambda p: click.echo(p.line()), timeout=timeout)
    from swarmmesh.views import one_line

    for key, error in done.failed:
        click.echo(f"failed: {key}: {one_line(error)}", err=True)
    url = api.binhost()
    if do_finalize:
        release = run.finalize(api, timeout=timeout if timeout is not None else 600.0)
        click.echo(f"released {release}")
        url = run.served_at(api, release, timeout=timeout if timeout is not None else 600.0)
    entry = run.binrepos_entry(url)
    if write_binrepos is not None:
        run.write_binrepos(write_binrepos, entry)
        click.echo(f"wrote {write_binrepos}")
    else:
        click.echo(f"# binrepos.conf entry (e.g. /etc/portage/binrepos.conf/swarmmesh.conf):\n{entry}", nl=False)
    click.echo("then run: " + " ".join(run.emerge_command(wanted)))
    if done.failed:
        raise click.exceptions.Exit(1)


client.hidden = True  # `swarmmesh client world|ATOM...`: the client group's default command
client_group.add_command(cli.commands.pop("client"), "build")
cli.add_command(client_group)


# --- keys -------------------------------------------------------------------------------

@cli.command()
@click.argument("name", required=False)
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where to write the key files (never overwritten).")
@click.option("--role", type=click.Choice(["drone", "gateway", "client", "orchestrator"]), default="drone",
              show_default=True, help="What the key may do on an orchestrator (written into the key file).")
@click.option("--signing", is_flag=True, help="Make the swarm's OpenPGP package-signing key instead (no NAME).")
def keygen(name: str | None, directory: Path, role: str, signing: bool) -> None:
    """Write a CURVE key pair for node NAME into DIR (NAME.key public, NAME.key_secret 0600).

    Give the node its NAME.key_secret (its config's [keys] dir) and copy NAME.key into every
    orchestrator's authorized_keys directory: it is accepted at its next connection.

    With --signing: the OpenPGP key orchestrators sign packages with, signing-key.sec.asc
    (secret, mode 0600: name it in [signing] key_file) and signing-key.asc (public: what
    clients trust).
    """
    if signing:
        if name is not None:
            raise click.UsageError("--signing makes the swarm's one signing key: give no NAME")
        from swarmmesh.signing import generate_key

        made = generate_key(directory)
        click.echo(f"wrote {made.secret} (secret: [signing] key_file) and {made.public} (public)")
        click.echo(f"fingerprint {made.fingerprint}")
        return
    if name is None:
        raise click.UsageError("NAME is required: the node the key pair is for (e.g. drone-3), or --signing")
    from swarmmesh import keys

    public, secret = keys.keygen(name, directory, role=role)
    click.echo(f"wrote {public} (public: copy it into the orchestrators' authorized_keys)")
    click.echo(f"wrote {secret} (secret: keep it on {name} only)")


# --- local clusters ---------------------------------------------------------------------

@cli.group()
def cluster() -> None:
    """Create, start and stop a cluster on this machine."""


_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_node_option = click.option("--node", "nodes", multiple=True, metavar="NAME",
                            help="Only this node (repeatable; default: all).")


@cluster.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--orchestrators", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--drones", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--base-port", type=click.IntRange(0, 65535), default=7100, show_default=True,
              help="First port to use; 0 asks the kernel for free ports.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every node binds.")
@click.option("--signing/--no-signing", default=True, show_default=True,
              help="Make a signing key (DIRECTORY/signing/) the orchestrators sign packages with.")
def cluster_init(directory: Path, orchestrators: int, drones: int, base_port: int, host: str,  # noqa: PLR0917
                 signing: bool) -> None:
    """Write one config file per node (and a gateway's) into DIRECTORY."""
    from swarmmesh import cluster as local

    for path in local.init_cluster(directory, orchestrators=orchestrators, drones=drones,
                                   base_port=base_port, host=host, sign=signing):
        click.echo(f"wrote {path}")


@cluster.command("up")
@click.argument("directory", type=_EXISTING_DIR)
@_node_option
@click.option("--no-wait", is_flag=True, help="Do not wait for the nodes to report ready.")
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="S")
def cluster_up(directory: Path, nodes: tuple[str, ...], no_wait: bool, timeout: float) -> None:
    """Start the nodes of DIRECTORY in the background."""
    from swarmmesh import cluster as local

    for node in local.up(directory, nodes=list(nodes) or None, wait=not no_wait, timeout=timeout):
        click.echo(f"started {node.name} ({node.role}, pid {node.pid}), log {node.log}")


@cluster.command("down")
@click.argument("directory", type=_EXISTING_DIR)
@_node_option
@click.option("--kill", is_flag=True, help="SIGKILL instead of a clean shutdown.")
def cluster_down(directory: Path, nodes: tuple[str, ...], kill: bool) -> None:
    """Stop the nodes of DIRECTORY."""
    from swarmmesh import cluster as local

    for node in local.down(directory, nodes=list(nodes) or None, kill=kill):
        click.echo(f"stopped {node.name} ({node.role}, pid {node.pid})")


def _node_dict(node: Any) -> dict:
    return {"name": node.name, "role": node.role, "config": str(node.config), "pid": node.pid,
            "alive": bool(node.alive), "log": str(node.log)}


@cluster.command("status")
@click.argument("directory", type=_EXISTING_DIR)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node, in a list.")
def cluster_status(directory: Path, as_json: bool) -> None:
    """Show which nodes of DIRECTORY are running."""
    from swarmmesh import cluster as local

    nodes = [_node_dict(node) for node in local.status(directory)]
    if as_json:
        _echo_json(nodes)
        return
    for node in nodes:
        state = f"running (pid {node['pid']})" if node["alive"] else "stopped"
        click.echo(f"{node['name']:<16} {node['role']:<13} {state:<20} {node['log']}")


@cli.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the cluster directory (configs, logs, data) here instead of a temp dir.")
def demo(keep: Path | None) -> None:
    """The main job: a real local cluster builds, survives its leader's SIGKILL, and releases."""
    from swarmmesh.demo import run_demo

    logs.configure(_log_level("warning"))
    report = run_demo(click.echo, keep=keep)
    _echo_lines(report.lines())
    if not report.ok:
        raise click.exceptions.Exit(1)


# --- entry points -----------------------------------------------------------------------

def main(args: list[str] | None = None) -> None:
    """Console-script entry (`swarmmesh`); exits the process with the command's code."""
    cli.main(args=args, prog_name="swarmmesh")


COORDINATOR_USAGE = "\n".join([
    "Usage: swarm-coordinator COMMAND [ARGS]...", "",
    "  The commands of the old build swarm, run by swarmmesh.", "", "Commands:",
    *(f"  {f'{old} {args}':<22} {summary:<49} (swarmmesh {new})"
      for old, (args, new, summary) in COORDINATOR_COMMANDS.items()),
    "", "The gateway is --gateway URL or env SWARMMESH_GATEWAY (see `swarmmesh submit --help`).", ""])


def coordinator_main(args: list[str] | None = None) -> None:
    """Entry point of `swarm-coordinator`: map an old command onto `main`."""
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] in (["-h"], ["--help"]):
        click.echo(COORDINATOR_USAGE, nl=False)
        sys.exit(0)
    command = COORDINATOR_COMMANDS[args[0]][1] if args and args[0] in COORDINATOR_COMMANDS else None
    if command is None or (command == "submit" and len(args) < 2):
        problem = f"unknown command {args[0]!r}" if args and command is None else "missing command or FILE"
        click.echo(f"{COORDINATOR_USAGE}\nswarm-coordinator: error: {problem}", err=True)
        sys.exit(2)
    main([command, *args[1:]])
