"""--prometheus-port: the live metrics, scraped over HTTP as Prometheus would, agree with the
run's own summary."""

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import ClientSample, RequestDone
from soaktop.engine.metrics.exporter import PrometheusExporter
from soaktop.engine.metrics.summary import SessionSummary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())
                                        if k != "le")
            if "le" not in sample.labels:
                values[key] = sample.value
    return values


async def test_the_scraped_metrics_agree_with_the_summary(make_session):
    exporter, port = PrometheusExporter(), free_port()
    exporter.serve(port, host="127.0.0.1")
    try:
        session, events = make_session(FakeBackend(ttft_s=0.01, itl_s=0.002, fail_every=5),
                                  concurrency=3, output_tokens=12, duration_s=1.6,
                                  warmup_requests=0)
        summary = SessionSummary()
        session.add_listener(summary.add)
        session.add_listener(exporter.add)
        await session.run()
        got = scrape(port)
    finally:
        exporter.close()
    result = summary.result()
    assert got["soaktop_requests_total{outcome=ok}"] == result.requests_ok
    assert got["soaktop_requests_total{outcome=failed}"] == result.requests_failed > 0
    assert got["soaktop_errors_total{error_class=fake_error}"] == result.requests_failed
    assert got["soaktop_ttft_seconds_count"] == result.requests_ok
    mean_ttft_ms = got["soaktop_ttft_seconds_sum"] / got["soaktop_ttft_seconds_count"] * 1e3
    assert abs(mean_ttft_ms - result.ttft_ms.mean) < 0.01
    assert got["soaktop_itl_seconds_count"] == result.requests_ok * 11  # 11 gaps a request
    assert got["soaktop_concurrency"] == 3 and got["soaktop_requests_in_flight"] == 3
    last = events.of(ClientSample)[-1]  # the gauge is the client's last second, exactly
    assert got["soaktop_output_tokens_per_second"] == pytest.approx(
        last.tokens / (last.interval_ns / 1e9))
    # by hand: a slot runs 4 requests of 10 + 11 x 2 ms and a failing one of 10 ms: 48
    # tokens in 138 ms, so 3 slots make about 1,040 tokens/s
    assert got["soaktop_output_tokens_per_second"] == pytest.approx(1040, rel=0.2)
    assert got["soaktop_output_tokens_total"] == sum(d.output_tokens
                                                     for d in events.of(RequestDone))
    assert got["soaktop_requests_total{outcome=cancelled}"] == result.requests_cancelled


def test_a_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            PrometheusExporter().serve(port, host="127.0.0.1")
        except ConfigError as exc:
            assert "cannot listen on 127.0.0.1" in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError("no error for a port in use")
