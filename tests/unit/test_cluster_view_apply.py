"""ClusterView.apply decodes only the keys a watch batch changes, and gives the view a whole
`build` of the same entries gives (cluster/records.py; docs/scaling.md, round eight)."""

from __future__ import annotations

import random

import pytest

from memring.cluster import records
from memring.cluster.keyspace import Entry, KeyEvent, Keyspace, WatchBatch
from memring.cluster.records import (
    ClusterConfig,
    ClusterView,
    ElectionHint,
    Incarnation,
    IsrRecord,
    LeaderRecord,
    NodeRecord,
    ProxyRecord,
    ShardRecord,
)

KS = Keyspace("c1")
SHARDS = [f"s{i}" for i in range(1, 7)]


def _value(rng: random.Random, key: str) -> bytes:
    """A record for `key` (now and then a malformed one, which `build` leaves out)."""
    if rng.random() < 0.05:
        return b"{not json"
    ref = KS.parse(key)
    assert ref is not None
    n = rng.randrange(1, 1000)
    if ref.kind == "node":
        shard = ref.ident.split("-")[0]
        return NodeRecord(ref.ident, f"127.0.0.1:{n}", shard, f"127.0.0.1:{n + 1}",
                          earlier_leases=(n,) if n % 2 else ()).to_json()
    if ref.kind == "proxy":
        return ProxyRecord(ref.ident, f"127.0.0.1:{n}").to_json()
    if ref.kind == "shard":
        return ShardRecord(ref.ident, (f"{ref.ident}-r1", f"{ref.ident}-r2")).to_json()
    if ref.kind == "leader":
        return LeaderRecord(f"{ref.ident}-r{n % 2 + 1}", f"127.0.0.1:{n}", n).to_json()
    if ref.kind == "isr":
        return IsrRecord((Incarnation(f"{ref.ident}-r1", n),), n).to_json()
    if ref.kind == "hint":
        return ElectionHint(f"{ref.ident}-r1", unclean=n % 2 == 0).to_json()
    return ClusterConfig(min_insync=n % 2 + 1).to_json()


def _keys() -> list[str]:
    keys = [KS.config(), KS.proxy("p1"), KS.proxy("p2"), f"{KS.prefix}unknown/x"]
    for shard in SHARDS:
        keys += [KS.shard(shard), KS.leader(shard), KS.isr(shard), KS.hint(shard),
                 KS.node(f"{shard}-r1"), KS.node(f"{shard}-r2")]
    return keys


def _start(rng: random.Random) -> tuple[int, dict[str, Entry]]:
    entries: dict[str, Entry] = {}
    revision = 1
    for key in _keys():
        if key.endswith("/hint") or key.startswith(f"{KS.prefix}unknown"):
            continue
        revision += 1
        entries[key] = Entry(key, _value(rng, key) if KS.parse(key) else b"x", revision,
                             revision, 1, revision)
    return revision, entries


def _batch(rng: random.Random, revision: int, entries: dict[str, Entry], *,
           kinds: tuple[str, ...] | None = None) -> WatchBatch:
    events = []
    refs = {k: KS.parse(k) for k in _keys()}
    keys = [k for k, ref in refs.items() if kinds is None or (ref is not None and ref.kind in kinds)]
    for _ in range(rng.randrange(1, 5)):
        revision += 1
        key = rng.choice(keys)
        if key in entries and rng.random() < 0.35:
            events.append(KeyEvent("delete", Entry(key, b"", 0, revision, 0, 0)))
        else:
            before = entries.get(key)
            create = before.create_revision if before is not None and rng.random() < 0.5 \
                else revision
            value = _value(rng, key) if KS.parse(key) else b"x"
            events.append(KeyEvent("put", Entry(key, value, create, revision, 1, revision)))
    if rng.random() < 0.2:  # an event the view holds already (a moved watch's replay)
        old = rng.choice(list(entries.values()))
        events.insert(0, KeyEvent("put", old))
    return WatchBatch(revision, tuple(events))


def _after(entries: dict[str, Entry], view_revision: int, batch: WatchBatch) -> dict[str, Entry]:
    out = dict(entries)
    for event in batch.events:
        if event.entry.mod_revision <= view_revision:
            continue
        if event.kind == "put":
            out[event.entry.key] = event.entry
        else:
            out.pop(event.entry.key, None)
    return out


@pytest.mark.parametrize("kinds", [None, ("node", "leader", "isr", "proxy")])
def test_apply_gives_the_view_a_build_gives(kinds: tuple[str, ...] | None) -> None:
    rng = random.Random(18)
    for _run in range(40):
        revision, entries = _start(rng)
        view = ClusterView.build(KS, revision, entries)
        for _step in range(25):
            batch = _batch(rng, view.revision, dict(view.entries), kinds=kinds)
            applied = view.apply(batch)
            entries = _after(dict(view.entries), view.revision, batch)
            built = ClusterView.build(KS, max(view.revision, batch.revision), entries)
            assert applied == built
            # the same order too (what iterates a view sees no difference)
            assert list(applied.nodes) == list(built.nodes)
            assert list(applied.shards) == list(built.shards)
            assert list(applied.proxies) == list(built.proxies)
            view = applied


def test_a_leader_change_decodes_one_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work removed: a new leader key decodes that key, not the whole cluster (49
    processes apply every batch of a failover storm)."""
    rng = random.Random(3)
    revision, entries = _start(rng)
    entries = {k: Entry(k, _value(random.Random(1), k) if b"{not" in e.value else e.value,
                        e.create_revision, e.mod_revision, e.version, e.lease)
               for k, e in entries.items()}
    view = ClusterView.build(KS, revision, entries)
    decoded: list[bytes] = []
    load = records._load

    def counting(raw: bytes) -> dict[str, object]:
        decoded.append(raw)
        return load(raw)

    monkeypatch.setattr(records, "_load", counting)
    key = KS.leader("s4")
    new = LeaderRecord("s4-r2", "127.0.0.1:9", 77)
    after = view.apply(WatchBatch(revision + 2, (
        KeyEvent("delete", Entry(KS.node("s4-r1"), b"", 0, revision + 1, 0, 0)),
        KeyEvent("put", Entry(key, new.to_json(), revision + 2, revision + 2, 1, 77)))))
    assert len(decoded) == 1
    assert after.shards["s4"].leader == new and after.shards["s4"].epoch == revision + 2
    assert "s4-r1" not in after.nodes and after.shards["s3"] is view.shards["s3"]
