"""Prefix-aware routing: discovery of replicas, scoring, the load bound, consistent-hash fallback, tenant salt.

Scoring runs on replicas whose published state is set by hand (what a model server's
``/llmcache/v1/cache-state`` would say); discovery runs against real files and the real
resolver. The end-to-end behaviour against real model servers is in test_routing_model_servers.py.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import aiohttp
import pytest

from llmcache import prefix_hash
from llmcache.errors import ConfigError
from llmcache.proxy import cli
from llmcache.proxy.replicas import Replica, ReplicaSet, parse_sources
from llmcache.proxy.routing import RouteKey, Router

NS = "rev0:float32"
TOKENS = tuple(range(1000, 1100))  # 100 tokens: six full blocks


def replica_set(n: int) -> ReplicaSet:
    """``n`` static replicas, built outside an event loop (so nobody follows them: state is set by hand)."""
    return ReplicaSet(parse_sources([f"http://10.0.0.{i}:8000" for i in range(1, n + 1)]), session=None)  # type: ignore[arg-type]


def publish(r: Replica, tokens: tuple[int, ...], salt: str | None, *, blocks: int | None = None,
            running: int = 0) -> None:
    hashes = prefix_hash.block_hashes(prefix_hash.salted_namespace(NS, salt), tokens)[:blocks]
    r.apply({"reset": True, "events": [["+", hashes]], "namespace": NS, "block_tokens": 16, "epoch": "e", "seq": 1,
             "load": {"num_running": running, "num_waiting": 0, "max_num_seqs": 16}})


def key(tokens: tuple[int, ...] = TOKENS, salt: str | None = "tenant-a") -> RouteKey:
    return RouteKey(token_ids=tokens, salt=salt, text_key=hash((tokens, salt)) & (2**64 - 1))


def place_new(router: Router, keys: list[RouteKey]) -> list[Replica]:
    """Send one request per key, each a prefix no replica holds (placed by ``load``); where each went."""
    placed = []
    for k in keys:
        choice = router.choose(k)
        assert choice is not None and choice.chosen_by == "load"
        router.sending(choice)
        router.sent(choice)
        placed.append(choice.replica)
    return placed


# ---------------------------------------------------------------- scoring


def test_the_replica_with_the_longest_cached_prefix_wins() -> None:
    rs = replica_set(3)
    r1, r2, r3 = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a", blocks=2)
    publish(r2, TOKENS, "tenant-a", blocks=5)
    publish(r3, (), "tenant-a")
    choice = Router(rs).choose(key())
    assert choice is not None
    assert (choice.replica, choice.chosen_by, choice.predicted_cached_tokens) == (r2, "prefix", 80)


def test_the_cache_salt_is_part_of_the_hash() -> None:
    rs = replica_set(2)
    r1, r2 = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a")
    publish(r2, (), None)
    other = Router(rs).choose(key(salt="tenant-b"))  # the same tokens, another tenant
    assert other is not None and other.chosen_by == "load" and other.predicted_cached_tokens == 0
    unsalted = Router(rs).choose(key(salt=None))
    assert unsalted is not None and unsalted.predicted_cached_tokens == 0
    own = Router(rs).choose(key(salt="tenant-a"))
    assert own is not None and (own.replica, own.chosen_by) == (r1, "prefix")


def test_a_busy_replica_is_passed_over_however_much_it_holds() -> None:
    rs = replica_set(3)
    r1, r2, r3 = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a", blocks=2)
    publish(r2, TOKENS, "tenant-a", running=12)  # holds everything, but 12 queued vs 0: over the bound (0 + 4)
    publish(r3, (), "tenant-a")
    choice = Router(rs).choose(key())
    assert choice is not None and (choice.replica, choice.chosen_by) == (r1, "prefix")
    # Within the bound, a queued request costs as much as 256 prompt tokens to recompute: 3 queued do
    # not pay for 64 more cached tokens, 1 queued does pay for 560 more.
    publish(r2, TOKENS, "tenant-a", running=3)
    choice = Router(rs).choose(key())
    assert choice is not None and choice.replica is r1
    long = tuple(range(2000, 2600))
    publish(r1, long, "tenant-a", blocks=2)
    publish(r2, long, "tenant-a", running=1)
    choice = Router(rs).choose(key(long))
    assert choice is not None and (choice.replica, choice.predicted_cached_tokens) == (r2, 592)


def test_a_hot_prefix_spreads_once_its_replica_fills_up() -> None:
    rs = replica_set(2)
    r1, r2 = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a")
    publish(r2, (), "tenant-a")
    router = Router(rs)
    chosen = []
    for _ in range(12):  # requests stay open: each adds to its replica's load
        c = router.choose(key())
        assert c is not None
        c.replica.num_inflight += 1
        chosen.append(c.replica)
    assert chosen.count(r1) > chosen.count(r2) > 0
    assert max(r.load for r in (r1, r2)) - min(r.load for r in (r1, r2)) <= 5  # the bound held


def test_new_prefixes_are_spread_evenly_once_state_is_known() -> None:
    rs = replica_set(2)
    for r in rs.replicas.values():
        publish(r, (), None)  # both answered: empty caches
    router = Router(rs)
    place_new(router, [key(salt=f"tenant-{tenant}") for tenant in range(16)])
    assert sorted(router._recent_blocks(u, 0.0) for u in rs.replicas) == [8 * 6, 8 * 6]  # 6 blocks a prompt
    # A tenant seen before goes where it went, by the prefix it left there (remembered until reported).
    again = router.choose(key(salt="tenant-3"))
    assert again is not None and again.chosen_by == "prefix"


def test_new_prefixes_are_spread_evenly_while_queues_differ() -> None:
    """New tenants arrive while one replica has a request more in its queue (within the bound): they are
    still placed 8 and 8. Placed by load first, all 16 went to the emptier replica, whose cache (sized for
    half of them) then evicted each prompt just before its tenant asked again."""
    rs = replica_set(2)
    r1, r2 = rs.replicas.values()
    for r in (r1, r2):
        publish(r, (), None)
    r1.num_inflight = 1
    router = Router(rs)
    place_new(router, [key(salt=f"tenant-{tenant}") for tenant in range(16)])
    assert sorted(router._recent_blocks(u, 0.0) for u in rs.replicas) == [8 * 6, 8 * 6]  # 6 blocks a prompt
    # Past the bound, load wins over the count: an overloaded replica takes no new prefix.
    r1.num_inflight = 9
    assert place_new(router, [key(salt=f"tenant-{tenant}") for tenant in range(16, 20)]) == [r2] * 4


def test_a_burst_of_short_prompts_weighs_less_than_long_prefixes() -> None:
    """Placement counts blocks, not prefixes: after four one-block prompts went to one replica, two long
    system prompts (six blocks each) are placed one on each replica, not both on the other."""
    rs = replica_set(2)
    r1, r2 = rs.replicas.values()
    for r in (r1, r2):
        publish(r, (), None)
    router = Router(rs)
    r2.num_inflight = 9  # over the bound meanwhile: the burst goes to r1
    # Short one-off prompts (17 tokens: one full block).
    burst = [key(tuple(range(5000 + 20 * i, 5017 + 20 * i)), salt="burst") for i in range(4)]
    assert place_new(router, burst) == [r1] * 4
    r2.num_inflight = 0
    placed = place_new(router, [key(salt="tenant-a"), key(salt="tenant-b")])
    assert sorted(r.url for r in placed) == sorted([r1.url, r2.url]), placed


def test_without_state_a_prefix_always_hashes_to_the_same_replica() -> None:
    rs = replica_set(4)
    router = Router(rs)
    rng = random.Random(3)
    keys = [key(tuple(rng.randrange(50_000) for _ in range(64)), f"t{i}") for i in range(200)]
    first = [router.choose(k) for k in keys]
    assert all(c is not None and c.chosen_by == "fallback" for c in first)
    again = [router.choose(k) for k in keys]
    assert [c.replica.url for c in first] == [c.replica.url for c in again]  # type: ignore[union-attr]
    per_replica = {r.url: sum(1 for c in first if c.replica is r) for r in rs.replicas.values()}  # type: ignore[union-attr]
    assert min(per_replica.values()) >= 20  # 200 keys over 4 replicas: none starved
    # Consistent: removing one replica moves only the keys that were on it.
    gone = next(iter(rs.replicas))
    rs._set_members([u for u in rs.replicas if u != gone])
    moved = [c0.replica.url != c1.replica.url for c0, c1 in zip(first, (router.choose(k) for k in keys))
             if c0.replica.url != gone]  # type: ignore[union-attr]
    assert not any(moved)


def test_unroutable_replicas_are_skipped() -> None:
    rs = replica_set(2)
    r1, r2 = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a")
    publish(r2, (), "tenant-a")
    r1.routable = False  # its state poll failed
    choice = Router(rs).choose(key())
    assert choice is not None and choice.replica is r2
    r1.routable = True
    rs.mark_failed(r1, now=float("inf") - 1)  # a connect to it failed just now: skipped for a while
    choice = Router(rs).choose(key())
    assert choice is not None and choice.replica is r2
    assert Router(rs).choose(key(), exclude=[r1, r2]) is None


def test_round_robin_and_hash_modes_ignore_cache_state() -> None:
    rs = replica_set(3)
    r1, _, _ = rs.replicas.values()
    publish(r1, TOKENS, "tenant-a")
    rr = Router(rs, mode="round-robin")
    assert [rr.choose(None).replica.url for _ in range(6)] == list(rs.replicas) * 2  # type: ignore[union-attr]
    hashed = Router(rs, mode="hash").choose(key())
    assert hashed is not None and hashed.chosen_by in {"fallback", "load"} and hashed.predicted_cached_tokens == 0


# ---------------------------------------------------------------- discovery


def test_upstream_sources_parse_and_refuse_nonsense() -> None:
    sources = parse_sources(["http://a:8000/v1", "dns+http://model-headless:8000", "file:/etc/up"])
    assert [(s.kind, s.value) for s in sources] == [("static", "http://a:8000"), ("dns", "http://model-headless:8000"),
                                                   ("file", "/etc/up")]
    with pytest.raises(ConfigError):
        parse_sources(["file:"])
    with pytest.raises(ConfigError):
        parse_sources([])


def test_upstream_flag_repeats_and_replaces_the_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(argv: list[str]) -> tuple[str, ...]:
        parser = argparse.ArgumentParser()
        cli.configure(parser)
        return cli.settings_from_args(parser.parse_args(["--mode", "exact", *argv])).upstream.sources

    assert parse([]) == ("http://127.0.0.1:8000",)
    assert parse(["--upstream", "http://a:1/v1", "--upstream", "dns+http://b:2"]) == ("http://a:1", "dns+http://b:2")
    monkeypatch.setenv("LLMCACHE_UPSTREAM", "http://x:1, http://y:2")
    assert parse([]) == ("http://x:1", "http://y:2")
    assert parse(["--upstream", "http://z:3"]) == ("http://z:3",)  # the command line replaces the env list


async def test_file_source_follows_edits(tmp_path: Path) -> None:
    path = tmp_path / "upstreams"
    path.write_text("# model servers\nhttp://127.0.0.1:1\n\nhttp://127.0.0.1:2/v1  # second\n")
    async with aiohttp.ClientSession() as http:
        rs = ReplicaSet(parse_sources([f"file:{path}"]), http, refresh_s=3600)
        await rs.start()
        try:
            assert list(rs.replicas) == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
            version = rs.version
            path.write_text("http://127.0.0.1:2\nhttp://127.0.0.1:3\n")
            import os

            os.utime(path, (0, 1))  # a new mtime even within the filesystem's timestamp granularity
            await rs.refresh()
            assert list(rs.replicas) == ["http://127.0.0.1:2", "http://127.0.0.1:3"] and rs.version > version
            path.write_text("not a url\n")
            os.utime(path, (0, 2))
            await rs.refresh()  # a broken file keeps the last good list
            assert list(rs.replicas) == ["http://127.0.0.1:2", "http://127.0.0.1:3"]
        finally:
            await rs.close()


async def test_dns_source_lists_every_address_of_the_name() -> None:
    async with aiohttp.ClientSession() as http:
        rs = ReplicaSet(parse_sources(["dns+http://localhost:8999"]), http, refresh_s=3600)
        await rs.start()
        try:
            assert "http://127.0.0.1:8999" in rs.replicas
            assert all(u.endswith(":8999") for u in rs.replicas)
        finally:
            await rs.close()
