"""`memring`: run a local cluster (`up`), look at one (`status`), change its topology and config.

Without `--etcd`, a command uses the etcd that `memring up` recorded in its state file for the
cluster (cluster.launcher.state_path), else $MEMRING_ETCD, else http://127.0.0.1:2379. Exit
codes: 0 ok, 1 runtime failure (or `status` with a shard that has no leader), 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cluster.coordinator import ClusterConfig, CoordinatorError, ShardExists, ShardRecord
from cluster.launcher import plan_from_file, plan_from_flags, read_state, up
from cluster.status import healthy, render_table, status_doc

DEFAULT_ETCD = "http://127.0.0.1:2379"
WATCH_INTERVAL = 1.0


class UsageError(Exception):
    """Bad usage: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memring", description="Run a local memring cluster, look at one, change its "
        "topology and settings.", epilog="Without --etcd: the etcd `memring up` recorded for "
        f"the cluster, else $MEMRING_ETCD, else {DEFAULT_ETCD}.")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_cluster(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--etcd", help="etcd URLs, http://HOST:PORT[,...] (default: the one "
                                      "`memring up` recorded, else " + DEFAULT_ETCD + ")")
        p.add_argument("--cluster", help="cluster name (default memring)")
        return p

    run = with_cluster(commands.add_parser(
        "up", help="a whole local cluster in the foreground: etcd, backends, a proxy"))
    run.add_argument("--config", help="cluster file (TOML, see etc/cluster.toml)")
    run.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    run.add_argument("--replicas", type=int, default=2, help="nodes per shard (default 2)")
    run.add_argument("--port", type=int, default=11211, help="the proxy's port (default 11211)")

    status = with_cluster(commands.add_parser(
        "status", help="shards, leaders, epochs, ISR; exit 1 when a shard has no leader"))
    status.add_argument("--json", action="store_true", help="print JSON once, for scripts")
    status.add_argument("--watch", action="store_true", help="refresh every second")

    shard = commands.add_parser("shard", help="list, add or remove shards")
    shard_commands = shard.add_subparsers(dest="shard_command", required=True)
    with_cluster(shard_commands.add_parser("list", help="the shard records"))
    add = with_cluster(shard_commands.add_parser("add", help="add a shard record"))
    add.add_argument("shard_id")
    add.add_argument("--weight", type=int, default=1)
    remove = with_cluster(shard_commands.add_parser(
        "remove", help="take a shard off the ring (its record, leader and ISR keys)"))
    remove.add_argument("shard_id")

    config = commands.add_parser("config", help="get or set the cluster-wide settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    get = with_cluster(config_commands.add_parser("get", help="all settings, or one"))
    get.add_argument("key", nargs="?")
    put = with_cluster(config_commands.add_parser("set", help="change one setting"))
    put.add_argument("key")
    put.add_argument("value")
    return parser


def _cluster(args: argparse.Namespace) -> str:
    return str(args.cluster or os.environ.get("MEMRING_CLUSTER") or "memring")


def _etcd(args: argparse.Namespace) -> str:
    if args.etcd:
        return str(args.etcd)
    state = read_state(_cluster(args))
    if state and isinstance(state.get("etcd"), str):
        return str(state["etcd"])
    return os.environ.get("MEMRING_ETCD") or DEFAULT_ETCD


def _with_etcd(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    from cluster.etcd_coordinator import EtcdCoordinator

    async def run() -> int:
        async with EtcdCoordinator.connect(_etcd(args), _cluster(args)) as etcd:
            return await action(etcd)

    try:
        return trio.run(run)
    except ValueError as exc:  # a bad URL or id
        raise UsageError(str(exc)) from None
    except CoordinatorError as exc:
        print(f"memring: error: {exc}", file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    async def once(etcd: Any) -> int:
        doc = status_doc(await etcd.snapshot())
        print(json.dumps(doc, indent=2) if args.json else render_table(doc), flush=True)
        return 0 if healthy(doc) else 1

    async def watch(etcd: Any) -> int:
        code = 0
        while True:  # bounded by Ctrl-C
            try:
                doc = status_doc(await etcd.snapshot())
            except CoordinatorError as exc:
                print(f"memring: etcd: {exc}", file=sys.stderr, flush=True)
                code = 1
            else:
                code = 0 if healthy(doc) else 1
                if args.json:
                    print(json.dumps(doc), flush=True)
                else:
                    print("\x1b[H\x1b[2J" + render_table(doc), flush=True)
            await trio.sleep(WATCH_INTERVAL)
        return code

    if args.watch:
        try:
            return _with_etcd(args, watch)
        except KeyboardInterrupt:
            return 0
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
        if not await etcd.remove_shard(args.shard_id):
            print(f"memring: error: no shard {args.shard_id!r}", file=sys.stderr)
            return 1
        print(f"shard {args.shard_id} removed from the ring")
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
    return up(plan, args.port, args.etcd)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"up": _up, "status": _status, "shard": _shard, "config": _config}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"memring: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
