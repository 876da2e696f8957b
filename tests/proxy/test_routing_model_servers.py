"""Routing between real model-server replicas (the tiny random model, token-id prompts) behind a real proxy.

Each tenant's requests share a 64-token prefix; the replicas publish what they cache and the
proxy must send a tenant's later requests where its prefix is (the replica confirms it with
``X-LLMCache-Cached-Tokens``), skip a replica that is gone without a client error, pick up
a replica added to a ``file:`` source, and with one plain upstream do exactly what it did
before (no state polling at all).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from proxy_helpers import RawServer, Stack, json_answer, read_request

from llmcache.model_server import handlers as ms_handlers
from llmcache.model_server import loader
from llmcache.model_server.settings import ModelServerSettings
from llmcache.proxy import upstream
from llmcache.proxy.replicas import ReplicaSet, parse_sources
from llmcache.proxy.routing import Router, RoutingMetrics
from llmcache.redis_server import free_port
from llmcache.testing import threaded

PREFIX = 64


@pytest.fixture(scope="module")
def tiny() -> loader.LoadedModel:
    import torch

    torch.set_num_threads(1)
    return loader.load_model("random-tiny", device="cpu", dtype="float32", seed=0)


class Replicas:
    """Model servers on free ports in threads; each can be stopped on its own."""

    def __init__(self, model: loader.LoadedModel) -> None:
        self.model = model
        self.urls: list[str] = []
        self.apps: list[Any] = []
        self._stacks: list[ExitStack] = []

    def start(self) -> str:
        app = ms_handlers.create_app(ModelServerSettings(enable_embeddings=False), loaded=self.model)
        stack = ExitStack()
        url = stack.enter_context(threaded.serve_in_thread(app))
        assert app[ms_handlers.STATE_KEY].ready.wait(60)
        self.urls.append(url)
        self.apps.append(app)
        self._stacks.append(stack)
        return url

    def stop(self, url: str) -> None:
        i = self.urls.index(url)
        self._stacks[i].close()

    def served(self, url: str, endpoint: str = "/v1/completions") -> float:
        """Requests this replica answered on ``endpoint`` (its own metrics)."""
        metrics = self.apps[self.urls.index(url)][ms_handlers.STATE_KEY].metrics
        return sum(s.value for m in metrics.requests.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels.get("endpoint") == endpoint)

    def close(self) -> None:
        for s in self._stacks:
            s.close()


@pytest.fixture
def replicas(tiny: loader.LoadedModel) -> Iterator[Replicas]:
    r = Replicas(tiny)
    yield r
    r.close()


def prompt(tenant: int, question: int) -> list[int]:
    return [10 + tenant + i for i in range(PREFIX)] + [300 + question, 301 + question]


async def ask(stack: Stack, tenant: int, question: int) -> tuple[int, dict[str, str]]:
    body = {"prompt": prompt(tenant, question), "max_tokens": 2, "temperature": 0}
    async with stack.http.post(stack.proxy_url + "/v1/completions", json=body,
                               headers={"Authorization": f"Bearer sk-tenant-{tenant}"}) as r:
        await r.read()
        return r.status, dict(r.headers)


def route_counts(stack: Stack) -> dict[tuple[str, str], float]:
    return {(s.labels["replica"], s.labels["chosen_by"]): s.value
            for m in stack.state.metrics.registry.collect() if m.name == "llmcache_route_requests"
            for s in m.samples if s.name.endswith("_total")}


def counter(stack: Stack, name: str) -> float:
    return sum(s.value for m in stack.state.metrics.registry.collect() if m.name == name
               for s in m.samples if s.name.endswith("_total"))


async def until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s  # a liveness bound, not a latency claim
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def routed_stack(proxy_stack: Callable[..., Awaitable[Stack]], sources: tuple[str, ...]) -> Stack:
    stack = await proxy_stack(upstream_sources=sources, upstream_timeout_s=60.0)
    router = stack.state.upstream.router  # type: ignore[union-attr]
    assert router is not None
    await until("every replica's state arrives",
                lambda: all(r.has_state for r in router.replicas.replicas.values()))
    return stack


async def test_a_tenants_requests_follow_its_cached_prefix(proxy_stack, replicas: Replicas) -> None:
    urls = (replicas.start(), replicas.start())
    stack = await routed_stack(proxy_stack, urls)
    where: dict[int, set[str]] = {}
    for question in range(4):
        for tenant in range(4):
            before = {u: replicas.served(u) for u in urls}
            status, headers = await ask(stack, tenant, question)
            assert status == 200 and headers["X-LLMCache-Status"] == "miss"
            went = [u for u in urls if replicas.served(u) > before[u]]
            where.setdefault(tenant, set()).update(went)
            if question:
                assert int(headers["X-LLMCache-Cached-Tokens"]) >= PREFIX  # the replica had the tenant's prefix
    assert all(len(w) == 1 for w in where.values()), where  # every tenant stayed on one replica
    counts = route_counts(stack)
    assert sum(v for (_, by), v in counts.items() if by == "prefix") == 12  # all but each tenant's first
    predicted = counter(stack, "llmcache_route_predicted_cached_tokens")
    reported = counter(stack, "llmcache_route_reported_cached_tokens")
    assert predicted == 12 * PREFIX and reported >= predicted
    async with stack.http.get(stack.proxy_url + "/metrics") as r:  # what a scraper sees
        text = await r.text()
    for url in urls:
        assert f'llmcache_route_requests_total{{chosen_by="prefix",replica="{url}"}}' in text
        assert f'llmcache_route_predicted_cached_tokens_total{{replica="{url}"}}' in text
        assert f'llmcache_route_reported_cached_tokens_total{{replica="{url}"}}' in text
    assert 'llmcache_route_replicas{state="routable"} 2.0' in text


async def test_a_replica_that_goes_away_costs_no_client_error(proxy_stack, replicas: Replicas) -> None:
    urls = (replicas.start(), replicas.start())
    stack = await routed_stack(proxy_stack, urls)
    for tenant in range(6):
        assert (await ask(stack, tenant, 0))[0] == 200
    victim = max(urls, key=replicas.served)
    replicas.stop(victim)
    for question in range(1, 3):  # none of these had been sent to the victim
        for tenant in range(6):
            assert (await ask(stack, tenant, question))[0] == 200
    survivor = next(u for u in urls if u != victim)
    assert replicas.served(survivor) >= 12


async def test_a_refused_connection_is_sent_once_to_another_replica_never_after_bytes(replicas: Replicas) -> None:
    live = replicas.start()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rs = ReplicaSet(parse_sources([dead, live]), session=None)  # type: ignore[arg-type]  # never started: unfollowed
    rs.replicas[live].num_running = 1  # the dead one looks idler: the least-loaded pick goes there first
    async with aiohttp.ClientSession() as http:
        rs.session = http
        from prometheus_client import CollectorRegistry

        metrics_registry = CollectorRegistry()
        metrics = RoutingMetrics(metrics_registry, rs)
        up = upstream.Upstream(http, base_url=dead, timeout_s=30, router=Router(rs, metrics=metrics))
        resp = await up.open("GET", "/v1/models", {}, None)
        assert resp.status == 200 and str(resp.url).startswith(live)
        resp.release()
        assert metrics.retries.labels(dead)._value.get() == 1
        assert not rs.replicas[dead].is_routable(time.monotonic())  # skipped for a while now
        states = {s.labels["state"]: s.value for m in metrics_registry.collect() if m.name == "llmcache_route_replicas"
                  for s in m.samples}
        assert states == {"routable": 1, "down": 1}

        async def streamed() -> Any:
            yield b'{"prompt": [1, 2, 3], "max_tokens": 1}'

        rs.replicas[dead].down_until = 0.0
        with pytest.raises(upstream.UpstreamError) as exc:  # a streamed body cannot be sent twice: no retry
            await up.open("POST", "/v1/completions", {"Content-Type": "application/json"}, streamed())
        assert exc.value.status == 502 and metrics.retries.labels(dead)._value.get() == 1


class HangUp(RawServer):
    """Fault injection: a "replica" that accepts a connection, reads the request, and hangs up unanswered."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        self.received += head + body
        writer.close()


