"""Error-bounded semantic caching in the sidecar: decide per candidate, judge what was not served, learn.

With a bound δ (``spec.semantic.maxErrorRate`` / ``--semantic-max-error-rate``) the verifier's
consent is necessary but no longer sufficient: a candidate is served only where judged outcomes
certify that candidates like it are wrong at most δ of the time (the model and its arithmetic
are :mod:`llmcache.errorbound`)::

    handlers  semantic lookup ─▶ best candidate the verifier accepted (refusals stay refusals)
              ErrorBound.admit(call, match)   (one round trip: this pair's record, the entry's veto)
                ├ its cell (class × similarity bin) not certified ─────────────▶ miss, judge later
                ├ its entry was judged wrong at this similarity or above (veto) ▶ miss, judge later
                ├ explore: explore_rate of would-be hits, within the budget ───▶ miss, judge later
                └ serve: semantic-hit
    misses    upstream answer relayed to the client, then ErrorBound.submit(pending, fresh entry)
    workers   bounded queue ─▶ cached answer (Redis) ─▶ judge(fresh, cached) ─▶ counters, pair record,
              entry veto (the request's own answer is stored under its key as on any miss: its next
              identical prompt is an exact hit, and the pair record makes the pair an alias everywhere)
    every refresh_s: counters ─HINCRBY─▶ {p}:b:{group} ─HGETALL─▶ fit(δ) (shared by every sidecar)

Nothing here delays a client: judging runs after the answer was sent, on a bounded queue
(full: dropped and counted), each judgement under a deadline; a failing judge, upstream or
Redis only costs judgements (fails open). Extra upstream calls are explorations only (a
candidate not served goes upstream anyway), at most ``budget`` of the semantic lookups of
the last minute. A request with a bound whose model cannot be read is a miss, never a hit.

Pairs: a judged (request text, cached text) pair is remembered for the whole policy, by hash
(``{p}:ap:{group}:{s}``, 256 shards of at most :data:`PAIRS_PER_SHARD`, random eviction beyond):
the next time that request meets that cached text, in any tenant's scope or after the entry was
stored again, the candidate is of class ``p`` (judged right before) or ``x`` (judged wrong: never
served). Class ``p`` is certified like any other, so a judge's mistakes cannot make it unsafe.

The entry layer is vCache's per-prompt threshold in its simplest form: an entry judged wrong
for a request at similarity s serves nobody at s or below again (a handful of outcomes per
entry cannot certify 1 %, so entry evidence only ever tightens; the policy's cells carry the
guarantee). Its state is ``{p}:j:{s}:{key_hash}`` in the entry's slot, expiring with the entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcache import errorbound as eb
from llmcache.keys import short
from llmcache.keyspace import Keyspace
from llmcache.proxy.breaker import Breaker, CacheUnavailable
from llmcache.proxy.exact import Entry, ExactStore, InvalidEntry
from llmcache.proxy.semantic import judge as judges
from llmcache.proxy.semantic.budget import Budget, RateCap
from llmcache.proxy.semantic.cache import text_hash
from llmcache.proxy.settings import JudgeSettings

if TYPE_CHECKING:
    from llmcache.proxy.metrics import ProxyMetrics
    from llmcache.proxy.semantic.cache import SemanticMatch

__all__ = ["PAIRS_PER_SHARD", "ErrorBound", "Pending", "model_version"]

log = logging.getLogger(__name__)

#: Lifetime of a policy's model hash after its last write (s). 30 days: learning survives long
#: quiet spells and restarts; a policy nobody uses any more does not keep it forever.
MODEL_TTL_S = 30 * 86_400
#: A group not asked about for this long stops being flushed and refreshed (s).
_IDLE_GROUP_S = 600.0
#: Groups whose model is kept in memory at most (one per applied policy; a few suffice).
_MAX_GROUPS = 64
#: Judged pairs kept per shard of a policy (256 shards): 1024 ≈ 262k pairs, ~20 MiB of Redis at most.
PAIRS_PER_SHARD = 1024

# KEYS[1]: a pairs shard. ARGV: pair hash, wrong (1/0), cap, ttl_s. Counts "right,wrong"; a new pair
# beyond the cap evicts a random other one.
_RECORD_PAIR = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
local r, w = 0, 0
if v then
  local i = string.find(v, ',')
  r = tonumber(string.sub(v, 1, i - 1)) or 0
  w = tonumber(string.sub(v, i + 1)) or 0
end
if ARGV[2] == '1' then w = w + 1 else r = r + 1 end
redis.call('HSET', KEYS[1], ARGV[1], r .. ',' .. w)
if not v and redis.call('HLEN', KEYS[1]) > tonumber(ARGV[3]) then
  local two = redis.call('HRANDFIELD', KEYS[1], 2)
  local victim = two[1] ~= ARGV[1] and two[1] or two[2]
  redis.call('HDEL', KEYS[1], victim)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1]: the entry's judged hash. ARGV: similarity, wrong (1/0), ttl_s. A wrong judgement raises
# the entry's veto to the similarity it was judged at (never lowers it).
_RECORD_ENTRY = """
if ARGV[2] == '1' then
  local v = tonumber(redis.call('HGET', KEYS[1], 'veto') or '-1')
  if tonumber(ARGV[1]) > v then redis.call('HSET', KEYS[1], 'veto', ARGV[1]) end
  redis.call('HINCRBY', KEYS[1], 'wrong', 1)
