"""`memring`: run a local cluster (`up`), look at one (`status`), change its topology and config.

Without `--etcd`, a command uses the etcd that `memring up` recorded in its state file for the
cluster (cluster.launcher.state_path), else $MEMRING_ETCD, else http://127.0.0.1:2379. The
"etcd security" flags (cluster.etcd_security) come from the command line, else $MEMRING_ETCD_*,
else the state file when the etcd URL came from it. Exit codes: 0 ok, 1 runtime failure
(`status` with a shard that has no leader, etcd refusing our credentials), 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from memring.cluster import etcd_security
from memring.cluster.auth_file import load_credentials
from memring.cluster.coordinator import (
    ClusterConfig,
    ClusterView,
    CoordinatorError,
    ElectionHint,
    Incarnation,
    ShardExists,
    ShardRecord,
)
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.launcher import plan_from_file, plan_from_flags, read_state, up
from memring.cluster.node_stats import fetch_all
from memring.cluster.status import (
    addresses,
    etcd_channel,
    healthy,
    render_table,
    status_doc,
    with_rates,
)
from memring.netio import logs
from memring.protocol.ascii_auth import AuthFileError, Login

DEFAULT_ETCD = "http://127.0.0.1:2379"
WATCH_INTERVAL = 1.0
HINT_TTL = 5.0        # lease of an election hint (`leader transfer`, `shard elect`)
HANDOVER_WAIT = 5.0   # how long an operation waits for the shard's new leader
POLL = 0.02


class UsageError(Exception):
    """Bad usage: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memring", description="Run a local memring cluster, look at one, change its "
        "topology and settings.", epilog="Without --etcd: the etcd `memring up` recorded for "
        f"the cluster, else $MEMRING_ETCD, else {DEFAULT_ETCD}.")
    parser.add_argument("--log-level", choices=logs.LEVELS,
                        help="debug, info (default), warning or error; `memring up` passes "
                        "it on to its processes (as $MEMRING_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=logs.FORMATS,
                        help="logfmt (default) or json: one line per event")
    commands = parser.add_subparsers(dest="command", required=True)
    clustered: list[argparse.ArgumentParser] = []

    def with_cluster(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--etcd", help="etcd URLs, http://HOST:PORT[,...] or all https:// "
                                      "(default: the one `memring up` recorded, else "
                                      + DEFAULT_ETCD + ")")
        p.add_argument("--cluster", help="cluster name (default memring)")
        clustered.append(p)
        return p

    run = with_cluster(commands.add_parser(
        "up", help="a whole local cluster in the foreground: etcd, backends, a proxy"))
    run.add_argument("--config", help="cluster file (TOML, see etc/cluster.toml)")
    run.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    run.add_argument("--replicas", type=int, default=2, help="nodes per shard (default 2)")
    run.add_argument("--port", type=int, default=11211, help="the proxy's port (default 11211)")
    run.add_argument("--metrics", action="store_true",
                     help="serve Prometheus /metrics from every backend and proxy (free ports, "
                     "printed at start)")
    run.add_argument("--secure", action="store_true",
                     help="turn every protection on: a private CA and certificates in the run "
                     "directory, TLS for clients (proxies) and mutual TLS to the backends, an "
                     "auth file with a generated user and password (unless --auth-file), the "
                     "peer secret, and etcd with TLS, client certificates and a user")
    run_auth = run.add_argument_group("authentication")
    run_auth.add_argument("--auth-file", metavar="FILE",
                          help="memcached's ASCII auth on every backend and proxy (their "
                          "--auth-file); the proxies authenticate to the backends as FILE's "
                          "first user, and `memring status` finds the file in the state file")
    secret = run.add_mutually_exclusive_group()
    secret.add_argument("--peer-secret-file", metavar="FILE",
                        help="the backends' replication secret (default: a new random one in "
                        "the run directory, mode 0600)")
    secret.add_argument("--no-peer-secret", action="store_true",
                        help="replicate without authentication (one machine only)")

    status = with_cluster(commands.add_parser(
        "status", help="shards, leaders, epochs, ISR; exit 1 when a shard has no leader"))
    status.add_argument("--json", action="store_true", help="print JSON once, for scripts")
    status.add_argument("--watch", action="store_true", help="refresh every second")
    authentication = status.add_argument_group("authentication")
    authentication.add_argument(
        "--auth-file", default=os.environ.get("MEMRING_AUTH_FILE"), metavar="FILE",
        help="the nodes' --auth-file (or MEMRING_AUTH_FILE; default: the one `memring up` "
        "recorded): its first user asks them for `stats`")
    status_tls = status.add_argument_group(
        "TLS", "how to reach nodes and proxies that serve TLS (default: the files `memring up "
        "--secure` recorded); a node that refuses TLS is asked again in plain text")
    status_tls.add_argument("--tls-ca", metavar="FILE", help="CA their certificates chain to")
    status_tls.add_argument("--tls-cert", metavar="FILE",
                            help="a client certificate, for nodes with --tls-verify require")
    status_tls.add_argument("--tls-key", metavar="FILE", help="its key (default: in --tls-cert)")

    shard = commands.add_parser("shard", help="list, add or remove shards")
    shard_commands = shard.add_subparsers(dest="shard_command", required=True)
    with_cluster(shard_commands.add_parser("list", help="the shard records"))
    add = with_cluster(shard_commands.add_parser("add", help="add a shard record"))
    add.add_argument("shard_id")
    add.add_argument("--weight", type=int, default=1)
    remove = with_cluster(shard_commands.add_parser(
        "remove", help="take a shard off the ring (its record, leader and ISR keys)"))
    remove.add_argument("shard_id")
    elect = with_cluster(shard_commands.add_parser(
        "elect", help="elect a leader for a shard that has none"))
    elect.add_argument("shard_id")
    elect.add_argument("--unclean", action="store_true",
                       help="when no in-sync replica is alive, let a live member win (the "
                            "writes only the lost replicas had are gone)")

    leader = commands.add_parser("leader", help="move a shard's leadership")
    leader_commands = leader.add_subparsers(dest="leader_command", required=True)
    transfer = with_cluster(leader_commands.add_parser(
        "transfer", help="make NODE (alive, in sync) the leader of SHARD"))
    transfer.add_argument("shard_id")
    transfer.add_argument("node_id")

    node = commands.add_parser("node", help="drain, remove, probe or step down a node")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    drain = with_cluster(node_commands.add_parser(
        "drain", help="the node stops leading and serving reads (persistent)"))
    drain.add_argument("node_id")
    drain.add_argument("--undo", action="store_true", help="take the node back")
    drop = with_cluster(node_commands.add_parser(
        "remove", help="drop the node from its shard (stop its backend first)"))
    drop.add_argument("node_id")
    ready = with_cluster(node_commands.add_parser(
        "ready", help="exit 0 when the node leads its shard or is in sync with its leader "
        "(a readiness probe), else 1 saying why"))
    ready.add_argument("node_id")
    step_down = with_cluster(node_commands.add_parser(
        "step-down", help="if the node leads its shard, hand leadership to an in-sync "
        "replica and wait for it (before stopping the node); else nothing to do"))
    step_down.add_argument("node_id")

    config = commands.add_parser("config", help="get or set the cluster-wide settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    get = with_cluster(config_commands.add_parser("get", help="all settings, or one"))
    get.add_argument("key", nargs="?")
    put = with_cluster(config_commands.add_parser("set", help="change one setting"))
    put.add_argument("key")
    put.add_argument("value")
    for p in clustered:  # last among each command's flags
        etcd_security.add_arguments(p)
    return parser


def _cluster(args: argparse.Namespace) -> str:
    return str(args.cluster or os.environ.get("MEMRING_CLUSTER") or "memring")


def _etcd_and_security(args: argparse.Namespace) -> tuple[str, EtcdSecurity]:
    """The etcd URLs and how to reach them: each option from its flag, else $MEMRING_ETCD_*,
    else the state file `memring up` wrote (only with the URL it recorded)."""
    recorded: dict[str, Any] = {}
    if args.etcd:
        url = str(args.etcd)
    else:
        state = read_state(_cluster(args))
        if state and isinstance(state.get("etcd"), str):
            url = str(state["etcd"])
            recorded = state.get("etcd_security") or {}
        else:
            url = os.environ.get("MEMRING_ETCD") or DEFAULT_ETCD
    values = [str(getattr(args, name, None) or os.environ.get("MEMRING_" + name.upper())
                  or recorded.get(name) or "") for name in etcd_security.FIELDS]
    return url, EtcdSecurity(*values)


def _with_etcd(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    from memring.cluster.etcd_coordinator import EtcdCoordinator

    async def run() -> int:
        url, security = _etcd_and_security(args)
        async with EtcdCoordinator.connect(url, _cluster(args), security=security) as etcd:
            return await action(etcd)

    try:
        return trio.run(run)
    except ValueError as exc:  # a bad URL or id
        raise UsageError(str(exc)) from None
    except CoordinatorError as exc:
        print(f"memring: error: {exc}", file=sys.stderr)
        return 1


async def _status_doc(etcd: Any, login: Login | None = None,
                      tls: ssl.SSLContext | None = None,
                      etcd_link: dict[str, Any] | None = None) -> dict[str, Any]:
    view = await etcd.snapshot()
    stats = await fetch_all(addresses(view), login=login, tls=tls,
                            settings_of=frozenset(n.address for n in view.nodes.values()),
                            plain_fallback=True)
    return status_doc(view, stats, etcd_link)


def _status_tls(args: argparse.Namespace, state: dict[str, Any] | None
                ) -> ssl.SSLContext | None:
    """The client context for nodes serving TLS: the flags, else the state file's files."""
    recorded = (state or {}).get("tls") or {}
    ca, cert, key = (str(getattr(args, name) or recorded.get(name) or "")
                     for name in ("tls_ca", "tls_cert", "tls_key"))
    if key and not cert:
        raise UsageError("--tls-key without --tls-cert")
    if not (ca or cert):
        return None
    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"TLS files: {exc}") from None
    return context


def _status(args: argparse.Namespace) -> int:
    state = read_state(_cluster(args)) if not args.etcd else None  # what `memring up` recorded
    auth_file = args.auth_file or (state or {}).get("auth_file")
    try:
        login = load_credentials(str(auth_file)).first() if auth_file else None
    except AuthFileError as exc:
        raise UsageError(str(exc)) from None
    tls = _status_tls(args, state)
    url, security = _etcd_and_security(args)
    channel = etcd_channel(url, security)

    async def once(etcd: Any) -> int:
        doc = await _status_doc(etcd, login, tls, channel)
        print(json.dumps(doc, indent=2) if args.json else render_table(doc), flush=True)
        return 0 if healthy(doc) else 1

    async def refresh(etcd: Any) -> None:
        previous: dict[str, Any] | None = None
        taken = 0.0
        while True:  # bounded by Ctrl-C or SIGTERM (watch)
            try:
                now = trio.current_time()
                doc = with_rates(await _status_doc(etcd, login, tls, channel), previous,
                                 now - taken)
                previous, taken = doc, now
            except CoordinatorError as exc:
                print(f"memring: etcd: {exc}", file=sys.stderr, flush=True)
            else:
                if args.json:
                    print(json.dumps(doc), flush=True)
                else:
                    print("\x1b[H\x1b[2J" + render_table(doc), flush=True)
            await trio.sleep(WATCH_INTERVAL)

    async def watch(etcd: Any) -> int:
        # Its own handlers, not KeyboardInterrupt: a process started with SIGINT ignored
        # (a background job of a non-interactive shell, as CI starts tests) gets no
        # KeyboardInterrupt from Python, and Ctrl-C sent to it was ignored for good.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(refresh, etcd)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        return 0

    if args.watch:
        return _with_etcd(args, watch)
    return _with_etcd(args, once)


def _shard(args: argparse.Namespace) -> int:
    async def run(etcd: Any) -> int:
        if args.shard_command == "list":
            view = await etcd.snapshot()
            for shard_id, shard in sorted(view.shards.items()):
                if shard.record is None:
                    continue
                leader = shard.leader.node_id if shard.leader else "-"
                print(f"{shard_id}  weight {shard.record.weight}  leader {leader}  "
                      f"replicas {','.join(shard.record.replicas) or '-'}")
            return 0
        if args.shard_command == "add":
            if args.weight < 1:
                raise UsageError("--weight must be at least 1")
            try:
                await etcd.add_shard(ShardRecord(args.shard_id, (), args.weight))
            except ShardExists as exc:
                print(f"memring: error: {exc}", file=sys.stderr)
                return 1
            print(f"shard {args.shard_id} added")
            return 0
        if args.shard_command == "elect":
            return await _elect(args, etcd)
        if not await etcd.remove_shard(args.shard_id):
            print(f"memring: error: no shard {args.shard_id!r}", file=sys.stderr)
            return 1
        print(f"shard {args.shard_id} removed from the ring")
        return 0

    return _with_etcd(args, run)


def _fail(message: str) -> int:
    print(f"memring: error: {message}", file=sys.stderr)
    return 1


def _live_members(view: ClusterView, shard_id: str) -> dict[str, Incarnation]:
    return {n: Incarnation(n, view.lease_of(view.keyspace.node(n)))
            for n, record in view.nodes.items() if record.shard == shard_id}


async def _await_leader(etcd: Any, shard_id: str, wanted: Callable[[str], bool],
                        timeout: float) -> ClusterView | None:
    """Poll until the shard's leader is a node `wanted` accepts; None after `timeout`."""
    with trio.move_on_after(timeout):
        while True:
            view: ClusterView = await etcd.snapshot()
            shard = view.shards.get(shard_id)
            leader = shard.leader.node_id if shard and shard.leader else None
            if leader is not None and wanted(leader):
                return view
            await trio.sleep(POLL)
    return None


async def _hinted_election(etcd: Any, shard_id: str, hint: ElectionHint) -> int:
    """Write the hint under a short lease, wait for its node to lead, then drop the hint."""
    started = trio.current_time()
    lease = await etcd.put_hint(shard_id, hint, HINT_TTL)
    try:
        view = await _await_leader(etcd, shard_id, lambda n: n == hint.node_id, HINT_TTL)
    finally:
        with trio.CancelScope(shield=True):
            await etcd.revoke(lease)
    if view is None:
        return _fail(f"{hint.node_id} did not become the leader of {shard_id} within "
                     f"{HINT_TTL:g}s; the ordinary election goes on")
    print(f"{hint.node_id} leads shard {shard_id} (epoch {view.shards[shard_id].epoch}) "
          f"after {(trio.current_time() - started) * 1000:.0f} ms")
    return 0


def _leader(args: argparse.Namespace) -> int:
    async def run(etcd: Any) -> int:
        view = await etcd.snapshot()
        shard = view.shards.get(args.shard_id)
        if shard is None or shard.record is None:
            return _fail(f"no shard {args.shard_id!r}")
        if shard.leader is not None and shard.leader.node_id == args.node_id:
            print(f"{args.node_id} already leads shard {args.shard_id}")
            return 0
        live = _live_members(view, args.shard_id)
        if args.node_id not in live:
            return _fail(f"{args.node_id} is not a live member of shard {args.shard_id}")
        if shard.drained(args.node_id):
            return _fail(f"{args.node_id} is drained (`memring node drain "
                         f"{args.node_id} --undo` first)")
        if shard.isr is None or live[args.node_id] not in shard.isr.members:
            return _fail(f"{args.node_id} is not in sync with shard {args.shard_id}")
        return await _hinted_election(etcd, args.shard_id, ElectionHint(args.node_id))

    return _with_etcd(args, run)


def _elect(args: argparse.Namespace, etcd: Any) -> Awaitable[int]:
    async def run() -> int:
        view = await etcd.snapshot()
        shard = view.shards.get(args.shard_id)
        if shard is None or shard.record is None:
            return _fail(f"no shard {args.shard_id!r}")
        if shard.leader is not None:
            print(f"shard {args.shard_id} already has a leader: {shard.leader.node_id}")
            return 0
        live = {n: inc for n, inc in _live_members(view, args.shard_id).items()
                if not shard.drained(n)}
        if not live:
            return _fail(f"shard {args.shard_id} has no live member that is not drained")
        isr = set(shard.isr.members) if shard.isr else set()
        in_sync = sorted(n for n, inc in live.items() if inc in isr or not isr)
        if in_sync:
            return await _hinted_election(etcd, args.shard_id, ElectionHint(in_sync[0]))
        # until replication reports applied positions, any live member is as good as another
        chosen = sorted(live)[0]
        if not args.unclean:
            return _fail(f"no in-sync replica of shard {args.shard_id} is alive; `memring "
                         f"shard elect {args.shard_id} --unclean` would elect {chosen} (the "
                         "writes only the lost replicas had are gone)")
        print(f"shard {args.shard_id}: unclean election of {chosen}", file=sys.stderr)
        return await _hinted_election(etcd, args.shard_id, ElectionHint(chosen, unclean=True))

    return run()


def _readiness(view: ClusterView, node_id: str) -> str | None:
    """None when `node_id`'s current incarnation leads its shard or is in the shard's ISR
    (what `memring status` shows as in sync), else why not. A node restarted after a kill
    is a new incarnation: its previous one may still hold the leader key (until its lease
    expires), which makes the new one no leader and no copy of the data."""
    record = view.nodes.get(node_id)
    if record is None:
        return f"{node_id} is not registered (not started, or its lease expired)"
    shard = view.shards.get(record.shard)
    if shard is None or shard.leader is None:
        return f"shard {record.shard} has no leader"
    lease = view.lease_of(view.keyspace.node(node_id))
    leader = shard.leader
    if leader.node_id == node_id and leader.lease_id == lease:
        return None
    if shard.isr is None or Incarnation(node_id, lease) not in shard.isr.members:
        previous = " (its previous incarnation)" if leader.node_id == node_id else ""
        return f"{node_id} is not in sync with {leader.node_id}{previous}, the leader of " \
               f"shard {record.shard} (catching up)"
    return None


async def _step_down(etcd: Any, node_id: str) -> int:
    """Hand the leadership of `node_id`'s shard to its first alive, in-sync, not drained
    other member; 0 also when `node_id` does not lead (nothing to hand over)."""
    view: ClusterView = await etcd.snapshot()
    record = view.nodes.get(node_id)
    shard = view.shards.get(record.shard) if record is not None else None
    if record is None or shard is None or shard.leader is None \
            or shard.leader.node_id != node_id:
        print(f"{node_id} leads no shard: nothing to hand over")
        return 0
    isr = set(shard.isr.members) if shard.isr is not None else set()
    candidates = sorted(n for n, inc in _live_members(view, record.shard).items()
                        if n != node_id and inc in isr and not shard.drained(n))
    if not candidates:
        return _fail(f"no other in-sync replica of shard {record.shard} to hand over to; "
                     f"{node_id} resigns when it stops")
    return await _hinted_election(etcd, record.shard, ElectionHint(candidates[0]))


def _node_op(args: argparse.Namespace) -> int:
    async def run(etcd: Any) -> int:
        if args.node_command == "ready":
            problem = _readiness(await etcd.snapshot(), args.node_id)
            print(f"{args.node_id} is ready" if problem is None else f"not ready: {problem}")
            return 0 if problem is None else 1
        if args.node_command == "step-down":
            return await _step_down(etcd, args.node_id)
        if args.node_command == "remove":
            shard_id, registered = await etcd.remove_node(args.node_id)
            print(f"node {args.node_id} removed from shard {shard_id}"
                  + (" (its lease revoked; a backend still running joins again)"
                     if registered else ""))
            return 0
        before: ClusterView = await etcd.snapshot()
        record = await etcd.drain_node(args.node_id, not args.undo)
        if args.undo:
            print(f"node {args.node_id} of shard {record.shard_id} is no longer drained")
            return 0
        shard = before.shards.get(record.shard_id)
        if shard is None or shard.leader is None or shard.leader.node_id != args.node_id:
            print(f"node {args.node_id} of shard {record.shard_id} drained")
            return 0
        # it led: it resigns on its own; wait (bounded) for another node to lead
        view = await _await_leader(etcd, record.shard_id, lambda n: n != args.node_id,
                                   HANDOVER_WAIT)
        new = view.shards[record.shard_id].leader if view else None
        if new is None:
            print(f"node {args.node_id} of shard {record.shard_id} drained; it resigned but "
                  f"no other node leads yet")
            return 0
        print(f"node {args.node_id} of shard {record.shard_id} drained; {new.node_id} leads")
        return 0

    return _with_etcd(args, run)


def _config(args: argparse.Namespace) -> int:
    kinds = {f.name: f.type for f in dataclasses.fields(ClusterConfig)}

    async def run(etcd: Any) -> int:
        config = await etcd.get_config() or ClusterConfig()
        if args.config_command == "get":
            values = dataclasses.asdict(config)
            if args.key is None:
                print(json.dumps(values, indent=2))
            elif args.key in values:
                print(values[args.key])
            else:
                raise UsageError(f"unknown setting {args.key!r}: one of {', '.join(kinds)}")
            return 0
        if args.key not in kinds:
            raise UsageError(f"unknown setting {args.key!r}: one of {', '.join(kinds)}")
        kind = {"int": int, "float": float}.get(str(kinds[args.key]), str)
        try:
            new = dataclasses.replace(config, **{args.key: kind(args.value)})
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        await etcd.put_config(new)
        print(f"{args.key} = {getattr(new, args.key)}")
        return 0

    return _with_etcd(args, run)


def _up(args: argparse.Namespace) -> int:
    try:
        if args.config:
            plan = plan_from_file(args.config, args.cluster, args.shards, args.replicas)
        else:
            plan = plan_from_flags(_cluster(args), args.shards, args.replicas)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 1-65535")
    security = EtcdSecurity()
    if args.etcd:  # the given etcd's TLS files and user go to every backend and proxy
        security = _etcd_and_security(args)[1]
        try:
            security.check(args.etcd)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif any(getattr(args, name) for name in etcd_security.FIELDS):
        raise UsageError("the etcd security flags describe a given etcd: they need --etcd "
                         "URLS (without it, `memring up` starts an etcd of its own)")
    if args.auth_file:
        try:
            load_credentials(args.auth_file)
        except AuthFileError as exc:
            raise UsageError(str(exc)) from None
    secret = "" if args.no_peer_secret else args.peer_secret_file
    if secret and not os.path.isfile(secret):
        raise UsageError(f"--peer-secret-file {secret}: no such file")
    if args.secure and (args.etcd or args.no_peer_secret):
        raise UsageError("--secure starts and secures an etcd of its own and authenticates "
                         "the peer links: not with --etcd or --no-peer-secret")
    return up(plan, args.port, args.etcd, metrics=args.metrics, etcd_security=security,
              auth_file=os.path.abspath(args.auth_file) if args.auth_file else "",
              peer_secret_file=secret, secure=args.secure)


def _configure_logs(args: argparse.Namespace) -> None:
    """Log as asked; an explicit choice goes to the processes `memring up` starts, too."""
    for name in ("log_level", "log_format"):
        if getattr(args, name):
            os.environ["MEMRING_" + name.upper()] = getattr(args, name)
    level = os.environ.get("MEMRING_LOG_LEVEL", "info")
    fmt = os.environ.get("MEMRING_LOG_FORMAT", "logfmt")
    problem = logs.check(level, fmt)
    if problem:
        raise UsageError(problem)
    logs.configure(level, fmt)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"up": _up, "status": _status, "shard": _shard, "config": _config,
                "leader": _leader, "node": _node_op}
    try:
        _configure_logs(args)
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"memring: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
