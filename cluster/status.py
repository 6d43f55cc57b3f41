"""What `memring status` shows: one ClusterView as JSON (the fields docs/operations.md lists) or a table.

A shard's nodes are its live members (`nodes/*` naming the shard) and the replicas its record
lists that are not alive. A node is `in_sync` when its current incarnation (node id + the lease
of its `nodes/` key) is in the shard's ISR; its role is `leader` (holds the leader key),
`follower` (alive, in sync), `syncing` (alive, not in sync) or `down`; `drained` is true for a
node `memring node drain` took out of elections and reads.

The rest comes from the nodes themselves (`stats`, cluster.node_stats), when given: each
follower's lag (mutations and seconds behind, as its shard's leader measures it), and per shard
the requests its nodes served and their get hit ratio; `with_rates` turns two docs taken some
seconds apart into ops/s for `memring status --watch`. A node that did not answer shows
`answers: false` and lag -1.

With the nodes' stats, each node and proxy also gets `security` (its channels: which
protections each has and lacks, cluster.channel_security) and the doc a `security` summary
with etcd's channel as the caller reaches it.
"""

from __future__ import annotations

from typing import Any

from memring.cluster import channel_security
from memring.cluster.channel_security import etcd_channel
from memring.cluster.coordinator import ClusterView, Incarnation

__all__ = ["addresses", "etcd_channel", "healthy", "render_table", "status_doc", "with_rates"]

NodeStats = dict[str, dict[str, str] | None]  # address -> `stats`, None: no answer
_OPS = ("cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses", "incr_hits",
        "incr_misses", "decr_hits", "decr_misses")


def addresses(view: ClusterView) -> list[str]:
    """Every live node's and proxy's address: what `stats` is asked of."""
    return [n.address for n in view.nodes.values()] + [p.address for p in view.proxies.values()]


def _lag(leader_stats: dict[str, str] | None, node_id: str) -> tuple[int, float]:
    if not leader_stats:
        return -1, -1.0
    seq = leader_stats.get(f"memring_repl_lag_seq:{node_id}")
    seconds = leader_stats.get(f"memring_repl_lag_s:{node_id}")
    if seq is None or seconds is None:
        return -1, -1.0  # not connected to the leader (or no replication)
    return int(seq), float(seconds)


def status_doc(view: ClusterView, stats: NodeStats | None = None,
               etcd: dict[str, Any] | None = None) -> dict[str, Any]:
    """`etcd`: its channel (channel_security.etcd_channel), for the security summary."""
    stats = stats or {}
    channels = [etcd] if etcd else []
    shards = []
    for shard_id in sorted(view.shards):
        shard = view.shards[shard_id]
        members = {node_id: record for node_id, record in view.nodes.items()
                   if record.shard == shard_id}
        replicas = shard.record.replicas if shard.record else ()
        isr = set(shard.isr.members) if shard.isr else set()
        leader = shard.leader.node_id if shard.leader else None
        leader_stats = stats.get(shard.leader.address) if shard.leader else None
        ops = hits = misses = 0
        nodes = []
        for node_id in sorted(set(members) | set(replicas)):
            record = members.get(node_id)
            alive = record is not None
            lease = view.lease_of(view.keyspace.node(node_id)) if alive else 0
            in_sync = alive and Incarnation(node_id, lease) in isr
            role = ("down" if not alive else "leader" if node_id == leader else
                    "follower" if in_sync else "syncing")
            mine = stats.get(record.address) if record else None
            lag_seq, lag_s = (0, 0.0) if role == "leader" else (-1, -1.0) if not alive else \
                _lag(leader_stats, node_id)
            entry: dict[str, Any] = {
                "id": node_id, "address": record.address if record else "", "role": role,
                "in_sync": in_sync, "alive": alive, "drained": shard.drained(node_id),
                "lag_seq": lag_seq, "lag_s": lag_s}
            if stats:
                entry["answers"] = bool(mine)
                if alive:
                    mine_channels = channel_security.node_channels(node_id, mine)
                    entry["security"] = mine_channels
                    channels += mine_channels
            if mine:
                ops += sum(int(mine.get(name, 0)) for name in _OPS)
                hits += int(mine.get("get_hits", 0))
                misses += int(mine.get("get_misses", 0))
            nodes.append(entry)
        doc: dict[str, Any] = {
            "id": shard_id, "epoch": shard.epoch, "leader": leader,
            "isr": list(shard.isr.node_ids) if shard.isr else [],
            "weight": shard.record.weight if shard.record else 0, "nodes": nodes}
        if stats:
            doc.update(ops=ops, get_hits=hits, get_misses=misses,
                       hit_ratio=round(hits / (hits + misses), 4) if hits + misses else None)
        shards.append(doc)
    proxies = []
    for p in sorted(view.proxies.values(), key=lambda p: p.proxy_id):
        entry = {"id": p.proxy_id, "address": p.address}
        if stats:
            answer = stats.get(p.address)
            entry["answers"] = bool(answer)
            if answer:
                entry["connections"] = int(answer.get("curr_connections", 0))
            entry["security"] = channel_security.proxy_channels(p.proxy_id, answer)
            channels += entry["security"]
        proxies.append(entry)
    doc = {"cluster": view.keyspace.cluster, "revision": view.revision,
           "shards": shards, "proxies": proxies}
    if stats or etcd:
        doc["security"] = channel_security.summary(channels)
    return doc


