"""The Query Engine vector index of one partition: its definition and its name on each master.

Shared by the proxy, which searches it (:mod:`llmcache.proxy.semantic.index_search`),
and the operator, which creates it for namespaces whose Redis user may not
(:mod:`llmcache.operator.partitions`). ``FT.CREATE`` takes any key prefix, so a
user allowed to run it could index another namespace's documents under a name of
its own: a namespace's user gets ``FT.SEARCH`` and ``FT.INFO`` on its own index
names only (Redis ACL treats an index name as a key), and the index is made for
it from what its sidecars ask in :attr:`~llmcache.keyspace.Keyspace.vector_index_spec`.

One index per partition over its documents (``{p}:n:{ns}:v:``)::

    FT.CREATE {p}:n:{ns}:vidx ON HASH PREFIX 1 {p}:n:{ns}:v:
        SCHEMA scope TAG  vec VECTOR HNSW 8 TYPE FLOAT32 DIM <dim> DISTANCE_METRIC COSINE M <m>

On Redis Cluster one such index per master (RediSearch without a coordinator
indexes only the keys of its own node), named with a hash tag that lands in the
master's highest slot (:func:`master_index_names`): the proxy and the operator
compute the same names from the same topology, with no ``FT._LIST`` (which
would list every namespace's indexes).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from redis.crc import key_slot

from llmcache import connection
from llmcache.keyspace import Keyspace

__all__ = ["DEFAULT_HNSW_M", "MAX_DIM", "IndexSpec", "create_index", "existing_dim", "index_names",
           "master_index_names", "read_spec", "tag_for_slot", "write_spec"]

#: HNSW graph degree unless a proxy asks otherwise (RediSearch's default too).
DEFAULT_HNSW_M = 16
#: Largest vector size the operator creates an index for: a spec beyond it is a typo or an attack.
MAX_DIM = 8192
MAX_HNSW_M = 512


class IndexSpec(tuple[int, int]):
    """``(dim, m)`` of a partition's index."""

    __slots__ = ()

    def __new__(cls, dim: int, m: int = DEFAULT_HNSW_M) -> IndexSpec:
        if not 1 <= dim <= MAX_DIM or not 2 <= m <= MAX_HNSW_M:
            raise ValueError(f"vector index spec dim={dim} m={m} is out of range (dim 1-{MAX_DIM}, m 2-{MAX_HNSW_M})")
        return super().__new__(cls, (dim, m))

    @property
    def dim(self) -> int:
        return self[0]

    @property
    def m(self) -> int:
        return self[1]


def create_args(keyspace: Keyspace, name: str, spec: IndexSpec) -> list[Any]:
    """The ``FT.CREATE`` command of the partition index ``name`` (over ``keyspace``'s documents only)."""
    return ["FT.CREATE", name, "ON", "HASH", "PREFIX", 1, keyspace.vector_prefix,
            "SCHEMA", "scope", "TAG", "vec", "VECTOR", "HNSW", 8,
            "TYPE", "FLOAT32", "DIM", spec.dim, "DISTANCE_METRIC", "COSINE", "M", spec.m]


async def create_index(client: Any, keyspace: Keyspace, name: str, spec: IndexSpec, *, target: Any = None) -> bool:
    """Create the index ``name`` (on cluster node ``target``); False when it exists already. Other
    errors (no permission) are raised."""
    kwargs = {} if target is None else {"target_nodes": target}
    try:
        await client.execute_command(*create_args(keyspace, name, spec), **kwargs)
    except Exception as exc:
        text = str(exc).lower()
        if "already exists" in text or "duplicate" in text:
            return False
        raise
    return True


async def existing_dim(client: Any, name: str, *, target: Any = None) -> int | None:
    """The vector size the index ``name`` was created for; ``None`` when it does not exist (or cannot be read)."""
    kwargs = {} if target is None else {"target_nodes": target}
    try:
        info = await client.execute_command("FT.INFO", name, **kwargs)
    except Exception:  # noqa: BLE001 - "no such index", or unreadable: the caller creates or reports
        return None
    attrs = _get(info, "attributes") if isinstance(info, Mapping) else _pairs(info).get("attributes")
    for attr in attrs or []:
        fields = attr if isinstance(attr, Mapping) else _pairs(attr)
        fields = {connection.as_text(k).lower(): v for k, v in fields.items()}
        if "dim" in fields:
            return int(connection.as_text(fields["dim"]))
    return None


async def write_spec(client: Any, keyspace: Keyspace, spec: IndexSpec) -> None:
    """Ask for the partition's index (what the operator creates for a namespace user)."""
    await client.hset(keyspace.vector_index_spec, mapping={"dim": spec.dim, "m": spec.m})


async def read_spec(client: Any, keyspace: Keyspace) -> IndexSpec | None:
    """The index the partition's sidecars asked for; ``None`` when none did. Raises ValueError when invalid."""
    raw = await client.hgetall(keyspace.vector_index_spec)
    if not raw:
        return None
    fields = {connection.as_text(k): connection.as_text(v) for k, v in raw.items()}
    try:
        return IndexSpec(int(fields["dim"]), int(fields.get("m", DEFAULT_HNSW_M)))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{keyspace.vector_index_spec} is not a vector index spec: {sorted(fields)}") from exc


@functools.lru_cache(maxsize=64)
def tag_for_slot(slot: int) -> str:
    """The shortest decimal hash tag whose CRC16 lands in ``slot`` (found in ~16k tries, cached)."""
    i = 0
    while key_slot(str(i).encode()) != slot:
        i += 1
    return str(i)


async def master_index_names(client: Any, keyspace: Keyspace) -> list[tuple[str, Any]]:
    """``(index name, target node)`` per master that owns slots, each named into its highest slot."""
    owners = await connection.slot_owners(client)
    out = []
    for node_name, node in await connection.primaries(client):
        ranges = owners.get(node_name, [])
        if ranges:  # a master without slots (being added or drained) holds no documents
            out.append((keyspace.vector_index_for_slot(tag_for_slot(max(hi for _, hi in ranges))), node))
    return out


async def index_names(client: Any, keyspace: Keyspace) -> list[str]:
    """The partition's index names: one on a single Redis, one per master on a cluster."""
    if not connection.is_cluster(client):
        return [keyspace.vector_index]
    return [name for name, _ in await master_index_names(client, keyspace)]


def _get(mapping: Mapping[Any, Any], key: str) -> Any:
    return mapping.get(key, mapping.get(key.encode()))


def _pairs(flat: Any) -> dict[str, Any]:
    items = list(flat or [])
    return {connection.as_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
