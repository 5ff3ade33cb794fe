"""README's "Session records" section documents record schema v1 completely, and stays so.

Every recorded event type has a row in the section's event table naming each of its fields
(as the record spells them: ``arrivals_us`` is written delta-encoded as ``arrivals_dus``);
``t_ns``, which every event has, is covered once by the sentence above the table. The header's
``config`` and ``environment`` tables list exactly the keys a header holds, and the ``backend``
paragraph names each key the backends describe themselves with. A field added to an event,
the config, the environment or a backend without a word in README fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from soaktop.engine.backends.ollama import OllamaBackend
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import TYPE_TAGS, RequestDone, TokensArrived
from soaktop.engine.records import environment
from soaktop.engine.records.format import encode

README = Path(__file__).resolve().parent.parent / "README.md"

#: Event fields the record writes under another name (see soaktop.engine.records.format.encode).
RECORD_NAMES = {"arrivals_us": "arrivals_dus"}


def _section() -> str:
    """The text between the "## Session records" heading and the next "## " heading."""
    match = re.search(r"^## Session records[^\n]*\n(.*?)(?=^## )", README.read_text(),
                      re.MULTILINE | re.DOTALL)
    assert match, "README has no '## Session records' section followed by another section"
    return match.group(1)


SECTION = _section()


def _table_after(intro: str) -> dict[str, str]:
    """The first Markdown table after the text ``intro``: first cell (backticks removed) ->
    the whole row."""
    start = SECTION.find(intro)
    assert start >= 0, f"the Session records section has no {intro!r}"
    rows: dict[str, str] = {}
    lines = SECTION[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    for line in lines[first + 2:]:  # past the header row and the --- row
        if not line.startswith("|"):
            break
        key = line.split("|")[1].strip().strip("`")
        assert key not in rows, f"two rows for {key!r}"
        rows[key] = line
    assert rows, f"the table after {intro!r} is empty"
    return rows


def _paragraph(intro: str) -> str:
    start = SECTION.find(intro)
    assert start >= 0, f"the Session records section has no {intro!r}"
    return SECTION[start:].split("\n\n", 1)[0]


EVENTS = _table_after("| type | fields |")
RECORDED = sorted(TYPE_TAGS.items(), key=lambda item: item[1])


def test_the_event_table_has_one_row_per_recorded_type_and_no_other():
    assert TokensArrived not in TYPE_TAGS  # live-only: never written, so not in the table
    assert set(EVENTS) == set(TYPE_TAGS.values())


@pytest.mark.parametrize("cls,tag", RECORDED, ids=[tag for _, tag in RECORDED])
def test_each_field_of_each_recorded_event_is_in_its_row(cls, tag):
    names = [RECORD_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls)]
    assert names[0] == "t_ns"  # every event's first field; the prose covers it once
    missing = [n for n in names[1:] if f"`{n}`" not in EVENTS[tag]]
    assert missing == [], f"README's `{tag}` row does not name {missing}"


def test_t_ns_is_explained_in_the_prose_above_the_table():
    prose = SECTION[: SECTION.index("| type | fields |")]
    assert "`t_ns`" in prose and "nanoseconds since the session started" in prose


def test_the_renamed_fields_are_what_the_record_writes():
    done = RequestDone(t_ns=5, worker_id=0, request_id=1, phase_id=0, backend="fake",
                       model="m", sent_ns=1, prompt_tokens=3, arrivals_us=(10, 25),
                       end_us=30, finish_reason="length")
    written = encode(done)
    for field, name in RECORD_NAMES.items():
        assert name in written and field not in written
    assert written["arrivals_dus"] == [10, 15]  # delta-encoded, as the row says


def test_the_config_table_lists_exactly_the_keys_of_the_header_config():
    documented = set(_table_after("`config` is"))
    assert documented == {f.name for f in dataclasses.fields(RunConfig)}
    assert documented == set(RunConfig().to_dict())


def test_the_environment_table_lists_exactly_the_keys_collect_returns():
    assert set(_table_after("`environment` is")) == set(environment.collect())


def test_the_backend_paragraph_names_every_key_of_each_backend_description():
    from soaktop.engine.backends.local import LocalBackend  # torch: imported only here

    text = _paragraph("`backend` is")
    described = {
        "local": LocalBackend(model="tiny", device="cpu").describe(),
        "openai": OpenAIBackend(url="http://127.0.0.1:9").describe(),
        "ollama": OllamaBackend(url="http://127.0.0.1:9").describe(),
    }
    for kind, facts in described.items():
        missing = [k for k in facts if f"`{k}`" not in text]
        assert missing == [], f"README's backend paragraph does not name {kind}'s {missing}"
    for item in ("header", "version", "model_entry", "model_details"):  # backend.server
        assert f"`{item}`" in text


def test_what_each_number_means_names_every_key_the_summary_json_holds():
    """Every key of ``--json`` (the run, a phase, a telemetry status, the soak verdict, an SLO
    report) is named in README's "What each number means"; a new one without a word fails."""
    from soaktop.engine.metrics.results import (
        Direction,
        DriftMeasure,
        GpuDrift,
        PhaseSummary,
        RunSummary,
        SloReport,
        SoakVerdict,
        SourceStatus,
        Verdict,
    )
    from soaktop.tui.text import summary_document

    match = re.search(r"^## What each number means\n(.*?)(?=^## )", README.read_text(),
                      re.MULTILINE | re.DOTALL)
    assert match, "README has no '## What each number means' section"
    text = match.group(1)
    measure = DriftMeasure(1.0, 2.0, 1.0, 0.5, 1.5, 0.001, Direction.WORSE, "blocks", 10, 10)
    gpu = GpuDrift("0", "GPU", measure, measure, {}, True, False)
    run = RunSummary(
        telemetry=(SourceStatus("nvml", False, gpu_index=0, host="h", reason="r",
                                unavailable_fields={"power_w": "n/a"}),),
        phases=(PhaseSummary(phase_id=0, concurrency=1),), ramp=(),
        slo=SloReport(slo="ttft_p95<=2s"),
        soak=SoakVerdict(Verdict.STABLE, 600.0, 0.0, True, 300.0, 0.0, 300.0,
                         {"tokens_per_s": measure}, {"0": gpu}, "0", ()))
    document = summary_document(run)
    soak = document["soak"]
    keys = {*document, *document["phases"][0], *document["telemetry"][0], *soak,
            *soak["measures"]["tokens_per_s"], *soak["gpus"]["0"],
            *document["slo"], *SloReport("x", error="e").to_dict()}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == [], f"README's 'What each number means' does not name {missing}"