else
  redis.call('HINCRBY', KEYS[1], 'right', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _pair_hash(query_text: str, stored_text_hash: str) -> str | None:
    """Names the pair (this request's text, the cached text) without either text: 24 hex digits."""
    if not stored_text_hash:
        return None
    h = hashlib.sha256(text_hash(query_text).encode() + b"\x00" + stored_text_hash.encode())
    return h.hexdigest()[:24]


def model_version() -> str:
    """Version of the learned model: the cell layout and the verifier's code and data.

    A new verifier accepts other candidates, so what was learned about the old one's cells does
    not carry over: a changed version starts from nothing (the old fields expire).
    """
    h = hashlib.sha256(eb.LAYOUT.encode())
    here = Path(__file__).parent
    for path in sorted([*here.glob("verify.py"), *here.glob("analysis.py"), *here.glob("evidence.py"),
                        *here.glob("lexicon.py"), *(here / "data").glob("*.json")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


@dataclass(slots=True)
class Pending:
    """A candidate that was not served and waits for the fresh answer to be judged against it."""

    group: str
    cls: str
    bin: int
    key_hash: str
    """The candidate's entry (whose cached answer is judged)."""
    similarity: float
    explored: bool
    """True: the candidate would have been served (an exploration, an extra upstream call)."""
    query_text: str
    """The request's compared text: sent to an LLM judge, never stored or logged."""
    pair_hash: str | None
    """Hash of (request text, cached text), or ``None`` when either is unknown."""
    route: str
    tenant: str
    ttl_s: int
    """The entry lifetime in effect: the candidate's judged record expires with the candidate's entry."""


@dataclass(slots=True)
class _Group:
    """One policy group's model as this process knows it, and the counts it has not flushed yet."""

    delta: float
    state: eb.ModelState = field(default_factory=eb.ModelState)
    fit: eb.Fit | None = None
    loaded: bool = False
    used_at: float = field(default_factory=time.monotonic)
    pending: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    digest: str = ""


@dataclass(slots=True)
class _Counters:
    num_admitted: int = 0
    num_served: int = 0
    num_explored: int = 0
    num_vetoed: int = 0
    num_budget_denied: int = 0
    num_judged: int = 0
    num_wrong: int = 0
    num_undecided: int = 0
    num_dropped: int = 0
    num_failed: int = 0
    num_rate_limited: int = 0


class ErrorBound:
    """Decides, judges and learns for every policy group with a bound (see the module docstring)."""

    def __init__(self, *, redis: Any, store: ExactStore, breaker: Breaker, keyspace: Keyspace,
                 settings: JudgeSettings, metrics: ProxyMetrics | None = None, version: str | None = None,
                 judge: judges.Judge | None = None, seed: int | None = None) -> None:
        self._redis = redis
        self._store = store
        self._breaker = breaker
        self._ks = keyspace
        self.settings = settings
        self._metrics = metrics
        self.version = version if version is not None else model_version()
        if judge is None:
            judge = judges.AnswerJudge() if settings.url is None else judges.LLMJudge(
                url=settings.url, model=settings.model, api_key=settings.api_key, votes=settings.votes,
                max_chars=settings.max_chars, timeout_s=settings.timeout_s)
        self.judge = judge
        self._calls_judge = settings.url is not None
        self.budget = Budget(settings.budget)
        self._judge_calls = RateCap(settings.max_calls_per_minute)
        self._rng = random.Random(seed)  # noqa: S311 - sampling explorations, not secrets
        self._groups: dict[str, _Group] = {}
        self._queue: asyncio.Queue[tuple[Pending, Entry]] = asyncio.Queue(maxsize=settings.queue_size)
        self._tasks: list[asyncio.Task[Any]] = []
        self._refreshing: set[str] = set()
        self._record_entry = redis.register_script(_RECORD_ENTRY)
        self._record_pair = redis.register_script(_RECORD_PAIR)
        self.counters = _Counters()

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the judging workers and the flush/refresh loop (on the running event loop)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"judge-{i}") for i in range(self.settings.num_workers)]
        self._tasks.append(loop.create_task(self._refresh_forever(), name="error-bound-refresh"))

    async def close(self) -> None:
        """Stop workers (pending judgements are dropped), flush counters once, close the judge."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush_all(timeout_s=1.0)
        with contextlib.suppress(Exception):
            await self.judge.close()

    # ----------------------------------------------------------------------------- deciding

    def _group(self, group: str, delta: float) -> _Group:
        g = self._groups.get(group)
        if g is None:
            if len(self._groups) >= _MAX_GROUPS:
                oldest = min(self._groups, key=lambda k: self._groups[k].used_at)
                del self._groups[oldest]
            g = self._groups[group] = _Group(delta=delta)
        g.used_at = time.monotonic()
        if g.delta != delta:  # the policy changed its bound: refit now, a looser old fit must not apply
            g.delta = delta
            g.fit = eb.fit(g.state, delta) if g.loaded else None
        if not g.loaded and group not in self._refreshing:
            self._spawn_refresh(group)
        return g

    def fit_for(self, group: str) -> eb.Fit | None:
        """The current fit of ``group`` (``None`` until its model was read once)."""
        g = self._groups.get(group)
        return None if g is None else g.fit

    async def admit(self, call: Any, match: SemanticMatch | None) -> bool:
        """Serve ``match`` to ``call``? Counts the lookup for the budget; sets ``call.judgement`` on a miss
        that should be judged. ``call.cfg.max_error_rate`` must be set."""
        self.budget.note_request()
        cfg = call.cfg
        delta = cfg.max_error_rate
        assert delta is not None
        g = self._group(cfg.group, delta)  # (a first lookup under a policy starts reading its model)
        if match is None:
            return False
        self.counters.num_admitted += 1
        parts = call.semantic_parts()
        pair_hash = _pair_hash(parts.text, match.stored_text_hash) if parts is not None else None
        pair, vetoed = await asyncio.gather(self._pair_record(cfg.group, pair_hash), self._vetoed(match))
        cls = eb.candidate_class(verified=match.reason != "unverified", scored=match.score is not None,
                                 crowded=match.num_refused_above > 0, pair=pair)
        bin_ = eb.similarity_bin(match.similarity)
        g.pending[eb.cell_field(self.version, cls, bin_, "n")] += 1
        fit = g.fit
        serve = fit is not None and fit.serves(cls, bin_)
        if serve and vetoed:
            serve = False
            self.counters.num_vetoed += 1
        explored = False
        if serve and self.settings.explore_rate > 0 and self._rng.random() < self.settings.explore_rate:
            if self.budget.try_take():
                serve, explored = False, True
                g.pending[eb.total_field(self.version, "explored")] += 1
                self.counters.num_explored += 1
                if self._metrics is not None:
                    self._metrics.bound_explored(cfg.group)
            else:
                self.counters.num_budget_denied += 1
        if serve:
            assert fit is not None
            g.pending[eb.total_field(self.version, "served")] += 1
            self.counters.num_served += 1
            if not fit.static_serves(bin_):
                g.pending[eb.total_field(self.version, "gained")] += 1
                if self._metrics is not None:
                    self._metrics.bound_gained(cfg.group)
            return True
        if parts is not None and call.redis_ok:
            call.judgement = Pending(
                group=cfg.group, cls=cls, bin=bin_, key_hash=match.key_hash, similarity=match.similarity,
                explored=explored, query_text=parts.text, pair_hash=pair_hash, route=call.route,
                tenant=call.tenant, ttl_s=cfg.ttl_s)
        return False

    async def _pair_record(self, group: str, pair_hash: str | None) -> str | None:
        """``right`` (judged right, never wrong), ``wrong`` (judged wrong at least once) or ``None``."""
        if pair_hash is None:
            return None
        key = self._ks.pairs_of(group, pair_hash)
        try:
            raw = await self._breaker.call(lambda: self._redis.hget(key, pair_hash))
        except CacheUnavailable:
            return None
        if raw is None:
            return None
        right, _, wrong = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(",")
        try:
            if int(wrong or 0) > 0:
                return "wrong"
            return "right" if int(right or 0) > 0 else None
        except ValueError:
            return None

    async def _vetoed(self, match: SemanticMatch) -> bool:
        """Was this entry judged wrong for a request at least this similar? Unreadable counts as vetoed."""
        key = self._ks.judged(match.key_hash)
        try:
            raw = await self._breaker.call(lambda: self._redis.hget(key, "veto"))
        except CacheUnavailable:
            return True
        if raw is None:
            return False
        try:
            return match.similarity <= float(raw) + 1e-9
        except ValueError:
            return False

    # ----------------------------------------------------------------------------- judging

    def submit(self, pending: Pending, fresh: Entry) -> None:
        """Queue a judgement of ``pending`` against the fresh answer; never blocks (full queue: dropped)."""
        try:
            self._queue.put_nowait((pending, fresh))
        except asyncio.QueueFull:
            self.counters.num_dropped += 1
            if self._metrics is not None:
                self._metrics.judge_failed("queue_full")

    async def _work(self) -> None:
        while True:
            pending, fresh = await self._queue.get()
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    await self._judge_one(pending, fresh)
            except Exception as exc:  # noqa: BLE001 - judging fails open: the client has its answer
                self.counters.num_failed += 1
                reason = "timeout" if isinstance(exc, TimeoutError) else (
                    "judge" if isinstance(exc, judges.JudgeUnavailable | OSError) else "error")
                if self._metrics is not None:
                    self._metrics.judge_failed(reason)
                log.info("judging candidate %s failed (%s: %s); no outcome recorded", short(pending.key_hash),
                         type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued judgement is done (tests, shutdown)."""
        await self._queue.join()

    async def _judge_one(self, p: Pending, fresh: Entry) -> None:
        # A judgement asks at most ``votes`` times: reserve them all, so the cap is never exceeded.
        if self._calls_judge and not self._judge_calls.try_take(self.settings.votes):
            self.counters.num_rate_limited += 1
            if self._metrics is not None:
                self._metrics.judge_failed("rate_limited")
            return
        blob = await self._breaker.call(lambda: self._store.get(p.key_hash, group=p.group), timeout_s=1.0)
        if blob is None:
            return  # the candidate expired meanwhile: nothing to judge against
        try:
            cached = Entry.from_json(blob, route=p.route)
        except InvalidEntry:
            return
        if cached.tenant != p.tenant:
            return
        fresh_text = judges.answer_text(p.route, fresh.answer())
        cached_text = judges.answer_text(p.route, cached.answer())
        if fresh_text is None or cached_text is None:
            self.counters.num_undecided += 1
            return
        right = await self.judge.judge(request=p.query_text, fresh=fresh_text, cached=cached_text)
        if right is None:
            self.counters.num_undecided += 1
            return
        self._record(p, wrong=not right)
        if p.pair_hash is not None:
            await self._breaker.call(lambda: self._record_pair(
                keys=[self._ks.pairs_of(p.group, p.pair_hash)],  # type: ignore[arg-type]
                args=[p.pair_hash, 0 if right else 1, PAIRS_PER_SHARD, MODEL_TTL_S]), timeout_s=1.0)
        remaining_s = int(cached.created_s + p.ttl_s - time.time())
        if remaining_s >= 1:
            await self._breaker.call(lambda: self._record_entry(
                keys=[self._ks.judged(p.key_hash)], args=[repr(p.similarity), 0 if right else 1, remaining_s]),
                timeout_s=1.0)

    def _record(self, p: Pending, *, wrong: bool) -> None:
        g = self._groups.get(p.group)
        if g is None:
            return  # the group was dropped meanwhile (policy gone): its outcome has no model to go to
        g.pending[eb.cell_field(self.version, p.cls, p.bin, "j")] += 1
        if wrong:
            g.pending[eb.cell_field(self.version, p.cls, p.bin, "w")] += 1
        self.counters.num_judged += 1
        self.counters.num_wrong += wrong
        if self._metrics is not None:
            self._metrics.bound_judged(p.group, wrong=wrong)

    # ----------------------------------------------------------------------------- sharing

    def _spawn_refresh(self, group: str) -> None:
        self._refreshing.add(group)
        task = asyncio.get_running_loop().create_task(self._refresh_one(group))
        task.add_done_callback(lambda _t: self._refreshing.discard(group))

    async def _refresh_one(self, group: str) -> None:
        try:
            await self.refresh(group)
        except CacheUnavailable:
            pass
        except Exception:
            log.exception("refreshing the error-bound model of %s failed", group)

    async def refresh(self, group: str, *, timeout_s: float = 1.0) -> None:
        """Flush this process's counts of ``group``, read the shared counters and refit."""
        g = self._groups.get(group)
        if g is None:
            return
        key = self._ks.bound(group)
        pending, g.pending = g.pending, defaultdict(int)
        try:
            raw = await self._breaker.call(lambda: self._flush_and_read(key, pending, g.delta), timeout_s=timeout_s)
        except BaseException:
            for name, n in pending.items():
                g.pending[name] += n
            raise
        state = eb.parse(raw, version=self.version)
        digest = repr(sorted((k, c.seen, c.judged, c.wrong) for k, c in state.cells.items()))
        totals_changed = (state.num_served, state.num_gained, state.num_explored) != (
            g.state.num_served, g.state.num_gained, g.state.num_explored)
        if digest != g.digest or not g.loaded or g.fit is None or g.fit.max_error_rate != g.delta:
            g.fit = await asyncio.to_thread(eb.fit, state, g.delta)
        elif totals_changed:
            g.fit = eb.fit(state, g.delta)
        g.state, g.digest, g.loaded = state, digest, True
        if self._metrics is not None and g.fit is not None:
            self._metrics.bound_fit(group, g.fit)

    async def _flush_and_read(self, key: str, pending: dict[str, int], delta: float) -> dict[Any, Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, n in pending.items():
                pipe.hincrby(key, name, n)
            pipe.hset(key, mapping={"current": self.version, eb.total_field(self.version, "delta"): repr(delta),
                                    eb.total_field(self.version, "t"): f"{time.time():.0f}"})
            pipe.expire(key, MODEL_TTL_S)
            pipe.hgetall(key)
            replies = await pipe.execute()
        return replies[-1]  # type: ignore[no-any-return]

    async def flush_all(self, *, timeout_s: float = 1.0) -> None:
        """Refresh every active group now (tests wait on it; shutdown flushes once)."""
        for group in list(self._groups):
            with contextlib.suppress(CacheUnavailable):
                await self.refresh(group, timeout_s=timeout_s)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            now = time.monotonic()
            for group, g in list(self._groups.items()):
                if (now - g.used_at > _IDLE_GROUP_S and not g.pending) or group in self._refreshing:
                    continue
                await self._refresh_one(group)

    # ----------------------------------------------------------------------------- reporting

    def stats(self) -> dict[str, Any]:
        """This process's counters and every group's fit (``/llmcache/v1/stats``)."""
        c = self.counters
        return {
            "version": self.version, "judge": "llm" if self._calls_judge else "answer",
            "queued": self._queue.qsize(), "queue_size": self.settings.queue_size,
            "budget": self.settings.budget, "explore_rate": self.settings.explore_rate,
            "process": {k.removeprefix("num_"): v for k, v in asdict(c).items()},
            "judge_calls": self.judge.num_calls,
            "policies": {group: (g.fit.to_dict() if g.fit is not None else {"state": "loading"})
                         for group, g in self._groups.items()},
        }
