"""OpenTelemetry tracing: one span per proxied request, carrying the cache outcome.

Span ``llmcache.request`` with attributes ``http.request.method``, ``url.path``,
``http.response.status_code``, ``llmcache.status`` (hit | semantic-hit | miss
| bypass), ``llmcache.key`` (first 12 hex digits of the key hash, never the
prompt), ``llmcache.similarity`` on semantic hits, ``llmcache.coalesced``.

Nothing is exported (and no span is recorded) unless ``--otlp-endpoint`` is set, and the OTLP exporter is
an optional package (``opentelemetry-exporter-otlp-proto-http``): without it
the proxy warns once and keeps tracing in-process only.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracer, Tracer

__all__ = ["Telemetry"]

log = logging.getLogger(__name__)


class Telemetry:
    """A tracer provider of our own (not the global one, so embedding apps keep theirs)."""

    def __init__(self, *, otlp_endpoint: str | None = None, service_name: str = "llmcache-proxy") -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        # Until a span processor is attached, spans would go nowhere: a no-op tracer keeps the
        # hit path free of span bookkeeping (~0.1 ms per request with the SDK).
        self.tracer: Tracer = NoOpTracer()
        if otlp_endpoint:
            exporter = _otlp_exporter(otlp_endpoint)
            if exporter is not None:
                self.add_processor(BatchSpanProcessor(exporter))
                log.info("exporting traces to %s", otlp_endpoint)

    @property
    def recording(self) -> bool:
        """True once spans go somewhere (an exporter or another processor is attached)."""
        return not isinstance(self.tracer, NoOpTracer)

    def add_processor(self, processor: SpanProcessor) -> None:
        """Attach a span processor (the OTLP exporter; tests use an in-memory one); spans start recording."""
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("llmcache.proxy")

    def shutdown(self) -> None:
        self.provider.shutdown()


def _otlp_exporter(endpoint: str) -> Any | None:
    try:
        module = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        log.warning("--otlp-endpoint is set but the OTLP exporter is not installed: "
                    "`pip install opentelemetry-exporter-otlp-proto-http`; traces are not exported")
        return None
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return module.OTLPSpanExporter(endpoint=url)
