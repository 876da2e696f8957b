"""The CachePolicy operator (kopf) and the sidecar-injection webhook: ``llmcache operator``.

Modules (one concern each):

- :mod:`~llmcache.operator.settings` — settings dataclasses and the label/annotation names
- :mod:`~llmcache.operator.handlers` — kopf handlers: publish, status, eviction timer, delete
- :mod:`~llmcache.operator.publish`  — policies → Redis hash + event + ConfigMap copy
- :mod:`~llmcache.operator.eviction` — cross-pod ``maxEntries``/``maxMemory`` enforcement (no kopf needed)
- :mod:`~llmcache.operator.status`   — synced-pod counts, hit rate, conditions
- :mod:`~llmcache.operator.webhook`  — ``POST /mutate-pods`` JSONPatch injection server
- :mod:`~llmcache.operator.kube`     — the few direct Kubernetes API calls
- :mod:`~llmcache.operator.cli`      — ``configure(parser)`` / ``run(args)``
"""

from __future__ import annotations

__all__: list[str] = []
