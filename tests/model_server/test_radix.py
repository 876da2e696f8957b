"""RadixCache on synthetic KV tensors whose values encode (token, position): no model needed."""

from __future__ import annotations

import torch

from llmcache.model_server.radix import EvictResult, InsertResult, RadixCache, RadixKey, kv_bytes_per_token

LAYERS, HEADS, DIM = 2, 2, 4
PER_TOKEN = 2 * LAYERS * HEADS * DIM * 4  # K and V, float32


def make_kv(tokens: list[int]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """KV whose every element of position i equals 1000 * layer + tokens[i] (values negated)."""
    t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1).expand(1, HEADS, len(tokens), DIM)
    return tuple(((t + 1000 * layer).contiguous(), (-(t + 1000 * layer)).contiguous()) for layer in range(LAYERS))


def tokens_of(kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> list[int]:
    return [int(x) for x in kv[0][0][0, 0, :, 0].tolist()]


def test_bytes_per_token_matches_layout() -> None:
    assert kv_bytes_per_token(make_kv([1, 2, 3])) == PER_TOKEN


def test_match_is_capped_one_below_prompt_length() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("ns", [1, 2, 3, 4]), make_kv([1, 2, 3, 4]))
    m = cache.match_prefix(RadixKey("ns", [1, 2, 3, 4]))
    assert m.num_cached_tokens == 3  # one token left so logits exist
    assert m.kv is not None and tokens_of(m.kv) == [1, 2, 3]
    cache.release(m)
    longer = cache.match_prefix(RadixKey("ns", [1, 2, 3, 4, 5]), lock=False)
    assert longer.num_cached_tokens == 4


def test_returned_kv_holds_each_layer_for_the_matched_tokens() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("ns", [5, 6, 7, 8, 9]), make_kv([5, 6, 7, 8, 9]))
    cache.insert(RadixKey("ns", [5, 6, 1, 2]), make_kv([5, 6, 1, 2]))
    m = cache.match_prefix(RadixKey("ns", [5, 6, 1, 2, 3]), lock=False)
    assert m.num_cached_tokens == 4
    assert m.kv is not None
    for layer, (k, v) in enumerate(m.kv):
        assert k[0, 1, :, 2].tolist() == [1000 * layer + t for t in (5, 6, 1, 2)]
        assert torch.equal(v, -k)


def test_split_in_the_middle_of_an_edge() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("ns", list(range(10, 20))), make_kv(list(range(10, 20))))
    assert cache.num_nodes == 1
    m = cache.match_prefix(RadixKey("ns", [10, 11, 12, 13, 99, 98]), lock=False)
    # The match stops inside the edge: the node is split there (documented side effect).
    assert m.num_cached_tokens == 4
    assert cache.num_nodes == 2
    assert cache.total_bytes == 10 * PER_TOKEN  # splitting moves bytes, it does not add any
    cache.insert(RadixKey("ns", [10, 11, 12, 13, 99, 98]), make_kv([10, 11, 12, 13, 99, 98]))
    assert cache.cached_tokens("ns") == [(10, 11, 12, 13, 14, 15, 16, 17, 18, 19), (10, 11, 12, 13, 99, 98)]
    assert cache.total_bytes == 12 * PER_TOKEN
    full = cache.match_prefix(RadixKey("ns", list(range(10, 20)) + [0]), lock=False)
    assert full.kv is not None and tokens_of(full.kv) == list(range(10, 20))


def test_namespaces_never_share() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("model-a:float32", [1, 2, 3]), make_kv([1, 2, 3]))
    assert cache.match_prefix(RadixKey("model-a:float32:salt", [1, 2, 3, 4]), lock=False).num_cached_tokens == 0
    assert cache.match_prefix(RadixKey("model-b:float32", [1, 2, 3, 4]), lock=False).num_cached_tokens == 0
    assert cache.match_prefix(RadixKey("model-a:float32", [1, 2, 3, 4]), lock=False).num_cached_tokens == 3


