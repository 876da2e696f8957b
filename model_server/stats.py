"""What the engine reports: plain objects, no metrics library (vLLM v1's ``SchedulerStats`` / ``IterationStats``).

The engine fills an :class:`IterationStats` while it runs one step and, at the end of the
step, hands it with the level snapshots to every :class:`StatLogger` (the Prometheus
metrics of :class:`llmcache.model_server.metrics.ModelServerMetrics`; an engine built
without metrics has no logger)::

    Engine step ───────────▶ IterationStats   (what happened: tokens, latencies, finishes,  ┐
                                               prefix blocks stored/removed)               │
    Scheduler.stats() ─────▶ SchedulerStats   (levels: running, waiting, KV reserved)      ├─▶ StatLogger.record
    RadixCache.stats() ────▶ PrefixCacheStats (levels and monotonic counters)              ┘

The loggers: :class:`~llmcache.model_server.metrics.ModelServerMetrics` (Prometheus) and
:class:`~llmcache.model_server.prefix_events.PrefixEventLog` (what routers follow).

Stats are recorded before the step's results are handed to their requests, so a client
that has its answer also sees it counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "FinishedRequestStats",
    "IterationStats",
    "PrefixBlockEvent",
    "PrefixCacheStats",
    "SchedulerStats",
    "StatLogger",
]


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """Levels of the scheduler right now."""

    num_running: int
    num_waiting: int
    kv_allocated_bytes: int
    """KV bytes the running sequences' buffers hold (capacity, not length)."""
    kv_reserved_bytes: int
    """KV bytes reserved by the running sequences (prompt + max_tokens each)."""
    kv_budget_bytes: int


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """Size of the prefix cache and its monotonic counters right now."""

    total_bytes: int
    budget_bytes: int
    num_nodes: int
    num_evictions: int
    """Nodes evicted since the cache was made."""
    num_queried_tokens: int
    num_hit_tokens: int


@dataclass(frozen=True, slots=True)
class FinishedRequestStats:
    """One request that left the running set."""

    finish_reason: str
    e2e_latency_s: float
    """From queueing to its last token."""


@dataclass(frozen=True, slots=True)
class PrefixBlockEvent:
    """Block hashes (:mod:`llmcache.prefix_hash`) that entered or left the prefix cache in one insert."""

    namespace: str
    """Where ``stored`` went (removals may come from any namespace: eviction picks the LRU leaf)."""
    stored: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()


@dataclass(slots=True)
class IterationStats:
    """What happened during one engine step (or one submit that was refused)."""

    num_prompt_tokens: int = 0
    """Prompt tokens of the requests admitted in this step."""
    num_generation_tokens: int = 0
    num_prefix_queried_tokens: int = 0
    num_prefix_hit_tokens: int = 0
    num_sink_evicted_tokens: int = 0
    batch_size: int = 0
    """Sequences in this step's forward pass (0: no forward pass ran)."""
    num_batched_tokens: int = 0
    """Tokens fed in this step's forward pass (decodes + prefill chunks)."""
    queue_times_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    inter_token_latencies_s: list[float] = field(default_factory=list)
    prefix_lookup_s: list[float] = field(default_factory=list)
    prefix_insert_s: list[float] = field(default_factory=list)
    finished: list[FinishedRequestStats] = field(default_factory=list)
    num_rejected: dict[str, int] = field(default_factory=dict)
    """Requests answered 429, by reason (``queue_full``, ``queue_timeout``)."""
    prefix_block_events: list[PrefixBlockEvent] = field(default_factory=list)
    """What the prefix cache's published blocks did, in order (for routers)."""


class StatLogger(Protocol):
    """Where the engine's stats go (the Prometheus metrics, or a test's recorder)."""

    def record(self, scheduler: SchedulerStats, iteration: IterationStats | None = None,
               prefix_cache: PrefixCacheStats | None = None) -> None:
        """Take one step's stats; called from the inference worker (or a submitting thread), never blocking."""
