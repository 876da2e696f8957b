"""The demo's workload file and report arithmetic (the replay itself runs in tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcache import demo
from llmcache.errors import ConfigError


def test_bundled_workload_covers_what_the_demo_promises() -> None:
    workload = demo.load_workload()
    kinds = {r.kind for r in workload.requests}
    assert kinds == {"first", "repeat", "paraphrase", "negative", "cross-tenant"}
    assert len(workload.tenants) == 2
    assert {r.tenant for r in workload.requests} == set(workload.tenants)
    assert any(r.stream for r in workload.requests) and any(not r.stream for r in workload.requests)
    assert any(len(r.messages) >= 3 for r in workload.requests), "multi-turn conversations"
    by_id = {r.id: r for r in workload.requests}
    for r in workload.requests:
        if r.kind in ("repeat", "paraphrase", "negative", "cross-tenant"):
            assert r.of in by_id, r.id
            earlier = by_id[r.of]
            if r.kind == "repeat":
                assert r.messages == earlier.messages and r.tenant == earlier.tenant
            if r.kind == "cross-tenant":
                assert r.messages == earlier.messages and r.tenant != earlier.tenant
            if r.kind in ("paraphrase", "negative"):
                assert r.messages != earlier.messages and r.tenant == earlier.tenant
    # Negatives are asked after what they must not be confused with is cached.
    order = [r.id for r in workload.requests]
    for r in workload.requests:
        if r.is_negative:
            assert order.index(r.of) < order.index(r.id)  # type: ignore[arg-type]


def test_quick_subset_is_self_contained() -> None:
    quick = demo.load_workload(quick=True)
    ids = {r.id for r in quick.requests}
    assert 0 < len(quick.requests) < len(demo.load_workload().requests)
    assert all(r.of in ids for r in quick.requests if r.of is not None)
    assert {r.kind for r in quick.requests} >= {"first", "repeat", "paraphrase", "negative", "cross-tenant"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d["requests"][0].update(tenant="zz"), "requests[0] (q1): tenant"),
        (lambda d: d["requests"][1].update(of="later"), "'of' must name an earlier request"),
        (lambda d: d["requests"][0].update(messages=[{"role": "assistant", "content": "x"}]), "ending with a user"),
        (lambda d: d["requests"][1].update(id="q1"), "unique"),
    ],
)
def test_malformed_workload_is_rejected_with_the_field(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = {
        "schema": 1, "system_prompt": "s", "tenants": {"a": "k"},
        "requests": [
            {"id": "q1", "tenant": "a", "kind": "first", "expect": "miss",
             "messages": [{"role": "user", "content": "hi"}]},
            {"id": "q2", "of": "q1", "tenant": "a", "kind": "repeat", "expect": "hit",
             "messages": [{"role": "user", "content": "hi"}]},
        ],
    }
    mutate(doc)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        demo.load_workload(path)


def _result(i: int, status: str, *, expect: str = "miss", latency_ms: float = 10.0, prompt: int = 100,
            completion: int = 10, cached: int = 0, kind: str = "first") -> demo.RequestResult:
    return demo.RequestResult(
        index=i, id=f"r{i}", tenant="a", kind=kind, expect=expect, stream=False, status=status,
        latency_ms=latency_ms, ttft_ms=None, similarity=None, prompt_tokens=prompt, completion_tokens=completion,
        cached_tokens=cached, finish_reason="stop",
        false_hit=expect == "no-hit" and status in demo.HIT_STATUSES, t_s=float(i),
    )


def test_summary_counts_false_hits_savings_and_prefix_share() -> None:
    results = [
        _result(0, "miss", latency_ms=900, prompt=200, cached=0),
        _result(1, "miss", latency_ms=700, prompt=210, cached=190),
        _result(2, "hit", expect="hit", latency_ms=2, prompt=200, completion=12, kind="repeat"),
        _result(3, "semantic-hit", expect="semantic-hit", latency_ms=30, prompt=205, completion=8,
                kind="paraphrase"),
        _result(4, "semantic-hit", expect="no-hit", latency_ms=31, kind="negative"),
        _result(5, "miss", expect="no-hit", latency_ms=800, prompt=190, cached=180, kind="negative"),
    ]
    s = demo.summarize(results, prices=demo.Prices(input_per_1k=1.0, output_per_1k=4.0))
    assert s["by_status"]["miss"]["requests"] == 3
    assert s["by_status"]["miss"]["p50_ms"] == 800 and s["by_status"]["miss"]["p95_ms"] == 900
    assert s["by_status"]["bypass"]["requests"] == 0 and s["by_status"]["bypass"]["p50_ms"] is None
    assert s["hit_rate"] == pytest.approx(3 / 6)
    # Only requests that reached the model server count for its prefix cache.
    assert s["prefix_cache"] == {"model_requests": 3, "prompt_tokens": 600, "cached_tokens": 370,
                                 "cached_share": pytest.approx(370 / 600)}
    assert s["saved"]["prompt_tokens"] == 200 + 205 + 100
    assert s["saved"]["completion_tokens"] == 12 + 8 + 10
    assert s["saved"]["usd"] == pytest.approx((505 * 1.0 + 30 * 4.0) / 1e3)
    assert s["negatives"] == 2
    assert s["false_hits"] == ["r4"]
    assert s["expectations"]["met"] == 5
    text = demo.format_report(s)
    assert "false hits on the 2 built-in negatives: 1  <-- r4" in text
    assert "370 of 600 prompt tokens reused (61.7%)" in text
    assert "no X-LLMCache-Status header" not in text


def test_report_points_out_a_base_url_that_is_not_a_proxy() -> None:
    s = demo.summarize([_result(0, "none"), _result(1, "none", expect="hit")])
    assert s["hit_rate"] == 0.0
    text = demo.format_report(s)
    assert "2 responses carried no X-LLMCache-Status header: is the base URL a llmcache proxy?" in text


def test_plot_is_written(tmp_path: Path) -> None:
    results = [_result(0, "miss", latency_ms=500), _result(1, "hit", expect="hit", latency_ms=1.5),
               _result(2, "semantic-hit", expect="no-hit", latency_ms=20)]
    path = demo.write_plot(results, tmp_path / "out" / "demo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scrape_counters_sums_labelled_samples() -> None:
    import http.server
    import threading

    body = (b"# HELP llmcache_model_prefix_cache_hit_tokens_total x\n"
            b"# TYPE llmcache_model_prefix_cache_hit_tokens_total counter\n"
            b"llmcache_model_prefix_cache_hit_tokens_total 120.0\n"
            b'llmcache_model_requests_total{endpoint="chat",status="200"} 3.0\n'
            b'llmcache_model_requests_total{endpoint="models",status="200"} 2.0\n'
            b"llmcache_model_requests_created 1.7e9\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        got = demo.scrape_counters(url, ["llmcache_model_prefix_cache_hit_tokens_total",
                                         "llmcache_model_requests_total", "absent_total"])
    finally:
        server.shutdown()
        server.server_close()
    assert got == {"llmcache_model_prefix_cache_hit_tokens_total": 120.0, "llmcache_model_requests_total": 5.0,
                   "absent_total": 0.0}
    assert demo.scrape_counters(url, ["x"]) is None  # nothing listens any more
