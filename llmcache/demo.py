"""``llmcache demo``: run the stack, replay a realistic workload, report what caching bought.

The built-in workload (``llmcache/data/demo_workload.json``) is a support bot:
one system prompt shared by every request, exact repeats, paraphrases, hard
negatives that must not hit ("enable 2FA" vs "disable 2FA", "order 1234" vs
"order 1243", the same question after a different conversation, the same
question from another tenant), multi-turn conversations and two tenants (two
API keys). It is replayed in order through the official ``openai`` client,
streaming and non-streaming, at temperature 0.

The report counts requests by ``X-LLMCache-Status``, latency p50/p95 by status,
the share of prompt tokens the model server took from its prefix KV cache
(``usage.prompt_tokens_details.cached_tokens`` of the requests that reached it),
tokens and estimated money saved by cache hits, and **false hits**: a request
marked ``no-hit`` that came back ``hit`` or ``semantic-hit``. It writes a JSON
result and a PNG plot (latency by status, cumulative hit rate) and prints
their paths. Each run uses its own ``X-LLMCache-Namespace`` so a second run
against the same Redis starts cold.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import logging
import math
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmcache import stack as stack_mod
from llmcache.errors import ConfigError, DependencyError
from llmcache.settings import add_flag

__all__ = [
    "Prices",
    "RequestResult",
    "Workload",
    "WorkloadRequest",
    "configure",
    "format_report",
    "load_workload",
    "replay",
    "run",
    "summarize",
    "write_plot",
]

log = logging.getLogger(__name__)

HIT_STATUSES = ("hit", "semantic-hit")
STATUSES = ("hit", "semantic-hit", "miss", "bypass")
_KINDS = ("first", "repeat", "paraphrase", "negative", "cross-tenant")
_EXPECT = ("miss", "hit", "semantic-hit", "no-hit")


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    """One chat request of the workload; ``messages`` excludes the shared system prompt."""

    id: str
    tenant: str
    kind: str
    expect: str
    messages: tuple[dict[str, str], ...]
    stream: bool = False
    quick: bool = False
    of: str | None = None

    @property
    def is_negative(self) -> bool:
        """A request a correct cache must not answer from another request's entry."""
        return self.expect == "no-hit"


@dataclass(frozen=True, slots=True)
class Workload:
    system_prompt: str
    tenants: dict[str, str]
    """tenant name → API key (the proxy derives the tenant from ``Authorization``)."""
    requests: tuple[WorkloadRequest, ...]


