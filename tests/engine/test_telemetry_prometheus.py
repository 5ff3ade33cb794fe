"""The remote telemetry source: Prometheus text from dcgm-exporter, vLLM and SGLang.

The fixture files in data/ are in the shape the real exporters serve: dcgm-exporter's Go
template (two H100s on one host), and vLLM's / SGLang's prometheus_client output (SGLang's in
multiprocess mode, as it runs). Parsing is tested on them directly; the HTTP behaviour (kinds
found, outages reported once, credentials kept out of events, the 1 Hz cap) against a small
threaded HTTP server on 127.0.0.1 that the tests can switch, break and restart.
"""

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from soaktop.engine.events import GpuSample, ServerSample, TelemetryStatus
from soaktop.engine.telemetry.prometheus import PrometheusSource, parse_metrics
from soaktop.engine.telemetry.sampler import Sampler

DATA = Path(__file__).parent / "data"
DCGM = (DATA / "dcgm_exporter.txt").read_text()
VLLM = (DATA / "vllm_metrics.txt").read_text()
SGLANG = (DATA / "sglang_metrics.txt").read_text()
URL = "http://10.0.0.7:8000/metrics"
MIB = 1024 * 1024


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


# --- parse_metrics: DCGM --------------------------------------------------------------------


def test_dcgm_fixture_gives_two_gpus_with_converted_units():
    events = parse_metrics(DCGM, 42, "http://gpu-node-07:9400/metrics", "fallback-host")
    assert [type(e) for e in events] == [GpuSample, GpuSample]
    g0, g1 = events
    assert (g0.gpu_index, g1.gpu_index) == (0, 1)
    for g in events:
        assert (g.t_ns, g.source, g.host) == (42, "dcgm", "gpu-node-07")  # the Hostname label
    assert g0.temperature_c == 67.0 and g0.memory_temperature_c == 78.0
    assert g0.sm_clock_mhz == 1755.0 and g0.memory_clock_mhz == 2619.0
    assert g0.power_w == pytest.approx(698.512) and g0.power_limit_w == 700.0
    assert g0.energy_mj == 4829158305512 and isinstance(g0.energy_mj, int)
    assert g0.gpu_utilization_percent == 98.0 and g0.memory_utilization_percent == 61.0
    assert g0.memory_used_bytes == 71234 * MIB
    assert g0.memory_total_bytes == (71234 + 9871 + 454) * MIB == 81559 * MIB  # an H100 80GB
    assert g0.clock_event_reasons == ("sw_power_cap", "sw_thermal")  # 36 = 0x4 | 0x20
    # DCGM's violation counters are already nanoseconds (see the module's comment)
    assert g0.clock_event_counters_ns == {
        "sw_power_cap": 183492117000, "sw_thermal": 2210554000, "sync_boost": 0}
    assert g1.temperature_c == 34.0 and g1.power_w == pytest.approx(71.824)
    assert g1.energy_mj == 3710442871234
    assert g1.memory_used_bytes == 0 and g1.memory_total_bytes == 81559 * MIB
    assert g1.clock_event_reasons == ("gpu_idle",)
    assert g1.gpu_utilization_percent == 0.0


def test_dcgm_labels_blanks_and_the_older_reason_field():
    text = "\n".join([
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",device="nvidia0",hostname="node-b"} 55',
        'DCGM_FI_DEV_GPU_TEMP{gpu="3",UUID="GPU-c",device="nvidia3"} 41',
        "# TYPE DCGM_FI_DEV_CLOCK_THROTTLE_REASONS gauge",
        'DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{gpu="0",hostname="node-b"} 8',
        "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",hostname="node-b"} NaN',
        "# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge",  # DCGM_INT64_NOT_SUPPORTED, as old exporters print
        'DCGM_FI_DEV_MEMORY_TEMP{gpu="0",hostname="node-b"} 9223372036854775794',
        "# TYPE DCGM_FI_DEV_FB_USED gauge",
        'DCGM_FI_DEV_FB_USED{gpu="0",hostname="node-b"} 1024',
        "# TYPE DCGM_FI_DEV_XID_ERRORS gauge",  # a GPU with only unknown fields yields nothing
        'DCGM_FI_DEV_XID_ERRORS{gpu="5",UUID="GPU-e"} 0',
        "",
    ])
    events = parse_metrics(text, 1, URL, "10.0.0.7")
    assert [(e.host, e.gpu_index) for e in events] == [("10.0.0.7", 3), ("node-b", 0)]
    b = events[1]
    assert b.temperature_c == 55.0 and b.clock_event_reasons == ("hw_slowdown",)
    assert b.power_w is None and b.memory_temperature_c is None
    assert b.memory_used_bytes == 1024 * MIB and b.memory_total_bytes is None  # no FB_FREE
    assert b.clock_event_counters_ns is None and b.energy_mj is None


