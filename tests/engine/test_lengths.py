"""The lengths a run actually sent and received, as distributions in the summary: against the
loopback server, which knows each prompt it received and each token it sent, with length
distributions asked for, live and from the record alike."""

import numpy as np
import pytest

from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.loopback.wire import count_words
from soaktop.engine.metrics.summary import SessionSummary, summarise
from soaktop.engine.records.format import RecordReader
from soaktop.engine.session import Session
from soaktop.tui.text import length_lines, summary_document, summary_table

QUANTILES = (50, 90, 99)


def spread(values):
    v = np.asarray(values, dtype=np.float64)
    return [*np.percentile(v, QUANTILES), v.mean()]


def figures(d):
    return [d.p50, d.p90, d.p99, d.mean]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """300 requests with --input-tokens 50-150 --output-tokens 20:5, against a server whose
    tokenizer makes three tokens of each word: (live summary, record summary, truth)."""
    import asyncio

    record = tmp_path_factory.mktemp("lengths") / "r.jsonl.gz"

    async def go():
        live = SessionSummary()
        async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0,
                                           prompt_tokens_per_word=3)) as server:
            cfg = RunConfig(backend="openai", url=server.url, model="loopback", api="completions",
                            concurrency=8, max_requests=300, warmup_requests=0, seed=11,
                            input_tokens="50-150", output_tokens="20:5")
            session = Session(cfg, OpenAIBackend(server.url, model="loopback",
                                                 api="completions"),
                              record_path=record, listeners=(live.add,))
            await session.run()
            sent = [e for e in server.emissions() if e.status == 200]
        return live, sent

    live, sent = asyncio.run(go())
    replayed = summarise(RecordReader(record).events(raw_requests=True))
    words = [count_words(e.prompt) for e in sent]
    truth = {"asked": spread(words), "server": spread([3 * w for w in words]),
             "output": spread([sum(e.chunk_tokens) for e in sent])}
    assert len(sent) == 300
    return live.result(), replayed.result(), truth


def test_input_lengths_are_the_prompts_the_server_received(run):
    live, replayed, truth = run
    for result in (live, replayed):
        assert figures(result.input_lengths.asked) == pytest.approx(truth["asked"], rel=1e-12)
        assert figures(result.input_lengths.server) == pytest.approx(truth["server"],
                                                                     rel=1e-12)
    assert 45 < truth["asked"][0] < 160  # the uniform's middle, plus the 4 words of its own
    assert truth["asked"][2] - truth["asked"][0] > 30  # a spread, not one length


def test_output_lengths_are_the_tokens_the_server_sent(run):
    live, replayed, truth = run
    for result in (live, replayed):
        assert figures(result.output_lengths.received) == pytest.approx(truth["output"],
                                                                        rel=1e-12)
        assert figures(result.output_lengths.server) == pytest.approx(truth["output"],
                                                                      rel=1e-12)
    assert abs(truth["output"][3] - 20) < 4 * 5 / 300 ** 0.5  # the normal's mean


def test_lengths_in_json_and_text(run):
    live, _, truth = run
    document = summary_document(live)
    assert document["input_lengths"]["asked"]["p99"] == pytest.approx(truth["asked"][2])
    assert document["input_lengths"]["server"]["mean"] == pytest.approx(truth["server"][3])
    assert document["output_lengths"]["received"]["p90"] == pytest.approx(truth["output"][1])
    assert set(document["output_lengths"]) == {"received", "server"}
    assert document["phases"][-1]["input_lengths"]["asked"]["p50"] is not None
    (line,) = length_lines(live)
    a, s, o = truth["asked"], truth["server"], truth["output"]
    assert line == (
        f"lengths in tokens, p50/p90/p99 (mean): input {a[0]:,.0f}/{a[1]:,.0f}/{a[2]:,.0f} "
        f"({a[3]:,.1f}), server {s[0]:,.0f}/{s[1]:,.0f}/{s[2]:,.0f} ({s[3]:,.1f}); "
        f"output {o[0]:,.0f}/{o[1]:,.0f}/{o[2]:,.0f} ({o[3]:,.1f}), server "
        f"{o[0]:,.0f}/{o[1]:,.0f}/{o[2]:,.0f} ({o[3]:,.1f})")
    assert "lengths in tokens" in summary_table(live, width=400)


def test_no_server_count_no_server_lengths():
    summary = SessionSummary()
    assert length_lines(summary.result()) == []
    assert summary.result().input_lengths.server.p50 is None
