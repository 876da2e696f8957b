"""Mutation check for the proxy hardening (issue 14): break one guarded line, expect its test to fail.

Each mutation replaces one exact snippet in one file, runs the tests that guard it, and restores the
file (always, also on Ctrl-C). A mutation that no test catches is a guarantee no test would defend.

    .venv/bin/python tests/adversarial/mutation_check_proxy.py [--only NAME ...] [--list]

Prints one line per mutation (caught / SURVIVED) and exits 1 if any survived. Never run it while
other test runs use the same tree: the files are mutated in place while a mutation runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADV = "tests/adversarial/"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    before: str
    after: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("incomplete stream stored", "proxy/misses.py",
             "            if not recorder.complete:\n", "            if False:\n",
             (ADV + "test_streams.py::test_badly_ended_streams_are_relayed_but_never_stored",)),
    Mutation("unknown delta fields folded away", "proxy/streaming.py",
             "            if unknown:\n", "            if False:\n",
             (ADV + "test_streams.py::test_deltas_the_recorder_cannot_fold_are_not_stored",)),
    Mutation("reasoning_content not replayed", "proxy/streaming.py",
             "        if reasoning:\n", "        if False:\n",
             (ADV + "test_streams.py::test_reasoning_content_is_recorded_and_replayed",)),
    Mutation("semantic scope ignores the tenant", "llmcache/keys.py",
             "    material = _key_material(route, scoped_body, tenant, namespace, partition, query)",
             "    material = _key_material(route, scoped_body, '', namespace, partition, query)",
             ("tests/proxy/test_handlers_semantic.py::test_threshold_header_only_tightens_and_scope_is_exact",)),
    Mutation("requests without a credential cached", "proxy/handlers.py",
             "    if not credential and not cfg.cache_anonymous:", "    if False:",
             (ADV + "test_tenancy.py::test_requests_without_a_credential_are_not_cached_by_default",)),
    Mutation("key without the pod namespace", "llmcache/keys.py",
             '        "partition": partition,', '        "partition": "",',
             (ADV + "test_tenancy.py::test_the_same_tenant_in_two_namespaces_shares_nothing",
              ADV + "test_tenancy.py::test_anonymous_per_namespace_never_crosses_namespaces",
              # (the Redis key prefix and the entry's partition also keep namespaces apart: only the key's
              # own test sees this layer go)
              "tests/llmcache/test_keys.py::test_tenant_namespace_and_route_partition")),
    Mutation("query string not in the key", "llmcache/keys.py",
             '        "query": query,', '        "query": "",',
             (ADV + "test_tenancy.py::test_the_query_string_is_part_of_the_key",)),
    Mutation("no cache_salt upstream", "proxy/call.py",
             '    return route != "/v1/embeddings" and state.settings.upstream.enable_cache_salt', "    return False",
             (ADV + "test_tenancy.py::test_prefix_cache_probe_by_another_tenant_sees_no_cached_tokens",)),
    Mutation("stored content not type-checked", "proxy/exact.py",
             "    for name in _STRING_FIELDS:", "    for name in ():",
             (ADV + "test_tampered_entries.py::test_tampered_entry_is_never_served[content-list-of-60-stream]",)),
    Mutation("another tenant's entry served", "proxy/call.py",
             "        if entry.tenant != call.tenant:", "        if False:",
             (ADV + "test_tampered_entries.py::test_tampered_entry_is_never_served[other-tenant-json]",)),
    Mutation("stats without the admin token", "proxy/admin.py",
             '    refused = _admin_refusal(request, state, what="stats")', "    refused = None",
             (ADV + "test_stats_auth.py::test_stats_need_the_admin_token",)),
    Mutation("stats reads under the breaker", "proxy/admin.py",
             "            out[\"namespaces\"] = await stats.read_stats(client, keyspace=state.keyspace)",
             "            out[\"namespaces\"] = await state.breaker.call(\n"
             "                lambda: stats.read_stats(client, keyspace=state.keyspace), timeout_s=0.5)",
             (ADV + "test_stats_auth.py::test_slow_stats_reads_do_not_open_the_breaker",)),
    Mutation("body budget not enforced", "proxy/handlers.py",
             "    if length and not reservation.grow_to(length):", "    if length and not reservation.grow_to(0):",
             (ADV + "test_limits.py::test_bodies_in_flight_are_capped_and_shed_with_429",)),
    Mutation("body read without a deadline", "proxy/limits.py",
             "        async with asyncio.timeout(timeout_s):", "        async with asyncio.timeout(None):",
             (ADV + "test_limits.py::test_slowloris_body_gets_408",)),
    Mutation("pass-through body streamed without a deadline", "proxy/limits.py",
             "                async with asyncio.timeout(self._idle_s):",
             "                async with asyncio.timeout(None):",
             (ADV + "test_limits.py::test_stalled_pass_through_body_gets_408_and_a_slow_one_still_passes",)),
    Mutation("pass-through deadline on the whole body", "proxy/limits.py",
             "                async with asyncio.timeout(self._idle_s):",
             "                async with asyncio.timeout(max(0.0, self._idle_s - (asyncio.get_running_loop().time()"
             " - self.__dict__.setdefault('t0', asyncio.get_running_loop().time())))):",
             (ADV + "test_limits.py::test_stalled_pass_through_body_gets_408_and_a_slow_one_still_passes",)),
    Mutation("nested JSON ends as a 500", "proxy/handlers.py",
             "    except RecursionError:\n        state.metrics.count(route, \"error\")\n"
             "        return _too_deep(), \"error\"\n    if not isinstance(body, dict):",
             "    except ZeroDivisionError:\n        state.metrics.count(route, \"error\")\n"
             "        return _too_deep(), \"error\"\n    if not isinstance(body, dict):",
             (ADV + "test_limits.py::test_deeply_nested_json_is_a_clear_400",)),
    Mutation("upstream pool wait unbounded", "proxy/pool.py",
             "            async with asyncio.timeout(self.connect_timeout_s):",
             "            async with asyncio.timeout(None):",
             (ADV + "test_limits.py::test_busy_upstream_pool_is_a_503_with_retry_after_not_a_hang",)),
    Mutation("flight buffers without a cap", "proxy/singleflight.py",
             "        if self.num_bytes > self.max_bytes:", "        if False:",
             (ADV + "test_limits.py::test_a_streamed_answer_longer_than_the_entry_limit_is_not_buffered",)),
    Mutation("embedder embeds texts nobody waits for", "proxy/semantic/embedder.py",
             "        live = [p for p in self._pending if not p[2].done()]  # callers that gave up (deadline) are shed",
             "        live = list(self._pending)",
             (ADV + "test_limits.py::test_embedder_queue_is_bounded_and_sheds_expired_work",)),
    Mutation("semantic cache never retried after a failed start", "proxy/app.py",
             '        starter.task = asyncio.get_running_loop().create_task(starter.run(), name="semantic-start")',
             "        pass",
             (ADV + "test_semantic_recovery.py::test_semantic_cache_starts_when_redis_comes_up_after_the_proxy",)),
    Mutation("vanished Query Engine index not recreated", "proxy/semantic/index_search.py",
             "        if missing and await self._recreate(missing):", "        if False:",
             (ADV + "test_semantic_recovery.py::test_query_engine_index_is_recreated_after_a_redis_restart",)),
    Mutation("client index never resyncs after a Redis restart", "proxy/semantic/index_client.py",
             "                    if run_id is not None and now_id != run_id:", "                    if False:",
             (ADV + "test_semantic_recovery.py::test_client_index_follows_other_pods_after_a_redis_restart",)),
    Mutation("near cache filled by a lookup that raced an invalidation", "proxy/near.py",
             "        if generation != self.generation or not self.armed", "        if not self.armed",
             ("tests/proxy/test_near.py::test_a_lookup_that_raced_an_invalidation_does_not_fill",)),
    Mutation("near cache served while tracking is down", "proxy/near.py",
             "        if not self.armed or time.monotonic() - item[1] > self.max_age_s:",
             "        if time.monotonic() - item[1] > self.max_age_s:",
             ("tests/proxy/test_near.py::test_a_new_request_connection_drops_what_the_old_one_tracked",)),
    Mutation("near cache keeps what another client rewrote", "proxy/near.py",
             "                self.forget(key_hash)\n", "                pass\n",
             ("tests/proxy/test_near.py::test_another_clients_write_and_delete_reach_the_next_request",)),
    Mutation("key filter misses another pod's store", "proxy/near.py",
             "                self._note_key(key_hash)\n", "                pass\n",
             ("tests/proxy/test_near.py::test_entries_other_pods_wrote_before_and_after_it_started_are_hits",)),
    Mutation("key filter misses this process's own store", "proxy/near.py",
             "        self.generation += 1\n        self._note_key(key_hash)\n", "        self.generation += 1\n",
             ("tests/proxy/test_near.py::test_a_miss_the_key_filter_never_saw_makes_no_lookup",)),
    Mutation("key filter kept while tracking is down", "proxy/near.py",
             "        self.filter = self._building = None\n", "        self._building = None\n",
             ("tests/proxy/test_near.py::test_losing_tracking_drops_the_filter_until_it_is_scanned_again",)),
    Mutation("key filter scanned anew on every store past its largest size", "proxy/near.py",
             "                        building.scanned = building.count\n", "                        pass\n",
             ("tests/proxy/test_near.py::test_a_partition_larger_than_the_largest_filter_is_not_scanned_over_and_over",)),
    Mutation("a store beside a near cache writes the entry in its script", "proxy/exact.py",
             "            if self.near is not None:  # the entry by a plain SET", "            if False:",
             ("tests/proxy/test_resp.py::test_a_store_beside_a_near_cache_sets_the_entry_itself_then_records_it",)),
    Mutation("own stores come back as messages", "proxy/near.py",
             '"BCAST", "PREFIX", prefix, "NOLOOP")', '"BCAST", "PREFIX", prefix)',
             ("tests/proxy/test_near.py::test_its_own_stores_cost_it_no_invalidation_message",)),
    Mutation("recorder forgets a carriage return", "proxy/streaming.py",
             "            self._cr = True\n", "            pass\n",
             ("tests/proxy/test_streaming.py::test_every_line_ending_and_cut_records_the_same_answer",)),
    Mutation("big integers parsed as floats", "llmcache/keys.py",
             "    if _DIGIT_RUN not in raw.translate(_DIGITS_AS_ZERO):", "    if True:",
             ("tests/proxy/test_streaming.py::test_numbers_are_recorded_as_the_upstream_wrote_them_and_bad_nesting_is_not_storable",)),
]


def run(m: Mutation, *, timeout_s: float) -> tuple[bool, float, str]:
    """Apply ``m``, run its tests, restore. True when the tests failed (the mutation was caught)."""
    path = REPO / m.path
    original = path.read_text()
    if original.count(m.before) != 1:
        raise SystemExit(f"{m.name}: the snippet to mutate occurs {original.count(m.before)} times in {m.path}; "
                         "update this script to the code")
    t0 = time.monotonic()
    try:
        path.write_text(original.replace(m.before, m.after))
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "--timeout", "120", *m.tests], cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
            caught, tail = proc.returncode != 0, (proc.stdout.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            caught, tail = True, f"tests did not finish within {timeout_s:.0f} s (a hang counts as caught)"
    finally:
        path.write_text(original)
    return caught, time.monotonic() - t0, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names (substrings) of the mutations to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout-seconds", type=float, default=400.0, help="per mutation")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    survived = []
    for m in chosen:
        caught, took_s, tail = run(m, timeout_s=args.timeout_seconds)
        print(f"{'caught  ' if caught else 'SURVIVED'}  {m.name:<52} {took_s:6.1f} s  {tail}", flush=True)
        if not caught:
            survived.append(m.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
