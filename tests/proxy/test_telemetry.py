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
        assert span.is_recording()
    t.shutdown()


def test_no_endpoint_exports_nothing() -> None:
    t = Telemetry()
    assert t.provider._active_span_processor._span_processors == ()  # noqa: SLF001
    t.shutdown()