def test_insert_stores_only_the_new_suffix() -> None:
    cache = RadixCache(10**6)
    assert cache.insert(RadixKey("ns", [1, 2, 3]), make_kv([1, 2, 3])) == InsertResult(
        num_matched_tokens=0, num_new_tokens=3, num_dropped_tokens=0)
    assert cache.insert(RadixKey("ns", [1, 2, 3]), make_kv([1, 2, 3])).num_new_tokens == 0
    stored = cache.insert(RadixKey("ns", [1, 2, 3, 4, 5]), make_kv([1, 2, 3, 4, 5]))
    assert (stored.num_matched_tokens, stored.num_new_tokens) == (3, 2)
    assert cache.total_bytes == 5 * PER_TOKEN


def test_hit_counters_equal_hand_computed_values() -> None:
    cache = RadixCache(10**6)
    prompts = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 9], [7, 8], [1, 2, 3, 4, 5, 6]]
    expected_hits = [0, 3, 2, 0, 4]
    for p, hit in zip(prompts, expected_hits):
        m = cache.match_prefix(RadixKey("ns", p))
        assert m.num_cached_tokens == hit
        cache.insert(RadixKey("ns", p), make_kv(p))
        cache.release(m)
    assert cache.num_queried_tokens == 4 + 4 + 3 + 2 + 6
    assert cache.num_hit_tokens == sum(expected_hits)


def test_budget_is_never_exceeded_and_eviction_is_lru() -> None:
    cache = RadixCache(12 * PER_TOKEN)
    a, b, c = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    for p in (a, b, c):
        cache.insert(RadixKey("ns", p), make_kv(p))
        assert cache.total_bytes <= cache.budget_bytes
    # Touch a: b is now the least recently used.
    cache.release(cache.match_prefix(RadixKey("ns", a + [0])))
    d = [4, 4, 4, 4]
    cache.insert(RadixKey("ns", d), make_kv(d))
    assert cache.total_bytes <= cache.budget_bytes
    assert cache.num_evictions == 1
    assert cache.cached_tokens("ns") == [tuple(a), tuple(c), tuple(d)]
    e = [5, 5, 5, 5, 5, 5, 5, 5]
    cache.insert(RadixKey("ns", e), make_kv(e))
    # Needs two leaves: c (oldest) then a.
    assert cache.cached_tokens("ns") == [tuple(d), tuple(e)]
    assert cache.num_evictions == 3
    assert cache.total_bytes == 12 * PER_TOKEN


def _ask(cache: RadixCache, prompt: list[int]) -> int:
    """One request: match, then store the whole prompt (what the server does); the tokens it found."""
    m = cache.match_prefix(RadixKey("ns", prompt))
    cache.insert(RadixKey("ns", prompt), make_kv(prompt))
    cache.release(m)
    return m.num_cached_tokens


def test_a_shared_prompt_outlives_newer_one_off_tails() -> None:
    """GDSF: the tails of requests (used once) are evicted before a system prompt every request of its
    tenant used, even when they are newer. Under LRU the prompt went first, as soon as its own tails had
    gone (its last use was older than the other tenant's tails)."""
    system = list(range(1, 17))  # a 16-token "system prompt"
    cache = RadixCache(30 * PER_TOKEN)
    for q in range(3):
        assert _ask(cache, system + [100 + q, 200 + q]) == (0 if q == 0 else 16)
    for i in range(5):  # another tenant's one-off requests, all newer than the prompt's last use
        assert _ask(cache, [300 + 3 * i, 301 + 3 * i, 302 + 3 * i]) == 0
    assert cache.total_bytes <= cache.budget_bytes
    assert _ask(cache, system + [150, 250]) == 16


def test_a_prefix_nobody_asks_for_any_more_still_leaves() -> None:
    """No starvation: a prompt used many times, then never again, is evicted once new prefixes keep
    coming, and each new prefix meanwhile survives until its second use."""
    hot = list(range(1, 9))
    cache = RadixCache(24 * PER_TOKEN)
    for q in range(20):
        _ask(cache, hot + [100 + q])
    for i in range(40):
        new = [1000 + 10 * i + j for j in range(8)]
        assert _ask(cache, new + [1]) == 0
        assert _ask(cache, new + [2]) == 8, f"new prefix {i} was evicted before its second use"
    assert _ask(cache, hot + [99]) == 0, "the once-hot prompt never left"