@dataclass(slots=True)
class RequestResult:
    """What one request observed. Holds ids and numbers only, never prompt text."""

    index: int
    id: str
    tenant: str
    kind: str
    expect: str
    stream: bool
    status: str
    """``X-LLMCache-Status`` (``none`` when the header is missing: not a llmcache proxy)."""
    latency_ms: float
    """Request start to the last byte of the answer (last chunk for streams)."""
    ttft_ms: float | None
    """Time to the first content chunk (streams only)."""
    similarity: float | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    """``usage.prompt_tokens_details.cached_tokens`` as reported (0 when absent)."""
    finish_reason: str | None
    false_hit: bool
    t_s: float
    """Seconds since the replay started, at the end of the request."""


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1000 tokens used to price what hits saved (same unit as the proxy's flags).

    Defaults are list prices of a mid-size hosted model (0.0025 input / 0.01
    output per 1k tokens), a typical thing to put behind a cache; set your own
    with ``--price-input-per-1k`` / ``--price-output-per-1k``.
    """

    input_per_1k: float = 0.0025
    """USD per 1000 prompt tokens."""
    output_per_1k: float = 0.01
    """USD per 1000 completion tokens."""

    def cost(self, *, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_1k / 1e3 + completion_tokens * self.output_per_1k / 1e3


# -- workload ---------------------------------------------------------------------------------
def load_workload(path: Path | None = None, *, quick: bool = False) -> Workload:
    """Load and validate a workload file (the bundled one when ``path`` is ``None``).

    ``quick`` keeps only the requests marked ``"quick": true``. Raises
    :class:`ConfigError` naming the file and field for anything malformed.
    """
    where = str(path) if path is not None else "llmcache/data/demo_workload.json"
    try:
        if path is None:
            text = importlib.resources.files("llmcache").joinpath("data/demo_workload.json").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        raw = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read workload {where}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema") != 1:
        raise ConfigError(f"workload {where}: expected an object with \"schema\": 1")
    system_prompt = raw.get("system_prompt")
    tenants = raw.get("tenants")
    if not isinstance(system_prompt, str) or not system_prompt:
        raise ConfigError(f"workload {where}: system_prompt must be a non-empty string")
    if not isinstance(tenants, dict) or not tenants or not all(isinstance(v, str) for v in tenants.values()):
        raise ConfigError(f"workload {where}: tenants must map names to API keys")
    requests: list[WorkloadRequest] = []
    seen: set[str] = set()
    for i, item in enumerate(raw.get("requests") or []):
        at = f"workload {where}: requests[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: must be an object")
        rid = item.get("id")
        if not isinstance(rid, str) or rid in seen:
            raise ConfigError(f"{at}: id must be a unique string")
        if item.get("tenant") not in tenants:
            raise ConfigError(f"{at} ({rid}): tenant must be one of {', '.join(tenants)}")
        if item.get("kind") not in _KINDS:
            raise ConfigError(f"{at} ({rid}): kind must be one of {', '.join(_KINDS)}")
        if item.get("expect") not in _EXPECT:
            raise ConfigError(f"{at} ({rid}): expect must be one of {', '.join(_EXPECT)}")
        if item.get("of") is not None and item["of"] not in seen:
            raise ConfigError(f"{at} ({rid}): 'of' must name an earlier request, got {item['of']!r}")
        messages = item.get("messages")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant")
                           and isinstance(m.get("content"), str) for m in messages)
                or messages[-1]["role"] != "user"):
            raise ConfigError(f"{at} ({rid}): messages must be user/assistant turns ending with a user turn")
        seen.add(rid)
        if quick and not item.get("quick", False):
            continue
        requests.append(WorkloadRequest(
            id=rid, tenant=item["tenant"], kind=item["kind"], expect=item["expect"],
            messages=tuple(dict(m) for m in messages), stream=bool(item.get("stream", False)),
            quick=bool(item.get("quick", False)), of=item.get("of"),
        ))
    if not requests:
        raise ConfigError(f"workload {where}: no requests{' marked quick' if quick else ''}")
    return Workload(system_prompt=system_prompt, tenants=dict(tenants), requests=tuple(requests))


# -- replay -----------------------------------------------------------------------------------
def _openai() -> Any:
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError("the demo needs the official openai client: pip install 'llmcache[demo]'") from exc
    return openai


def pick_model(base_url: str) -> str:
    """The first model id that ``GET /v1/models`` lists (through the proxy's pass-through)."""
    openai = _openai()
    client = openai.OpenAI(base_url=base_url, api_key="sk-demo-model-list", max_retries=2, timeout=30)
    try:
        models = list(client.models.list())
    except openai.OpenAIError as exc:
        raise DependencyError(f"GET {base_url}/models failed ({exc}); is the stack running at {base_url}?") from exc
    finally:
        client.close()
    if not models:
        raise DependencyError(f"GET {base_url}/models lists no model; pass --request-model NAME")
    return str(models[0].id)


def _usage_numbers(usage: Any) -> tuple[int, int, int]:
    if usage is None:
        return 0, 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0), int(cached or 0)


def _header_float(headers: Any, name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def replay(
    base_url: str,
    workload: Workload,
    *,
    model: str,
    max_tokens: int = 32,
    namespace: str | None = None,
    progress: Callable[[RequestResult, int], None] | None = None,
    timeout_s: float = 300.0,
) -> list[RequestResult]:
    """Send every request of ``workload`` in order to ``base_url`` and record what came back.

    Temperature 0 (greedy), so answers are deterministic and cacheable under the
    default non-deterministic policy. Streams ask for usage
    (``stream_options.include_usage``). One client per tenant, each with its own
    API key; ``namespace`` goes in ``X-LLMCache-Namespace``. Errors propagate.
    """
    openai = _openai()
    headers = {"X-LLMCache-Namespace": namespace} if namespace else {}
    clients = {name: openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout_s,
                                   default_headers=headers)
               for name, key in workload.tenants.items()}
    results: list[RequestResult] = []
    started = time.perf_counter()
    try:
        for index, req in enumerate(workload.requests):
            messages = [{"role": "system", "content": workload.system_prompt}, *req.messages]
            kwargs: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                                      "temperature": 0}
            client = clients[req.tenant]
            t0 = time.perf_counter()
            try:
                raw, usage, finish, ttft_ms = _send(client, req.stream, kwargs, t0)
            except openai.OpenAIError as exc:
                raise DependencyError(f"request {index + 1} ({req.id}) to {base_url} failed: {exc}") from exc
            latency_ms = (time.perf_counter() - t0) * 1000
            status = (raw.headers.get("x-llmcache-status") or "none").lower()
            prompt_tokens, completion_tokens, cached_tokens = _usage_numbers(usage)
            result = RequestResult(
                index=index, id=req.id, tenant=req.tenant, kind=req.kind, expect=req.expect,
                stream=req.stream, status=status, latency_ms=latency_ms, ttft_ms=ttft_ms,
                similarity=_header_float(raw.headers, "x-llmcache-similarity"),
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                cached_tokens=cached_tokens, finish_reason=finish,
                false_hit=req.is_negative and status in HIT_STATUSES,
                t_s=time.perf_counter() - started,
            )
            results.append(result)
            if progress is not None:
                progress(result, len(workload.requests))
    finally:
        for client in clients.values():
            client.close()
    return results


