"""Publishing policies to the sidecars: Redis first, then a ConfigMap copy.

The contract with the proxy (see :mod:`llmcache.policy`)::

    HSET    {p}:policies:{ns}  name → PolicyDocument JSON      (authoritative)
    PUBLISH {p}:policies:events:{ns} {"namespace", "name", "generation"}   (then, after the HSET)
    ConfigMap {configmap_name} in {ns}, key ``policies.json``:
            {"policies": [<PolicyDocument JSON object>, …]}      (start-up fallback)

On Redis Cluster a classic ``PUBLISH`` is broadcast over the cluster bus to every
node, so sidecars subscribed on any node receive it (the receiver count returned
is that of the node that took the command). One channel per namespace: a sidecar's
Redis user may subscribe to its own namespace's only (:mod:`llmcache.operator.partitions`).

The ConfigMap mirrors the Redis hash of its namespace exactly (the same
documents, sorted by name), so a reader can feed each one back through
:meth:`PolicyDocument.from_json` (``llmcache.proxy.policy_watch.load_policy_file``
does). It is rebuilt from Redis after every change rather than edited in
place, so concurrent handlers cannot lose each other's policies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping

import redis.asyncio as aioredis

from llmcache.errors import PolicyError
from llmcache.keyspace import Keyspace
from llmcache.policy import PolicyDocument

__all__ = [
    "CONFIGMAP_KEY",
    "namespace_documents",
    "publish_policy",
    "render_configmap",
    "unpublish_policy",
]

log = logging.getLogger(__name__)

#: Key of the ConfigMap data entry holding every policy of the namespace.
CONFIGMAP_KEY = "policies.json"


def _event(namespace: str, name: str, generation: int) -> str:
    return json.dumps({"namespace": namespace, "name": name, "generation": generation}, sort_keys=True)


async def publish_policy(r: aioredis.Redis, ks: Keyspace, doc: PolicyDocument) -> int:
    """Store ``doc`` in its namespace hash and announce it; returns the number of subscribers reached.

    Idempotent: publishing the same document again rewrites the same value (sidecars
    re-read and find nothing changed).
    """
    # Two commands, not MULTI: a cluster runs a transaction only on one slot, and PUBLISH has
    # none. Written first, announced second: a sidecar woken by the message reads the new hash.
    await r.hset(ks.policies(doc.namespace), doc.name, doc.to_json())
    receivers = await r.publish(ks.policy_channel(doc.namespace),
                                _event(doc.namespace, doc.name, doc.generation))
    log.info("published policy %s generation %s hash %s to %s sidecar connection(s)",
             doc.id, doc.generation, doc.config_hash, receivers)
    return int(receivers)


async def unpublish_policy(r: aioredis.Redis, ks: Keyspace, namespace: str, name: str, *, generation: int) -> None:
    """Remove a policy from its namespace hash, drop its acks and announce the removal."""
    await r.hdel(ks.policies(namespace), name)
    await r.delete(ks.acks(namespace, name))
    await r.publish(ks.policy_channel(namespace), _event(namespace, name, generation))
    log.info("unpublished policy %s/%s", namespace, name)


async def namespace_documents(r: aioredis.Redis, ks: Keyspace, namespace: str) -> list[PolicyDocument]:
    """Every valid document of ``namespace`` in Redis, sorted by name; invalid ones are logged and skipped."""
    raw: Mapping[bytes | str, bytes | str] = await r.hgetall(ks.policies(namespace))
    docs = []
    for name, blob in raw.items():
        try:
            docs.append(PolicyDocument.from_json(blob))
        except PolicyError as exc:
            log.warning("skipping invalid policy document %s/%r in Redis: %s", namespace, name, exc)
    return sorted(docs, key=lambda d: d.name)


def render_configmap(docs: Iterable[PolicyDocument]) -> dict[str, str]:
    """ConfigMap ``data`` for a namespace's documents: ``{"policies.json": '{"policies": [document, …]}'}``."""
    body = {"policies": [json.loads(d.to_json()) for d in sorted(docs, key=lambda d: d.name)]}
    return {CONFIGMAP_KEY: json.dumps(body, sort_keys=True, indent=1)}