def test_in_use_nodes_survive_eviction() -> None:
    cache = RadixCache(8 * PER_TOKEN)
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    cache.insert(RadixKey("ns", a), make_kv(a))
    pinned = cache.match_prefix(RadixKey("ns", a + [9]))  # a is in use by a running request
    cache.insert(RadixKey("ns", b), make_kv(b))
    big = [7] * 6
    stored = cache.insert(RadixKey("ns", big), make_kv(big))
    # b (unpinned) went; a stayed; only what fits of `big` was stored (back-pressure as a value).
    assert tuple(a) in cache.cached_tokens("ns")
    assert tuple(b) not in [t[:4] for t in cache.cached_tokens("ns")]
    assert (stored.num_new_tokens, stored.num_dropped_tokens) == (4, 2)
    assert stored.evicted == EvictResult(num_evicted_nodes=1, num_freed_bytes=4 * PER_TOKEN)
    assert cache.total_bytes <= cache.budget_bytes
    cache.release(pinned)
    cache.insert(RadixKey("ns", [8] * 8), make_kv([8] * 8))
    assert cache.cached_tokens("ns") == [(8,) * 8]


def test_parent_becomes_evictable_after_its_children_go() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("ns", [1, 2, 3, 4]), make_kv([1, 2, 3, 4]))
    cache.insert(RadixKey("ns", [1, 2, 5, 6]), make_kv([1, 2, 5, 6]))  # splits: [1 2] -> {[3 4], [5 6]}
    assert cache.num_nodes == 3
    freed = cache.evict(cache.total_bytes)
    assert freed == EvictResult(num_evicted_nodes=3, num_freed_bytes=6 * PER_TOKEN)
    assert cache.num_nodes == 0 and cache.total_bytes == 0


def test_stored_tensors_are_never_mutated() -> None:
    cache = RadixCache(40 * PER_TOKEN)
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []

    def snapshot() -> None:
        for node in cache.iter_nodes():
            for k, v in node.kv:
                snapshots.append((k, k.clone()))
                snapshots.append((v, v.clone()))

    g = torch.Generator().manual_seed(0)
    for i in range(200):
        n = int(torch.randint(2, 12, (1,), generator=g))
        p = [int(t) for t in torch.randint(0, 4, (n,), generator=g)]
        m = cache.match_prefix(RadixKey("ns", p))
        if m.kv is not None:
            for k, _v in m.kv:
                k.add_(1.0)  # the caller owns returned tensors: writing them must not reach the tree
        cache.insert(RadixKey("ns", p), make_kv(p))
        cache.release(m)
        assert cache.total_bytes <= cache.budget_bytes
        if i % 20 == 0:
            snapshot()
    assert snapshots
    assert all(torch.equal(ref, snap) for ref, snap in snapshots)
    # The tree still serves exact values.
    for node in cache.iter_nodes():
        assert tokens_of(node.kv) == list(node.key)