def scrape_counters(metrics_url: str, names: Sequence[str], *, timeout_s: float = 5.0) -> dict[str, float] | None:
    """Sum of the samples of each counter in ``names`` at a Prometheus ``/metrics`` URL.

    ``None`` when the URL does not answer (the report then omits the cross-check).
    """
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:  # noqa: S310 - our own stack
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name in totals:
            with contextlib.suppress(ValueError):
                totals[name] += float(value)
    return totals


#: Model-server counters the report cross-checks against the responses' usage.
PREFIX_COUNTERS = ("llmcache_model_prefix_cache_queried_tokens_total", "llmcache_model_prefix_cache_hit_tokens_total")


def _send(client: Any, stream: bool, kwargs: dict[str, Any], t0: float) -> tuple[Any, Any, str | None, float | None]:
    """One chat request; returns (raw response, usage, finish_reason, time to first content in ms)."""
    ttft_ms: float | None = None
    finish: str | None = None
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            stream=True, stream_options={"include_usage": True}, **kwargs)
        usage = None
        for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if ttft_ms is None and choice.delta and choice.delta.content:
                    ttft_ms = (time.perf_counter() - t0) * 1000
                if choice.finish_reason:
                    finish = choice.finish_reason
    else:
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        completion = raw.parse()
        usage = completion.usage
        finish = completion.choices[0].finish_reason if completion.choices else None
    return raw, usage, finish, ttft_ms


