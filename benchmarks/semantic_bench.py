"""Semantic cache performance: lookup latency under concurrency, embedder backends, the remote path, KNN, exact path.

    .venv/bin/python benchmarks/semantic_bench.py [--entries 100000] [--lookups 640] [--skip-proxy] [--remote]

Runs against embedded Redis servers (Valkey + RediSearch, and plain Valkey) it
starts itself, with the local all-MiniLM-L6-v2 embedder. Measures:

1. semantic lookup (embed + KNN + verify) latency p50/p99 (all lookups, and the hits alone:
   new texts that paraphrase a stored one) at 32 concurrent callers and one at a time, every
   query a new text (cold embedding LRU), for each local backend (``--backends``: ONNX
   Runtime, then sentence-transformers as its peer), with lookups/s and CPU per lookup; for
   the first backend also the client-side index, no micro-batching (max_batch 1), and the
   same texts again (LRU reuse);
2. with ``--remote``, the sidecar's path: a remote embedder (keep-alive, micro-batched, base64
   vectors) against the model server's ``/v1/embeddings`` in its own process, CPU counted on
   both sides;
3. KNN alone over ``--entries`` stored vectors in one scope: p50/p99 for the Query Engine
   backend (HNSW) and the client-side backend (numpy), with the client index's memory;
4. the proxy's exact-hit latency with ``--mode exact`` versus ``--mode both`` (exact is
   checked first, so it must not get slower) — needs llmcache.proxy.app.

Prints a table and writes ``benchmarks/results/semantic_bench.json`` and ``semantic_bench.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import redis.asyncio as aioredis

from llmcache.keys import semantic_parts
from llmcache.keyspace import Keyspace
from llmcache.proxy.semantic import SemanticCache, index_client, vector_index
from llmcache.proxy.semantic.embedder import LocalEmbedder
from llmcache.proxy.semantic.index_search import SearchIndex
from llmcache.proxy.settings import SemanticSettings
from llmcache.redis_server import EmbeddedRedis

HERE = Path(__file__).resolve().parent
CHAT = "/v1/chat/completions"

_VERBS = ["reverse", "sort", "copy", "merge", "split", "filter", "flatten", "shuffle", "serialize", "compare",
          "validate", "parse", "format", "encrypt", "compress", "cache", "index", "search", "deduplicate", "group"]
_NOUNS = ["a list", "a dictionary", "a string", "a JSON file", "a CSV file", "a date", "an array", "a set",
          "a linked list", "a binary tree", "a database table", "a log file", "an image", "a URL", "a matrix"]
_LANGS = ["Python", "Java", "Go", "Rust", "JavaScript", "C#", "Ruby", "Kotlin"]
_FRAMES = ["How do I {v} {n} in {l}?", "How can I {v} {n} in {l}?", "What's the way to {v} {n} using {l}?",
           "In {l}, how do I {v} {n}?"]


def questions() -> list[tuple[str, str]]:
    """(stored form, paraphrased form) for every verb × noun × language."""
    out = []
    for v in _VERBS:
        for n in _NOUNS:
            for lang in _LANGS:
                out.append((_FRAMES[0].format(v=v, n=n, l=lang), _FRAMES[1].format(v=v, n=n, l=lang)))
    return out


def parts(text: str) -> Any:
    p = semantic_parts(CHAT, {"model": "bench", "messages": [{"role": "user", "content": text}]}, tenant="bench")
    assert p is not None
    return p


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_lookups(url: str, embedder: Any, *, num_lookups: int, concurrency: int,
                        num_stored: int, peer_pid: int | None = None) -> dict[str, Any]:
    """Store ``num_stored`` real questions, then ``num_lookups`` new paraphrases from ``concurrency`` callers."""
    r = aioredis.Redis.from_url(url)
    await r.flushall()
    cache = await SemanticCache.create(r, settings=SemanticSettings(timeout_s=60.0), keyspace=Keyspace(),
                                       embedder=embedder)
    pairs = questions()
    stored = pairs[:num_stored]
    # In chunks: the embedder's queue is bounded (it sheds a request's texts past the bound).
    texts = [s for s, _ in stored]
    vecs = [v for i in range(0, len(texts), 256) for v in await embedder.embed(texts[i:i + 256])]
    for i, ((text, _), vec) in enumerate(zip(stored, vecs)):
        await cache._index.add(f"{i:064x}", vec, scope_hash=parts(text).scope_hash, text=text, ttl_s=3600)  # noqa: SLF001
    # Every lookup text is new to the embedder: half paraphrases of stored questions, half unseen questions.
    queries = [q for _, q in pairs[: num_lookups // 2]] + [
        f"{q} Please be brief." for _, q in pairs[num_stored:num_stored + num_lookups - num_lookups // 2]]
    queries = queries[:num_lookups]
    latencies: list[float] = []
    hit_latencies: list[float] = []
    hits = 0
    pending = list(reversed(queries))

    async def worker() -> None:
        nonlocal hits
        while pending:
            text = pending.pop()
            t0 = time.perf_counter()
            m = await cache.lookup(parts(text), threshold=0.85)
            latencies.append((time.perf_counter() - t0) * 1000)
            if m is not None:
                hits += 1
                hit_latencies.append(latencies[-1])

    batches_before = embedder.stats()["embed_batches"]
    cpu0, peer_cpu0 = time.process_time(), cpu_s(peer_pid) if peer_pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu_ms = (time.process_time() - cpu0) * 1000 / max(len(latencies), 1)
    peer_cpu_ms = (cpu_s(peer_pid) - peer_cpu0) * 1000 / max(len(latencies), 1) if peer_pid else None
    batches = embedder.stats()["embed_batches"] - batches_before
    await cache.close()
    await r.aclose()
    return {"lookups": len(latencies), "concurrency": concurrency, "hits": hits, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "hit_p50_ms": pct(hit_latencies, 50), "hit_p99_ms": pct(hit_latencies, 99),
            "lookups_per_s": len(latencies) / wall, "embed_batches": batches,
            "cpu_ms_per_lookup": cpu_ms, "embedding_server_cpu_ms_per_lookup": peer_cpu_ms,
            "embedder": embedder.stats()["embedder"], "embedder_backend": embedder.stats().get("embedder_backend"),
            "backend": cache.stats()["index_backend"], "load_avg_1m": os.getloadavg()[0]}


async def bench_knn(url: str, kind: str, *, entries: int, dim: int, num_queries: int) -> dict[str, Any]:
    """KNN only: ``entries`` random unit vectors in one scope, ``num_queries`` sequential top-5 searches."""
    r = aioredis.Redis.from_url(url)
    await r.flushall()
    ks = Keyspace(prefix="bench")
    rng = np.random.default_rng(0)
    scope = "f" * 64
    t0 = time.perf_counter()
    chunk = 2000
    for start in range(0, entries, chunk):
        vecs = rng.standard_normal((min(chunk, entries - start), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        async with r.pipeline(transaction=False) as pipe:
            for i, v in enumerate(vecs):
                pipe.hset(ks.vector(f"{start + i:064x}"), mapping=vector_index.doc_fields(
                    v, scope_hash=scope, text=f"stored text {start + i}", ttl_s=3600))
            await pipe.execute()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if kind == "search":
        index: Any = await SearchIndex.open(r, keyspace=ks, dim=dim)
        while True:  # wait until the background indexer has every document
            info = await r.execute_command("FT.INFO", ks.vector_index)
            fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2]))
            num = int(float(fields.get(b"num_docs", fields.get("num_docs", 0))))
            indexing = float(fields.get(b"indexing", fields.get("indexing", 0)))
            if num >= entries and not indexing:
                break
            await asyncio.sleep(0.5)
        memory = None
    else:
        index = await index_client.ClientIndex.open(r, keyspace=ks, dim=dim, max_entries=max(entries, 1),
                                                    reconcile_interval_s=0)
        memory = index.stats()["index_memory_bytes"]
    build_s = time.perf_counter() - t0
    queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    lat = []
    for q in queries:
        t = time.perf_counter()
        got = await index.search(q, scope_hash=scope, k=5, min_similarity=-1.0)
        lat.append((time.perf_counter() - t) * 1000)
        assert len(got) == 5
    await index.close()
    await r.flushall()
    await r.aclose()
    return {"backend": kind, "entries": entries, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "load_s": load_s, "index_build_s": build_s, "index_memory_bytes": memory}


async def bench_exact_path(url: str, *, num_requests: int) -> dict[str, Any] | None:
    """Exact-hit latency through the real proxy with --mode exact vs --mode both (stub upstream)."""
    try:
        from aiohttp import ClientSession
        from aiohttp.test_utils import TestServer

        from llmcache.proxy import settings as ps
        from llmcache.proxy.app import create_app
        from llmcache.testing.stub_upstream import StubConfig, create_stub_app
    except ImportError as exc:
        print(f"proxy not available ({exc}): exact-path comparison skipped", file=sys.stderr)
        return None
    out: dict[str, Any] = {}
    body = {"model": "stub-model", "temperature": 0, "messages": [{"role": "user", "content": "What is a radix tree?"}]}
    up = TestServer(create_stub_app(StubConfig()), host="127.0.0.1")
    await up.start_server()
    try:
        for mode in ("exact", "both"):
            r = aioredis.Redis.from_url(url)
            await r.flushall()
            await r.aclose()
            settings = ps.ProxySettings(
                cache=ps.CacheSettings(mode=mode, tenant_salt=b"bench-salt"),
                redis=ps.RedisSettings(url=url, timeout_ms=2000),
                upstream=ps.UpstreamSettings(url=str(up.make_url("")).rstrip("/"), timeout_s=30.0),
                semantic=ps.SemanticSettings(timeout_s=10.0))
            px = TestServer(create_app(settings), host="127.0.0.1")
            await px.start_server()
            try:
                async with ClientSession() as http:
                    target = str(px.make_url("/v1/chat/completions"))
                    async with http.post(target, json=body) as resp:
                        await resp.read()
                    await asyncio.sleep(1.0)  # let the store (and semantic add) finish
                    lat, statuses = [], {}
                    for _ in range(num_requests):
                        t0 = time.perf_counter()
                        async with http.post(target, json=body) as resp:
                            await resp.read()
                            st = resp.headers.get("X-LLMCache-Status", "?")
                        lat.append((time.perf_counter() - t0) * 1000)
                        statuses[st] = statuses.get(st, 0) + 1
                out[mode] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "statuses": statuses}
            finally:
                await px.close()
    finally:
        await up.close()
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels, p50, p99 = [], [], []
    for name, m in result["lookups"].items():
        labels.append(name)
        p50.append(m["p50_ms"])
        p99.append(m["p99_ms"])
    x = np.arange(len(labels))
    axes[0].bar(x - 0.2, p50, 0.4, label="p50")
    axes[0].bar(x + 0.2, p99, 0.4, label="p99")
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("ms")
    axes[0].set_title("semantic lookup, new texts")
    axes[0].legend()
    knn = result["knn"]
    axes[1].bar([k["backend"] for k in knn], [k["p50_ms"] for k in knn])
    axes[1].set_ylabel("ms (p50)")
    axes[1].set_title(f"KNN top-5 over {knn[0]['entries'] if knn else 0:,} entries")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def _phases(result: dict[str, Any], embedder: Any, label: str, url: str, args: argparse.Namespace, *,
                  peer_pid: int | None = None) -> None:
    """New texts at 32 concurrent and one at a time (cold embedding LRU each)."""
    for concurrency, num in ((32, args.lookups), (1, args.lookups_c1)):
        embedder._cache.clear()  # noqa: SLF001 - every run starts cold
        name = f"{label}, c={concurrency}"
        result["lookups"][name] = await bench_lookups(url, embedder, num_lookups=num, concurrency=concurrency,
                                                      num_stored=args.stored, peer_pid=peer_pid)
        print(f"  {name}: {result['lookups'][name]}", flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                          "load_avg_at_start": os.getloadavg()}, "lookups": {}, "knn": []}
    with EmbeddedRedis(with_search=True) as search_srv, EmbeddedRedis(with_search=False) as plain_srv:
        # Every lookup text is new, so the LRU only serves the verifier's word embeddings. Each backend
        # of the local embedder in turn (the first is the peer of the others), on the same data.
        for i, backend in enumerate(args.backends.split(",")):
            embedder = await LocalEmbedder.load(max_batch=64, backend=backend)
            try:
                await _phases(result, embedder, f"local {backend}", search_srv.url, args)
                if i:
                    continue
                for name, url, max_batch, fresh in (("client, batched", plain_srv.url, 64, True),
                                                    ("search, max_batch=1", search_srv.url, 1, True),
                                                    ("search, repeated texts (LRU)", search_srv.url, 64, False)):
                    embedder._max_batch = max_batch  # noqa: SLF001 - same model, other batching
                    if fresh:
                        embedder._cache.clear()  # noqa: SLF001 - every run starts cold
                    result["lookups"][f"local {backend}, {name}"] = await bench_lookups(
                        url, embedder, num_lookups=args.lookups, concurrency=32, num_stored=args.stored)
                    print(f"  {name}: {result['lookups'][f'local {backend}, {name}']}", flush=True)
            finally:
                await embedder.close()
        if args.remote:
            await bench_remote(result, search_srv.url, args)
        for kind, url in (("search", search_srv.url), ("client", plain_srv.url)) if args.entries > 0 else ():
            result["knn"].append(
                await bench_knn(url, kind, entries=args.entries, dim=384, num_queries=args.knn_queries))
            print(f"  knn {result['knn'][-1]}", flush=True)
        if not args.skip_proxy:
            result["exact_path"] = await bench_exact_path(search_srv.url, num_requests=args.exact_requests)
            print(f"  exact path {result['exact_path']}", flush=True)
    return result


async def bench_remote(result: dict[str, Any], url: str, args: argparse.Namespace) -> None:
    """The sidecar's path: RemoteEmbedder (keep-alive, micro-batched, base64 vectors) → the model server's
    ``/v1/embeddings`` in its own process (``--model random-tiny``: only the embedder matters here)."""
    import subprocess

    from llmcache.proxy.semantic.embedder import RemoteEmbedder
    from llmcache.redis_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([sys.executable, "-m", "llmcache", "model-server", "--model", "random-tiny", "--device",
                               "cpu", "--enable-embeddings", "true", "--listen", f"127.0.0.1:{port}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        embedder = None
        while embedder is None:
            try:
                embedder = await RemoteEmbedder.connect(url=f"http://127.0.0.1:{port}", max_batch=64,
                                                        timeout_s=30.0)
            except Exception:  # still starting
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            # Warm the server's ONNX Runtime for the batch shapes measured (its first runs are slower),
            # as the local embedder was warmed by the phases before it.
            for n in (1, 8, 32, 1):
                await embedder.embed([f"warm-up text {n} {i}" for i in range(n)])
            await _phases(result, embedder, "remote (model server /v1/embeddings)", url, args, peer_pid=server.pid)
        finally:
            await embedder.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="vectors for the KNN benchmark")
    parser.add_argument("--lookups", type=int, default=640, help="new texts looked up at 32 concurrent")
    parser.add_argument("--lookups-c1", type=int, default=96, help="new texts looked up one at a time")
    parser.add_argument("--backends", default="onnx,torch",
                        help="local embedder backends to run, comma-separated; the first is the headline")
    parser.add_argument("--remote", action="store_true",
                        help="also the sidecar's remote path: a model server process's /v1/embeddings")
    parser.add_argument("--stored", type=int, default=1200, help="real questions stored for the lookup benchmark")
    parser.add_argument("--knn-queries", type=int, default=300)
    parser.add_argument("--exact-requests", type=int, default=300)
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--name", default="semantic_bench", help="result file stem (default: semantic_bench)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"\n{'semantic lookup, new texts':<52}{'p50 ms':>8}{'p99 ms':>8}{'hit p50':>8}{'hit p99':>8}"
          f"{'lookups/s':>10}{'CPU ms':>8}{'batches':>8}{'hits':>6}")
    for name, m in result["lookups"].items():
        cpu = m["cpu_ms_per_lookup"] + (m["embedding_server_cpu_ms_per_lookup"] or 0.0)
        print(f"{name:<52}{m['p50_ms']:8.1f}{m['p99_ms']:8.1f}{m['hit_p50_ms']:8.1f}{m['hit_p99_ms']:8.1f}"
              f"{m['lookups_per_s']:10.1f}{cpu:8.2f}{m['embed_batches']:8d}{m['hits']:6d}")
    print("(CPU ms: per lookup, this process plus the embedding server's; load avg at start "
          f"{result['machine']['load_avg_at_start'][0]:.1f})")
    print(f"\n{'KNN top-5':<34}{'entries':>9}{'p50 ms':>9}{'p99 ms':>9}{'memory MiB':>12}")
    for k in result["knn"]:
        mem = "-" if k["index_memory_bytes"] is None else f"{k['index_memory_bytes'] / 2**20:.1f}"
        print(f"{k['backend']:<34}{k['entries']:9d}{k['p50_ms']:9.2f}{k['p99_ms']:9.2f}{mem:>12}")
    if result.get("exact_path"):
        print(f"\n{'exact hit through the proxy':<34}{'p50 ms':>9}{'p99 ms':>9}")
        for mode, m in result["exact_path"].items():
            print(f"--mode {mode:<27}{m['p50_ms']:9.2f}{m['p99_ms']:9.2f}   {m['statuses']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{args.name}.png")
    print(f"\nwrote {out / (args.name + '.json')} and {out / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
