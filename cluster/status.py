"""What `memring status` shows: one ClusterView as the JSON of ../shared/design.md or a table.

A shard's nodes are its live members (`nodes/*` naming the shard) and the replicas its record
lists that are not alive. A node is `in_sync` when its current incarnation (node id + the lease
of its `nodes/` key) is in the shard's ISR; its role is `leader` (holds the leader key),
`follower` (alive, in sync), `syncing` (alive, not in sync) or `down`; `drained` is true for a
node `memring node drain` took out of elections and reads. Lag is not measured
before replication exists: 0.
"""

from __future__ import annotations

from typing import Any

from cluster.coordinator import ClusterView, Incarnation


def status_doc(view: ClusterView) -> dict[str, Any]:
    shards = []
    for shard_id in sorted(view.shards):
        shard = view.shards[shard_id]
        members = {node_id: record for node_id, record in view.nodes.items()
                   if record.shard == shard_id}
        replicas = shard.record.replicas if shard.record else ()
        isr = set(shard.isr.members) if shard.isr else set()
        leader = shard.leader.node_id if shard.leader else None
        nodes = []
        for node_id in sorted(set(members) | set(replicas)):
            record = members.get(node_id)
            alive = record is not None
            lease = view.lease_of(view.keyspace.node(node_id)) if alive else 0
            in_sync = alive and Incarnation(node_id, lease) in isr
            role = ("down" if not alive else "leader" if node_id == leader else
                    "follower" if in_sync else "syncing")
            nodes.append({"id": node_id, "address": record.address if record else "",
                          "role": role, "in_sync": in_sync, "alive": alive,
                          "drained": shard.drained(node_id), "lag_seq": 0, "lag_s": 0.0})
        shards.append({"id": shard_id, "epoch": shard.epoch, "leader": leader,
                       "isr": list(shard.isr.node_ids) if shard.isr else [],
                       "weight": shard.record.weight if shard.record else 0,
                       "nodes": nodes})
    proxies = [{"id": p.proxy_id, "address": p.address}
               for p in sorted(view.proxies.values(), key=lambda p: p.proxy_id)]
    return {"cluster": view.keyspace.cluster, "revision": view.revision,
            "shards": shards, "proxies": proxies}


def healthy(doc: dict[str, Any]) -> bool:
    """Every shard has a leader (`memring status` exits 1 otherwise)."""
    return all(shard["leader"] for shard in doc["shards"])


def render_table(doc: dict[str, Any]) -> str:
    lines = [f"cluster {doc['cluster']} (etcd revision {doc['revision']}): "
             f"{len(doc['shards'])} shard(s), {len(doc['proxies'])} proxy(ies)"]
    rows = [("SHARD", "EPOCH", "NODE", "ADDRESS", "ROLE", "IN_SYNC", "LAG")]
    for shard in doc["shards"]:
        if not shard["nodes"]:
            rows.append((shard["id"], str(shard["epoch"]), "-", "-", "no nodes", "-", "-"))
        for index, node in enumerate(shard["nodes"]):
            rows.append((shard["id"] if index == 0 else "",
                         str(shard["epoch"]) if index == 0 else "",
                         node["id"], node["address"] or "-",
                         node["role"] + (" (drained)" if node.get("drained") else ""),
                         "yes" if node["in_sync"] else "no",
                         f"{node['lag_seq']} / {node['lag_s']:.1f}s"))
        if not shard["leader"]:
            rows.append(("", "", "", "", "NO LEADER", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    if doc["proxies"]:
        lines.append("proxies: " + ", ".join(f"{p['id']} {p['address']}"
                                             for p in doc["proxies"]))
    else:
        lines.append("proxies: none")
    return "\n".join(lines)
