"""The static topology file's pure parsing, shared by the proxy and `StaticCoordinator`.

The file (etc/memring.toml shows it, with comments) is shaped so that a twemproxy user can
translate a nutcracker.yml in a minute: a `[proxy]` table and `[[shards]]`, each shard a list
of nodes (`"host:port"` or `{address = "host:port", weight = 2}`), a ring weight and an
optional ring point name. The first node of a shard is its leader.

This module lives in `cluster` (and imports only netio.settings) so that both the proxy
(proxy.settings re-exports these names) and cluster.static_coordinator parse the file with one
code path, without `cluster` importing `proxy`.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memring.netio.settings import SettingsError, split_address


@dataclass(frozen=True)
class NodeSpec:
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ShardSpec:
    name: str          # the ring point name: keys hash onto "<name>-<i>"
    nodes: tuple[NodeSpec, ...]
    weight: int = 1
    has_leader: bool = True  # the first node leads; False in cluster mode during an election


def default_point_name(node: NodeSpec) -> str:
    """libmemcached/twemproxy name a server "host" on port 11211 and "host:port" otherwise."""
    return node.host if node.port == 11211 else f"{node.host}:{node.port}"


def parse_node(value: Any, where: str) -> NodeSpec:
    if isinstance(value, str):
        host, port = split_address(value)
        return NodeSpec(host, port)
    if isinstance(value, dict) and isinstance(value.get("address"), str):
        host, port = split_address(value["address"])
        weight = value.get("weight", 1)
        if not isinstance(weight, int) or weight < 1:
            raise SettingsError(f"{where}: weight must be a positive integer, got {weight!r}")
        return NodeSpec(host, port, weight)
    raise SettingsError(f"{where}: a node is \"host:port\" or {{address = \"host:port\", "
                        f"weight = N}}, got {value!r}")


def parse_shards(tables: Any) -> tuple[ShardSpec, ...]:
    """The `[[shards]]` tables of a topology file, in file order."""
    if not isinstance(tables, list) or not tables:
        raise SettingsError("the config needs at least one [[shards]] table with nodes")
    shards = []
    names: set[str] = set()
    for index, table in enumerate(tables, start=1):
        where = f"shard #{index}"
        nodes = table.get("nodes") if isinstance(table, dict) else None
        if not isinstance(nodes, list) or not nodes:
            raise SettingsError(f"{where}: `nodes` must be a non-empty list")
        specs = tuple(parse_node(n, where) for n in nodes)
        weight = table.get("weight", 1)
        if not isinstance(weight, int) or weight < 1:
            raise SettingsError(f"{where}: weight must be a positive integer, got {weight!r}")
        name = table.get("name") or default_point_name(specs[0])
        if not isinstance(name, str):
            raise SettingsError(f"{where}: name must be a string")
        if name in names:
            raise SettingsError(f"{where}: ring point name {name!r} is used twice")
        names.add(name)
        shards.append(ShardSpec(name, specs, weight))
    return tuple(shards)


def shards_toml(shards: Sequence[ShardSpec]) -> str:
    """The `[[shards]]` tables that `parse_shards` reads back as `shards` (names and weights
    always written): for generated topologies (bench/proxy_topology.py makes 256 x 3)."""
    lines = []
    for shard in shards:
        nodes = ", ".join(f'"{node.address}"' if node.weight == 1 else
                          f'{{address = "{node.address}", weight = {node.weight}}}'
                          for node in shard.nodes)
        name = json.dumps(shard.name)  # a JSON string is a valid TOML basic string
        lines += ["[[shards]]", f"name = {name}", f"weight = {shard.weight}",
                  f"nodes = [{nodes}]"]
    return "\n".join(lines) + "\n"


def read_toml(path: str | Path) -> dict[str, Any]:
    """The file's TOML document; SettingsError naming the file if it is unreadable or bad."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"bad TOML in {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"bad TOML in {path}: not UTF-8 ({exc.reason})") from None