# --- parse_metrics: serving engines ---------------------------------------------------------


def test_vllm_fixture():
    events = parse_metrics(VLLM, 7, URL, "10.0.0.7")
    assert events == [ServerSample(
        7, URL, "vllm", "meta-llama/Llama-3.1-8B-Instruct", requests_running=24.0,
        requests_waiting=3.0, kv_cache_usage=0.6418, prompt_tokens_total=18734521.0,
        generation_tokens_total=4213377.0, preemptions_total=12.0)]


def _kv(text):
    (server,) = parse_metrics(text, 0, URL, "h")
    return server.kv_cache_usage


def test_vllm_old_and_new_kv_cache_names():
    lines = VLLM.splitlines(keepends=True)
    new_only = "".join(x for x in lines if "gpu_cache_usage_perc" not in x)
    old_only = "".join(x for x in lines if "vllm:kv_cache_usage_perc" not in x)
    assert "vllm:kv_cache_usage_perc" in new_only and "gpu_cache_usage_perc" in old_only
    assert _kv(new_only) == 0.6418
    old_line = 'vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"}'
    assert old_only.count(f"{old_line} 0.6418\n") == 1
    assert _kv(old_only.replace(f"{old_line} 0.6418", f"{old_line} 0.25")) == 0.25  # pre-0.9
    assert _kv(VLLM.replace(f"{old_line} 0.6418", f"{old_line} 0.99")) == 0.6418  # new name wins


def test_vllm_data_parallel_engines_are_combined():
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="q"} 5.0',
        'vllm:num_requests_running{engine="1",model_name="q"} 3.0',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="q"} 0.45',
        'vllm:kv_cache_usage_perc{engine="1",model_name="q"} 0.25',
        "# TYPE vllm:prompt_tokens_total counter",
        'vllm:prompt_tokens_total{engine="0",model_name="q"} 100.0',
        'vllm:prompt_tokens_created{engine="0",model_name="q"} 1.7e9',
        'vllm:prompt_tokens_total{engine="1",model_name="q"} 120.0',
        "",
    ])
    (s,) = parse_metrics(text, 0, URL, "h")
    assert (s.model, s.requests_running, s.prompt_tokens_total) == ("q", 8.0, 220.0)
    assert s.kv_cache_usage == pytest.approx(0.35)  # the mean of equal-sized caches' fractions
    assert s.requests_waiting is None and s.preemptions_total is None


def test_sglang_fixture():
    events = parse_metrics(SGLANG, 9, URL, "10.0.0.7")
    assert events == [ServerSample(
        9, URL, "sglang", "Qwen/Qwen2.5-7B-Instruct", requests_running=17.0, requests_waiting=5.0,
        kv_cache_usage=0.83, prompt_tokens_total=9120334.0, generation_tokens_total=2281190.0)]


def test_sglang_tp_ranks_count_once_dp_ranks_add_up_untyped_counters_read():
    text = "\n".join([
        'sglang:num_running_reqs{engine_type="unified",model_name="m",tp_rank="0"} 4.0',
        'sglang:num_running_reqs{engine_type="unified",model_name="m",tp_rank="1"} 4.0',
        'sglang:num_queue_reqs{dp_rank="0",model_name="m",tp_rank="0"} 2.0',
        'sglang:num_queue_reqs{dp_rank="1",model_name="m",tp_rank="0"} 3.0',
        'sglang:prompt_tokens_total{model_name="m"} 4882260.0',  # no TYPE line: untyped
        'sglang:generation_tokens_total{model_name="m"} 139795',
        "",
    ])
    (s,) = parse_metrics(text, 0, URL, "h")
    assert (s.requests_running, s.requests_waiting) == (4.0, 5.0)
    assert (s.prompt_tokens_total, s.generation_tokens_total) == (4882260.0, 139795.0)