# -- report -----------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: Sequence[RequestResult], *, prices: Prices | None = None) -> dict[str, Any]:
    """Aggregate the results into the report's numbers (a JSON-ready dict).

    - ``by_status``: count and latency p50/p95 per ``X-LLMCache-Status``.
    - ``by_kind``: per workload kind, counts per status.
    - ``prefix_cache``: over requests that reached the model server (``miss``,
      ``bypass``), prompt tokens and those taken from its prefix KV cache.
    - ``saved``: prompt/completion tokens of hits (not computed again) and their price.
    - ``negatives`` / ``false_hits``: requests that must not hit, and those that did.
    - ``expectations``: how many requests got exactly their ``expect`` status.
    """
    prices = prices or Prices()
    by_status: dict[str, dict[str, Any]] = {}
    for status in sorted({r.status for r in results} | set(STATUSES), key=_status_order):
        lat = [r.latency_ms for r in results if r.status == status]
        by_status[status] = {"requests": len(lat), "p50_ms": _percentile(lat, 50), "p95_ms": _percentile(lat, 95)}
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        by_kind.setdefault(r.kind, dict.fromkeys(STATUSES, 0))
        by_kind[r.kind][r.status] = by_kind[r.kind].get(r.status, 0) + 1
    upstream = [r for r in results if r.status not in HIT_STATUSES]
    upstream_prompt = sum(r.prompt_tokens for r in upstream)
    upstream_cached = sum(r.cached_tokens for r in upstream)
    hits = [r for r in results if r.status in HIT_STATUSES]
    saved_prompt = sum(r.prompt_tokens for r in hits)
    saved_completion = sum(r.completion_tokens for r in hits)
    negatives = [r for r in results if r.expect == "no-hit"]
    met = sum(1 for r in results
              if (r.expect == "no-hit" and r.status not in HIT_STATUSES) or r.expect == r.status)
    return {
        "requests": len(results),
        "hit_rate": (len(hits) / len(results)) if results else 0.0,
        "by_status": by_status,
        "by_kind": by_kind,
        "prefix_cache": {
            "model_requests": len(upstream),
            "prompt_tokens": upstream_prompt,
            "cached_tokens": upstream_cached,
            "cached_share": (upstream_cached / upstream_prompt) if upstream_prompt else 0.0,
        },
        "saved": {
            "requests": len(hits),
            "prompt_tokens": saved_prompt,
            "completion_tokens": saved_completion,
            "usd": prices.cost(prompt_tokens=saved_prompt, completion_tokens=saved_completion),
            "prices_usd_per_1k": {"input": prices.input_per_1k, "output": prices.output_per_1k},
        },
        "negatives": len(negatives),
        "false_hits": [r.id for r in negatives if r.false_hit],
        "expectations": {"met": met, "total": len(results),
                         "missed": [{"id": r.id, "expect": r.expect, "status": r.status}
                                    for r in results
                                    if not ((r.expect == "no-hit" and r.status not in HIT_STATUSES)
                                            or r.expect == r.status)]},
    }


def _status_order(status: str) -> int:
    return STATUSES.index(status) if status in STATUSES else len(STATUSES)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_report(summary: dict[str, Any], *, title: str = "") -> str:
    """The table ``llmcache demo`` prints."""
    lines = [title] if title else []
    lines += ["", f"{'cache status':<14}{'requests':>9}{'p50 ms':>10}{'p95 ms':>10}"]
    for status, row in summary["by_status"].items():
        lines.append(f"{status:<14}{row['requests']:>9}{_ms(row['p50_ms']):>10}{_ms(row['p95_ms']):>10}")
    lines.append(f"{'total':<14}{summary['requests']:>9}   hit rate {summary['hit_rate']:.0%}")
    lines += ["", f"{'workload kind':<14}" + "".join(f"{s:>14}" for s in STATUSES)]
    for kind, counts in summary["by_kind"].items():
        lines.append(f"{kind:<14}" + "".join(f"{counts.get(s, 0):>14}" for s in STATUSES))
    pc = summary["prefix_cache"]
    saved = summary["saved"]
    prices = saved["prices_usd_per_1k"]
    lines += [
        "",
        f"prefix KV cache at the model server: {pc['cached_tokens']:,} of {pc['prompt_tokens']:,} prompt tokens "
        f"reused ({pc['cached_share']:.1%}) over {pc['model_requests']} requests",
    ]
    metrics = pc.get("metrics")
    if metrics:
        lines.append(f"  model server /metrics over the run: {metrics['hit_tokens']:,.0f} prefix-cache hit tokens of "
                     f"{metrics['queried_tokens']:,.0f} queried")
    lines += [
        f"answered from cache: {saved['requests']} requests, {saved['prompt_tokens']:,} prompt + "
        f"{saved['completion_tokens']:,} completion tokens not computed",
        f"estimated money saved: ${saved['usd']:.4f} (at ${prices['input']:g} input / "
        f"${prices['output']:g} output per 1k tokens)",
        f"false hits on the {summary['negatives']} built-in negatives: {len(summary['false_hits'])}"
        + (f"  <-- {', '.join(summary['false_hits'])}" if summary["false_hits"] else ""),
        f"requests with the expected status: {summary['expectations']['met']}/{summary['expectations']['total']}",
    ]
    for miss in summary["expectations"]["missed"]:
        lines.append(f"  {miss['id']}: expected {miss['expect']}, got {miss['status']}")
    unlabelled = summary["by_status"].get("none", {}).get("requests", 0)
    if unlabelled:
        lines.append(f"{unlabelled} responses carried no X-LLMCache-Status header: is the base URL a llmcache proxy?")
    return "\n".join(lines)