def with_rates(doc: dict[str, Any], previous: dict[str, Any] | None, seconds: float
               ) -> dict[str, Any]:
    """`doc` with each shard's ops/s since `previous` (taken `seconds` earlier)."""
    before = {s["id"]: s.get("ops") for s in previous["shards"]} if previous else {}
    for shard in doc["shards"]:
        old, now = before.get(shard["id"]), shard.get("ops")
        shard["ops_per_s"] = (round(max(0, now - old) / seconds, 1)
                              if old is not None and now is not None and seconds > 0 else None)
    return doc


def healthy(doc: dict[str, Any]) -> bool:
    """Every shard has a leader (`memring status` exits 1 otherwise)."""
    return all(shard["leader"] for shard in doc["shards"])


def render_table(doc: dict[str, Any]) -> str:
    lines = [f"cluster {doc['cluster']} (etcd revision {doc['revision']}): "
             f"{len(doc['shards'])} shard(s), {len(doc['proxies'])} proxy(ies)"]
    rows = [("SHARD", "EPOCH", "OPS/S", "HIT%", "NODE", "ADDRESS", "ROLE", "IN_SYNC", "LAG")]
    for shard in doc["shards"]:
        rate = shard.get("ops_per_s")
        ratio = shard.get("hit_ratio")
        head = (shard["id"], str(shard["epoch"]), "-" if rate is None else f"{rate:.0f}",
                "-" if ratio is None else f"{ratio * 100:.1f}")
        if not shard["nodes"]:
            rows.append((*head, "-", "-", "no nodes", "-", "-"))
        for index, node in enumerate(shard["nodes"]):
            lag = "-" if node["lag_seq"] < 0 else f"{node['lag_seq']} / {node['lag_s']:.3f}s"
            rows.append((*(head if index == 0 else ("",) * len(head)),
                         node["id"], node["address"] or "-",
                         node["role"] + (" (drained)" if node.get("drained") else "")
                         + (" (no answer)" if node.get("answers") is False else ""),
                         "yes" if node["in_sync"] else "no", lag))
        if not shard["leader"]:
            rows.append(("",) * 4 + ("", "", "NO LEADER", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    if doc["proxies"]:
        lines.append("proxies: " + ", ".join(
            f"{p['id']} {p['address']}"
            + (f" ({p['connections']} connections)" if "connections" in p else "")
            + (" (no answer)" if p.get("answers") is False else "") for p in doc["proxies"]))
    else:
        lines.append("proxies: none")
    if "security" in doc:
        lines += channel_security.render(doc["security"])
    return "\n".join(lines)