def test_parse_metrics_raises_value_error_on_text_that_is_not_prometheus():
    with pytest.raises(ValueError):
        parse_metrics("<html><body>Bad gateway</body></html>\n", 0, URL, "h")
    assert parse_metrics("# HELP x y\nprocess_open_fds 6.0\n", 0, URL, "h") == []


# --- over HTTP --------------------------------------------------------------------------------


class Exporter:
    """A switchable /metrics endpoint: body, status, delay and basic auth can change mid-test."""

    def __init__(self):
        self.body, self.status, self.delay_s, self.auth, self.hits = DCGM, 200, 0.0, None, 0
        self.port = 0
        self.start()

    def start(self):
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                exporter.hits += 1
                time.sleep(exporter.delay_s)
                ok = exporter.auth is None or self.headers.get("Authorization") == exporter.auth
                body = exporter.body.encode() if ok else b"unauthorized"
                self.send_response(exporter.status if ok else 401)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a scraper that timed out hung up: expected here, not worth a traceback

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/metrics"


@pytest.fixture
def exporter():
    e = Exporter()
    yield e
    e.stop()


def clock():
    return itertools.count(1_000, 1_000).__next__


@pytest.mark.parametrize("body, kinds, counts", [
    (DCGM + VLLM, ["dcgm", "vllm"], (2, 1)),
    (SGLANG, ["sglang"], (0, 1)),
])
def test_open_names_the_kinds_found_and_sample_returns_events(exporter, body, kinds, counts):
    exporter.body = body
    source = PrometheusSource(exporter.url)
    assert source.name == f"prom:{exporter.url}" and source.max_hz == 1.0
    first = source.open(clock())
    status = first[0]
    assert isinstance(status, TelemetryStatus) and status.available
    assert status.info == {"kinds": kinds} and status.source == source.name
    assert (len(of(first, GpuSample)), len(of(first, ServerSample))) == counts
    assert {e.t_ns for e in first} == {1_000}  # the clock read when the answer arrived
    again = source.sample(clock())
    assert of(again, TelemetryStatus) == []
    assert (len(of(again, GpuSample)), len(of(again, ServerSample))) == counts
    source.close()


def _break(exporter, how):
    if how == "stopped":
        exporter.stop()
    elif how == "http 500":
        exporter.status = 500
    elif how == "garbage":
        exporter.body = "<html><body>502 Bad Gateway</body></html>\n"
    elif how == "nothing known":
        exporter.body = "# TYPE process_open_fds gauge\nprocess_open_fds 6.0\n"
    elif how == "timeout":
        exporter.delay_s = 0.25


def _mend(exporter, how):
    if how == "stopped":
        exporter.start()  # the same port again
    exporter.status, exporter.body, exporter.delay_s = 200, DCGM, 0.0


@pytest.mark.parametrize("how, says", [
    ("stopped", "ConnectError"),
    ("http 500", "HTTP 500 Internal Server Error"),
    ("garbage", "does not parse"),
    ("nothing known", "no metric soaktop knows"),
    ("timeout", "no answer within 0.1 s"),
])
def test_an_outage_is_reported_once_and_so_is_the_recovery(exporter, how, says):
    source = PrometheusSource(exporter.url, timeout_s=0.1)
    tick = clock()
    assert source.open(tick)[0].available
    _break(exporter, how)
    failing = [e for _ in range(3) for e in source.sample(tick)]
    (down,) = failing  # one status across three failed scrapes, and no samples
    assert isinstance(down, TelemetryStatus) and not down.available
    assert down.reason.startswith(f"{exporter.url}: ") and says in down.reason
    assert "\n" not in down.reason and down.host == "127.0.0.1"
    _mend(exporter, how)
    back = source.sample(tick)
    assert isinstance(back[0], TelemetryStatus) and back[0].available
    assert back[0].info == {"kinds": ["dcgm"]} and len(of(back, GpuSample)) == 2
    steady = source.sample(tick)
    assert of(steady, TelemetryStatus) == [] and len(of(steady, GpuSample)) == 2
    source.close()


def test_nothing_listening_at_open_is_one_unavailable_status(exporter):
    exporter.stop()
    source = PrometheusSource(exporter.url, timeout_s=0.5)
    (status,) = source.open(clock())
    assert not status.available and "ConnectError" in status.reason
    assert source.sample(clock()) == []
    exporter.start()  # the fixture stops it at the end