_COLORS = {"hit": "#2a9d8f", "semantic-hit": "#8ab17d", "miss": "#e76f51", "bypass": "#8d99ae"}


def write_plot(results: Sequence[RequestResult], path: Path, *, title: str = "llmcache demo") -> Path:
    """Write a PNG: latency by cache status (left), cumulative hit rate over the run (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    statuses = sorted({r.status for r in results}, key=_status_order)
    for x, status in enumerate(statuses):
        lat = [r.latency_ms for r in results if r.status == status]
        ax_lat.boxplot([lat], positions=[x], widths=0.5, showfliers=False)
        jitter = [x + ((i % 7) - 3) * 0.04 for i in range(len(lat))]
        ax_lat.scatter(jitter, lat, s=14, alpha=0.8, color=_COLORS.get(status, "#555555"), zorder=3)
    ax_lat.set_xticks(range(len(statuses)), [f"{s}\n(n={sum(r.status == s for r in results)})" for s in statuses])
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log scale)")
    ax_lat.set_title("latency by cache status")
    ax_lat.grid(axis="y", alpha=0.3)

    xs = list(range(1, len(results) + 1))
    hits = 0
    rate = []
    for r in results:
        hits += r.status in HIT_STATUSES
        rate.append(hits / (len(rate) + 1))
    ax_rate.plot(xs, rate, color="#264653", lw=1.5, label="cumulative hit rate")
    for status in statuses:
        pts = [(i + 1, rate[i]) for i, r in enumerate(results) if r.status == status]
        ax_rate.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, color=_COLORS.get(status, "#555555"),
                        label=status, zorder=3)
    false = [(i + 1, rate[i]) for i, r in enumerate(results) if r.false_hit]
    if false:
        ax_rate.scatter([p[0] for p in false], [p[1] for p in false], s=80, marker="x", color="red",
                        label="false hit", zorder=4)
    ax_rate.set_ylim(0, 1)
    ax_rate.set_xlabel("request #")
    ax_rate.set_ylabel("hit + semantic-hit share")
    ax_rate.set_title("cumulative hit rate")
    ax_rate.grid(alpha=0.3)
    ax_rate.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- CLI --------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    stack_mod.add_stack_flags(parser, any_port=True)
    add_flag(parser, "--base-url", default=None,
             help="use a running llmcache proxy (e.g. http://127.0.0.1:8080/v1) instead of starting the stack")
    add_flag(parser, "--workload", default=None, type=Path, help="workload JSON (default: the built-in one)")
    add_flag(parser, "--quick", action="store_true", help="replay only the reduced subset (requests marked quick)")
    add_flag(parser, "--max-tokens", default=32, type=int,
             help="max_tokens per request; small so the demo stays fast on a CPU")
    add_flag(parser, "--request-model", default=None,
             help="model name to send (default: the first one GET /v1/models lists)")
    add_flag(parser, "--price-input-per-1k", default=Prices().input_per_1k, type=float,
             help="USD per 1000 prompt tokens, to price what hits saved (also passed to the proxy)")
    add_flag(parser, "--price-output-per-1k", default=Prices().output_per_1k, type=float,
             help="USD per 1000 completion tokens, to price what hits saved (also passed to the proxy)")
    add_flag(parser, "--output-dir", default=Path("llmcache-demo-results"), type=Path,
             help="where demo.json and demo.png are written")


def _print_progress(result: RequestResult, total: int) -> None:
    mark = "  FALSE HIT" if result.false_hit else ""
    sim = f" sim={result.similarity:.3f}" if result.similarity is not None else ""
    print(f"  [{result.index + 1:>2}/{total}] {result.id:<22} {result.kind:<12} "
          f"{'stream' if result.stream else 'json':<6} -> {result.status:<12} {result.latency_ms:>8.1f} ms{sim}{mark}",
          flush=True)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    # The HTTP client logs every request at INFO; the progress lines already say it better.
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    workload = load_workload(args.workload, quick=args.quick)
    prices = Prices(input_per_1k=args.price_input_per_1k, output_per_1k=args.price_output_per_1k)
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    stack: stack_mod.Stack | None = None
    # SIGTERM (e.g. `timeout`, a CI runner) unwinds like Ctrl-C so the stack is stopped in order.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.base_url:
            base_url = args.base_url.rstrip("/")
            print(f"using the running stack at {base_url}", flush=True)
        else:
            print("starting the llmcache stack (Redis + model server + proxy) …", flush=True)
            config = stack_mod.config_from_args(args)
            if config.log_dir is None:
                config.log_dir = args.output_dir / "logs"
            # The proxy prices its llmcache_saved_usd_total metric the same way.
            config.proxy_args += ["--price-input-per-1k", str(prices.input_per_1k),
                                  "--price-output-per-1k", str(prices.output_per_1k)]
            stack = stack_mod.Stack(config, progress=lambda line: print(f"  {line}", flush=True))
            stack.start()
            base_url = stack.base_url
            print(f"stack ready at {base_url}", flush=True)
        model = args.request_model or pick_model(base_url)
        print(f"replaying {len(workload.requests)} requests (model {model}, max_tokens {args.max_tokens}, "
              f"namespace {namespace}) …", flush=True)
        metrics_url = f"{stack.model_server_url}/metrics" if stack is not None and stack.model_server_url else None
        before = scrape_counters(metrics_url, PREFIX_COUNTERS) if metrics_url else None
        results = replay(base_url, workload, model=model, max_tokens=args.max_tokens, namespace=namespace,
                         progress=_print_progress)
        after = scrape_counters(metrics_url, PREFIX_COUNTERS) if metrics_url else None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stack is not None:
            print("stopping the stack …", flush=True)
            stack.stop()
    summary = summarize(results, prices=prices)
    if before is not None and after is not None:
        summary["prefix_cache"]["metrics"] = {
            "queried_tokens": after[PREFIX_COUNTERS[0]] - before[PREFIX_COUNTERS[0]],
            "hit_tokens": after[PREFIX_COUNTERS[1]] - before[PREFIX_COUNTERS[1]],
        }
    title = f"llmcache demo: {len(results)} requests via {base_url} (model {model})"
    print(format_report(summary, title="\n" + title))
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "demo.json"
    json_path.write_text(json.dumps({
        "base_url": base_url, "model": model, "max_tokens": args.max_tokens, "namespace": namespace,
        "quick": bool(args.quick), "summary": summary, "requests": [asdict(r) for r in results],
    }, indent=2) + "\n")
    png_path = write_plot(results, out_dir / "demo.png", title=title)
    print(f"\nresults: {json_path.resolve()}\nplot:    {png_path.resolve()}")
    if summary["false_hits"]:
        print(f"llmcache: error: {len(summary['false_hits'])} false hit(s) on the built-in negatives",
              file=sys.stderr)
        return 1
    return 0
