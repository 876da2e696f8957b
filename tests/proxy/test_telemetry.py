"""Tracing without the optional OTLP exporter package: the proxy warns and keeps working."""

from __future__ import annotations

import logging
import sys

import pytest

from llmcache.proxy.telemetry import Telemetry

EXPORTER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def test_missing_otlp_exporter_warns_and_traces_in_process(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, EXPORTER, None)  # make the import fail even where it is installed
    caplog.set_level(logging.WARNING)
    t = Telemetry(otlp_endpoint="http://127.0.0.1:4318")
    assert "opentelemetry-exporter-otlp-proto-http" in caplog.text
    with t.tracer.start_as_current_span("x") as span:
        assert not span.is_recording()  # nowhere to send spans: none are recorded
    t.shutdown()


def test_spans_record_once_a_processor_is_attached() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    t = Telemetry()
    assert not t.recording
    exporter = InMemorySpanExporter()
    t.add_processor(SimpleSpanProcessor(exporter))
    with t.tracer.start_as_current_span("x", attributes={"llmcache.status": "hit"}):
        pass
    assert t.recording and [s.attributes["llmcache.status"] for s in exporter.get_finished_spans()] == ["hit"]
    t.shutdown()
