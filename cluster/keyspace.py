"""The etcd keyspace of one memring cluster, and the key-value operations both stores speak.

Every key of a cluster lives under one prefix, `/memring/<cluster>/`:

    nodes/<node>           NodeRecord      bound to the node's lease (membership)
    config                 ClusterConfig   persistent
    shards/<shard>         ShardRecord     persistent (topology: replicas, weight, drained)
    shards/<shard>/leader  LeaderRecord    bound to the leader's lease; create revision = epoch
    shards/<shard>/isr     IsrRecord       persistent; written in a txn fenced on the epoch
    shards/<shard>/hint    ElectionHint    bound to a short lease of the operator's command
    proxies/<proxy>        ProxyRecord     bound to the proxy's lease

Operations (`memring leader transfer`, `node drain/remove`, `shard elect`) add no process of
their own; they write these keys and the members react:

- A drained node is listed in its shard record's `drained` (persistent, until `memring node
  drain NODE --undo` or `node remove`): it never campaigns (the campaign txn compares the shard
  record), resigns if it leads, and proxies send it no reads.
- The election hint names the one node that may campaign while it lives (the campaign txn
  compares it), with `unclean` set by `memring shard elect --unclean`. `leader transfer` writes
  it under a lease of a few seconds; the current leader, seeing a hint for another live node,
  stops acknowledging writes and resigns; the named node wins; the command then revokes the
  hint's lease. If it fails, the hint expires and the ordinary election resumes.
- `node remove` drops a node from its shard record and revokes its lease if it is registered.

`Keyspace` builds and parses these paths. The small operation types below (`Compare`, `Put`,
`Delete`, `Entry`, `KeyEvent`, `WatchBatch`) are etcd's v3 KV model reduced to what memring
uses; the etcd client translates them to gRPC messages and the in-memory fake evaluates them,
so the coordination logic above them is written once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")

KeyKind = Literal["node", "config", "shard", "leader", "isr", "hint", "proxy"]


def check_id(what: str, value: str) -> str:
    """Return `value` if it can be one path segment of a key, else raise ValueError."""
    if not _ID.match(value):
        raise ValueError(
            f"bad {what} id {value!r}: use 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class KeyRef:
    """What a key of the keyspace names: its kind and the id it is about ("" for config)."""

    kind: KeyKind
    ident: str = ""


class Keyspace:
    """The paths of one cluster's keys under `<root>/<cluster>/`."""

    def __init__(self, cluster: str, root: str = "/memring") -> None:
        self.cluster = check_id("cluster", cluster)
        self.prefix = f"{root.rstrip('/')}/{cluster}/"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}nodes/{check_id('node', node_id)}"

    def config(self) -> str:
        return f"{self.prefix}config"

    def shard(self, shard_id: str) -> str:
        return f"{self.prefix}shards/{check_id('shard', shard_id)}"

    def leader(self, shard_id: str) -> str:
        return f"{self.shard(shard_id)}/leader"

    def isr(self, shard_id: str) -> str:
        return f"{self.shard(shard_id)}/isr"

    def hint(self, shard_id: str) -> str:
        return f"{self.shard(shard_id)}/hint"

    def shards_prefix(self) -> str:
        return f"{self.prefix}shards/"

    def proxy(self, proxy_id: str) -> str:
        return f"{self.prefix}proxies/{check_id('proxy', proxy_id)}"

    def parse(self, key: str) -> KeyRef | None:
        """Classify a key of this cluster; None for keys memring does not know (ignored)."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        match parts:
            case ["config"]:
                return KeyRef("config")
            case ["nodes", ident] if _ID.match(ident):
                return KeyRef("node", ident)
            case ["proxies", ident] if _ID.match(ident):
                return KeyRef("proxy", ident)
            case ["shards", ident] if _ID.match(ident):
                return KeyRef("shard", ident)
            case ["shards", ident, "leader"] if _ID.match(ident):
                return KeyRef("leader", ident)
            case ["shards", ident, "isr"] if _ID.match(ident):
                return KeyRef("isr", ident)
            case ["shards", ident, "hint"] if _ID.match(ident):
                return KeyRef("hint", ident)
        return None


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


# --- etcd's KV model, reduced -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored key as etcd reports it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


CompareTarget = Literal["create", "mod", "version", "value"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn guard; a missing key has create/mod revision and version 0, value b""."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    def holds(self, entry: Entry | None) -> bool:
        """Evaluate the guard against the key's current state (the fake's semantics)."""
        actual: int | bytes
        if self.target == "value":
            actual = entry.value if entry else b""
        elif self.target == "create":
            actual = entry.create_revision if entry else 0
        elif self.target == "mod":
            actual = entry.mod_revision if entry else 0
        else:
            actual = entry.version if entry else 0
        if self.target == "value" and entry is None:
            return False  # etcd: a value compare on a missing key fails
        expected = self.operand
        if self.op == "==":
            return actual == expected
        if self.op == "!=":
            return actual != expected
        if isinstance(actual, int) and isinstance(expected, int):
            return actual < expected if self.op == "<" else actual > expected
        if isinstance(actual, bytes) and isinstance(expected, bytes):
            return actual < expected if self.op == "<" else actual > expected
        raise TypeError(f"cannot compare {actual!r} with {expected!r}")


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the txn (the put revision when it wrote)


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A put (entry is the new state) or a delete (entry.value is b"") of one key."""

    kind: Literal["put", "delete"]
    entry: Entry


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one or more revisions, in order; `revision` is the last one covered."""

    revision: int
    events: tuple[KeyEvent, ...]