def test_credentials_in_the_url_never_reach_an_event(exporter):
    exporter.auth = "Basic YWxpY2U6czNjcjN0LXB3"  # alice:s3cr3t-pw
    url = f"http://alice:s3cr3t-pw@127.0.0.1:{exporter.port}/metrics?api_key=k3y-in-query"
    source = PrometheusSource(url)
    assert source.name == f"prom:{exporter.url}"
    events = source.open(clock())  # httpx turns user:password into basic auth
    assert events[0].available and len(of(events, GpuSample)) == 2
    exporter.status = 500
    events += source.sample(clock())
    exporter.status = 200
    events += source.sample(clock())
    exporter.stop()
    events += source.sample(clock())
    exporter.start()
    events += source.sample(clock())
    wrong = PrometheusSource(url.replace("s3cr3t-pw", "wr0ng-pw"))
    events += wrong.open(clock())
    assert [e.available for e in of(events, TelemetryStatus)] == [True, False, True, False, True,
                                                                  False]
    assert "HTTP 401" in events[-1].reason
    text = repr(events)
    for secret in ("alice", "s3cr3t-pw", "wr0ng-pw", "k3y-in-query", "api_key"):
        assert secret not in text
    source.close()
    wrong.close()


def test_an_error_message_that_repeats_the_url_is_scrubbed():
    url = "http://bob:pa55w0rd@exporter.internal:9400/metrics?token=t0k3n"

    def refuse(request):
        raise httpx.ConnectError(f"could not reach {url}", request=request)

    source = PrometheusSource(url, transport=httpx.MockTransport(refuse))
    (status,) = source.open(clock())
    assert not status.available and status.host == "exporter.internal"
    assert status.reason.startswith("http://exporter.internal:9400/metrics: ConnectError")
    for secret in ("bob", "pa55w0rd", "t0k3n"):
        assert secret not in repr(status)
    source.close()


def test_a_sampler_at_10_hz_polls_this_source_at_1_hz(exporter):
    t0 = time.perf_counter_ns()
    batches = []
    sampler = Sampler(PrometheusSource(exporter.url), hz=10,
                      clock=lambda: time.perf_counter_ns() - t0, deliver=batches.append)
    assert sampler.interval_s == 1.0
    sampler.start()
    time.sleep(1.5)
    sampler.stop()
    # open at 0 s, one tick at 1 s: at 10 Hz there would have been about 15 scrapes
    assert exporter.hits == 2 and len(batches) == 2
    assert batches[0][0].available and of(batches[1], TelemetryStatus) == []
    assert len(of(batches[1], GpuSample)) == 2
    assert 0.9e9 < batches[1][0].t_ns - batches[0][1].t_ns < 1.3e9


def test_dcgm_thresholds_and_max_clocks_where_the_exporter_adds_them():
    labels = '{gpu="0",UUID="GPU-1",Hostname="n1"}'
    text = "".join(f"# TYPE {name} gauge\n{name}{labels} {value}\n" for name, value in [
        ("DCGM_FI_DEV_GPU_TEMP", 80), ("DCGM_FI_DEV_SLOWDOWN_TEMP", 87),
        ("DCGM_FI_DEV_SHUTDOWN_TEMP", 92), ("DCGM_FI_DEV_SM_CLOCK", 1500),
        ("DCGM_FI_DEV_MAX_SM_CLOCK", 1980), ("DCGM_FI_DEV_MAX_MEM_CLOCK", 2619)])
    (g,) = parse_metrics(text, 1, "http://n1:9400/metrics", "n1")
    assert (g.slowdown_temperature_c, g.shutdown_temperature_c) == (87, 92)
    assert (g.sm_clock_max_mhz, g.memory_clock_max_mhz) == (1980, 2619)


def test_the_prefilter_keeps_exactly_what_parsing_everything_gives():
    """Filtering lines by metric name before parsing (for speed) must not change a value."""
    from prometheus_client.parser import text_string_to_metric_families

    from soaktop.engine.telemetry import prometheus

    for text in (DCGM, VLLM, SGLANG):
        fast = parse_metrics(text, 7, URL, "h")
        original = prometheus._wanted_lines
        prometheus._wanted_lines = lambda t: t  # parse all of it
        try:
            assert parse_metrics(text, 7, URL, "h") == fast
        finally:
            prometheus._wanted_lines = original
        kept = prometheus._wanted_lines(text)
        assert len(kept) < len(text)
        assert len(list(text_string_to_metric_families(kept))) > 0