class Gated(RawServer):
    """A "replica" that takes requests and answers none until ``release`` is set (a prefill in progress)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _head, body = await read_request(reader)
        self.bodies.append(body)
        await self.release.wait()
        writer.write(json_answer(b'{"choices": []}'))
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("pooled", [False, True], ids=["session", "pool"])
async def test_a_second_request_for_a_new_prefix_follows_the_first_while_it_is_unanswered(pooled: bool) -> None:
    """The replica a request is sent to counts as filling its prefix from the moment it is sent: a
    tenant's second question that arrives during the first one's prefill goes to the same replica
    (which finds the KV cached, or waits for the prefill) instead of computing the prompt again elsewhere."""
    a, b = Gated(), Gated()
    async with a as url_a, b as url_b, aiohttp.ClientSession() as http:
        router, _metrics = unfollowed_router([url_a, url_b], http)
        for r in router.replicas.replicas.values():  # both have reported an empty cache: state is known
            r.apply({"reset": True, "events": [], "namespace": "ns", "block_tokens": 16, "epoch": "e", "seq": 1,
                     "load": {"num_running": 0, "num_waiting": 0, "max_num_seqs": 16}})
        up = upstream.Upstream(http, base_url=url_a, timeout_s=30, router=router)
        headers = {"Content-Type": "application/json"}

        def body(question: int) -> bytes:
            return json.dumps({"prompt": prompt(0, question), "max_tokens": 2}).encode()

        first = asyncio.ensure_future(up.open("POST", "/v1/completions", headers, body(0), pooled=pooled))
        await until("the first request reached a replica", lambda: len(a.bodies) + len(b.bodies) == 1)
        second = asyncio.ensure_future(up.open("POST", "/v1/completions", headers, body(1), pooled=pooled))
        await until("the second request reached a replica", lambda: len(a.bodies) + len(b.bodies) == 2)
        assert sorted([len(a.bodies), len(b.bodies)]) == [0, 2]  # both on one replica, the idle one left alone
        a.release.set()
        b.release.set()
        for task in (first, second):
            resp = await task
            assert resp.status == 200
            resp.release()
        up.close()


def unfollowed_router(urls: list[str], http: aiohttp.ClientSession) -> tuple[Router, RoutingMetrics]:
    """A router over ``urls`` without state polling (the test sets the loads that decide the order)."""
    from prometheus_client import CollectorRegistry

    rs = ReplicaSet(parse_sources(urls), session=http)  # never started: unfollowed
    metrics = RoutingMetrics(CollectorRegistry(), rs)
    return Router(rs, metrics=metrics), metrics


@pytest.mark.parametrize("pooled", [False, True], ids=["session", "pool"])
async def test_a_request_whose_bytes_were_sent_is_never_sent_again(replicas: Replicas, pooled: bool) -> None:
    live = replicas.start()
    body = json.dumps({"prompt": prompt(0, 0), "max_tokens": 2}).encode()
    hang = HangUp()
    async with hang as faulty, aiohttp.ClientSession() as http:
        router, metrics = unfollowed_router([faulty, live], http)
        router.replicas.replicas[live].num_running = 5  # busy: the pick goes to the faulty one
        up = upstream.Upstream(http, base_url=faulty, timeout_s=30, router=router)
        with pytest.raises(upstream.UpstreamError) as exc:
            await up.open("POST", "/v1/completions", {"Content-Type": "application/json"}, body, pooled=pooled)
        assert exc.value.status == 502
        assert hang.received.endswith(body)  # the request reached the faulty replica in full…
        assert replicas.served(live) == 0  # …and was not sent again to the live one
        assert metrics.retries.labels(faulty)._value.get() == 0


@pytest.mark.parametrize("pooled", [False, True], ids=["session", "pool"])
async def test_a_connect_error_is_retried_once_not_twice(replicas: Replicas, pooled: bool) -> None:
    live = replicas.start()
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]  # nothing listens there
    body = json.dumps({"prompt": prompt(0, 0), "max_tokens": 2}).encode()
    async with aiohttp.ClientSession() as http:
        router, metrics = unfollowed_router([*dead, live], http)
        router.replicas.replicas[live].num_running = 5  # busy: both dead ones come first
        up = upstream.Upstream(http, base_url=dead[0], timeout_s=30, router=router)
        with pytest.raises(upstream.UpstreamError) as exc:
            await up.open("POST", "/v1/completions", {"Content-Type": "application/json"}, body, pooled=pooled)
        assert exc.value.status == 502
        assert sum(metrics.retries.labels(d)._value.get() for d in dead) == 1  # one retry, then the error
        assert replicas.served(live) == 0
        # Both dead ones are skipped now: the next request goes straight to the live one.
        resp = await up.open("POST", "/v1/completions", {"Content-Type": "application/json"}, body, pooled=pooled)
        assert resp.status == 200 and str(resp.url).startswith(live)
        resp.release()
        assert sum(metrics.retries.labels(d)._value.get() for d in dead) == 1
        up.close()


async def test_an_added_replica_receives_traffic(proxy_stack, replicas: Replicas, tmp_path: Path) -> None:
    first = replicas.start()
    listing = tmp_path / "upstreams"
    listing.write_text(first + "\n")
    stack = await proxy_stack(upstream_sources=(f"file:{listing}",), upstream_refresh_s=0.2, upstream_timeout_s=60.0)
    router = stack.state.upstream.router  # type: ignore[union-attr]
    assert router is not None and list(router.replicas.replicas) == [first]
    second = replicas.start()
    listing.write_text(f"{first}\n{second}\n")
    await until("the proxy lists the new replica", lambda: second in router.replicas.replicas)
    tenant = 0
    while replicas.served(second) == 0:  # new tenants hash onto both replicas
        assert tenant < 40, "no request reached the added replica"
        assert (await ask(stack, tenant, 0))[0] == 200
        tenant += 1


async def test_one_plain_upstream_is_not_routed_and_never_polled(proxy_stack, replicas: Replicas) -> None:
    url = replicas.start()
    stack = await proxy_stack(upstream_sources=(url,), upstream_timeout_s=60.0)
    assert stack.state.upstream is not None and stack.state.upstream.router is None
    for tenant in range(3):
        status, headers = await ask(stack, tenant, 0)
        assert status == 200 and headers["X-LLMCache-Status"] == "miss"
    assert replicas.served(url) == 3
    assert replicas.served(url, "/llmcache/v1/cache-state") == 0
    assert not route_counts(stack)