def test_block_hashes_follow_inserts_splits_and_evictions() -> None:
    from llmcache import prefix_hash

    cache = RadixCache(40 * PER_TOKEN, block_tokens=4)
    a = list(range(100, 110))  # blocks [0:4], [4:8]; 2 tokens past the last full block
    first = cache.insert(RadixKey("ns", a), make_kv(a))
    want = prefix_hash.block_hashes("ns", a, block_tokens=4)
    assert first.stored_blocks == tuple(want) and len(want) == 2
    # A branch at position 6 splits the first edge inside block 1; it completes blocks 1' and 2'.
    b = a[:6] + [7, 7, 7, 7, 7, 7]
    second = cache.insert(RadixKey("ns", b), make_kv(b))
    want_b = prefix_hash.block_hashes("ns", b, block_tokens=4)
    assert want_b[0] == want[0] and want_b[1] != want[1]  # same first block, different second
    assert second.stored_blocks == tuple(want_b[1:])
    held = {h for node in cache.iter_nodes() for _end, h in node.blocks}
    assert held == set(want) | set(want_b)  # each block hash held once, by the node its end falls in
    # Salted namespaces hash apart.
    assert cache.insert(RadixKey("ns:salt", a), make_kv(a)).stored_blocks == tuple(
        prefix_hash.block_hashes("ns:salt", a, block_tokens=4))
    assert not set(prefix_hash.block_hashes("ns:salt", a, block_tokens=4)) & held
    gone = cache.evict(cache.total_bytes)
    assert set(gone.removed_blocks) == held | set(prefix_hash.block_hashes("ns:salt", a, block_tokens=4))
    assert len(gone.removed_blocks) == len(set(gone.removed_blocks))


def test_cached_length_agrees_with_match_prefix_and_changes_nothing() -> None:
    cache = RadixCache(10**6)
    cache.insert(RadixKey("ns", [5, 6, 7, 8, 9]), make_kv([5, 6, 7, 8, 9]))
    cache.insert(RadixKey("ns", [5, 6, 1, 2]), make_kv([5, 6, 1, 2]))
    probes = [[5, 6, 1, 2, 3], [5, 6, 7, 8, 9], [5, 6, 7, 4], [5, 9], [4, 5], [5], [5, 6, 7, 8, 9, 10, 11]]
    for probe in probes:
        before = (cache.num_nodes, cache.num_queried_tokens, cache.num_hit_tokens, cache.cached_tokens("ns"))
        n = cache.cached_length(RadixKey("ns", probe))
        assert (cache.num_nodes, cache.num_queried_tokens, cache.num_hit_tokens, cache.cached_tokens("ns")) == before
        assert n == cache.match_prefix(RadixKey("ns", probe), lock=False).num_cached_tokens, probe
    assert cache.cached_length(RadixKey("other", [5, 6, 7, 8, 9])) == 0  # namespaces never share a node


def test_a_long_leaf_loses_only_its_tail_when_little_must_go() -> None:
    from llmcache import prefix_hash
    from llmcache.model_server.radix import MIN_EVICT_TOKENS

    cache = RadixCache(400 * PER_TOKEN, block_tokens=16)
    prompt = list(range(1000, 1300))  # a 300-token system prompt, used by two requests
    cache.insert(RadixKey("ns", prompt), make_kv(prompt))
    cache.release(cache.match_prefix(RadixKey("ns", prompt + [1])))
    other = list(range(5000, 5100))
    result = cache.insert(RadixKey("ns", other), make_kv(other))  # needs 0 of 100 more tokens: fits
    assert result.evicted.num_freed_bytes == 0
    newer = list(range(7000, 7030))  # 30 tokens over the budget
    result = cache.insert(RadixKey("ns", newer), make_kv(newer))
    # The once-used 100-token prompt is the lowest priority: it loses a block-aligned tail of at
    # least MIN_EVICT_TOKENS, not all of it; the twice-used prompt is untouched.
    kept = cache.cached_length(RadixKey("ns", other + [0]))
    assert 0 < kept <= 100 - MIN_EVICT_TOKENS and kept % 16 == 0
    assert cache.cached_length(RadixKey("ns", prompt + [0])) == 300
    assert cache.total_bytes <= cache.budget_bytes
    # Only the blocks that ended in the cut tail were reported gone; the head's are still held.
    other_blocks = prefix_hash.block_hashes("ns", other, block_tokens=16)
    assert set(result.evicted.removed_blocks) == set(other_blocks[kept // 16:])
    held = {h for node in cache.iter_nodes() for _end, h in node.blocks}
    assert set(other_blocks[:kept // 16]) <= held
    # What is left still holds the exact values of its tokens.
    m = cache.match_prefix(RadixKey("ns", other + [0]), lock=False)
    assert m.kv is not None and tokens_of(m.kv) == other[:kept]
