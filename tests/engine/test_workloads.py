"""Real workloads: length distributions, prompt files and a local tokenizer; against the
loopback server, what it received is what was asked for."""

import json

import numpy as np
import pytest

from soaktop.engine.backends.http import request_uuid
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import SessionStart
from soaktop.engine.load.prompts import UNIQUE_PREFIX_TOKENS
from soaktop.engine.load.rerun import rerun_config
from soaktop.engine.load.workloads import (
    LengthDraws,
    Workload,
    normalise_lengths,
    parse_lengths,
    read_prompt_file,
)
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.session import Session
from soaktop.tui.run_flags import run_command

# -- lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize("given, normal", [
    ("128", 128), (128, 128), ("512:64", "512:64"), (" 512.0 : 64 ", "512:64"),
    ("100-900", "100-900"), ("128:3, 1024:1", "128:3,1024:1"), ("7-7", 7), ("50:0", 50),
])
def test_lengths_are_normalised_and_a_fixed_one_stays_a_number(given, normal):
    assert normalise_lengths(given) == normal
    assert RunConfig(input_tokens=given).input_tokens == normal


@pytest.mark.parametrize("bad", ["0", "abc", "10-5", "0-5", "0.5:1", "128:0,64:1", "12:3:4",
                                 "", "-5"])
def test_unreadable_lengths_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as err:
        RunConfig(output_tokens=bad)
    assert "\n" not in str(err.value)


def test_draws_are_seeded_and_do_not_depend_on_the_order_asked():
    lengths = parse_lengths("100-900")
    a, b = LengthDraws(lengths, 1, 2), LengthDraws(lengths, 1, 2)
    forward = [a(i) for i in range(5000)]
    assert [b(i) for i in reversed(range(5000))][::-1] == forward
    assert [LengthDraws(lengths, 2, 2)(i) for i in range(5000)] != forward


@pytest.mark.parametrize("spec, mean, sd", [
    ("512:64", 512, 64), ("100-900", 500, 800 / 12 ** 0.5),
    ("128:3,1024:1", (3 * 128 + 1024) / 4, None),
])
def test_draws_have_the_asked_mean_and_spread(spec, mean, sd):
    draws = np.array([LengthDraws(parse_lengths(spec), 0, 3)(i) for i in range(20000)])
    spread = np.std(draws)
    assert abs(draws.mean() - mean) < 4 * spread / len(draws) ** 0.5
    if sd is not None:
        assert abs(spread - sd) / sd < 0.03
    if spec == "100-900":
        assert draws.min() == 100 and draws.max() == 900
    if spec == "128:3,1024:1":
        assert set(draws) == {128, 1024}
        assert abs(np.mean(draws == 128) - 0.75) < 0.015


def test_a_normal_is_clipped_at_one():
    draws = [LengthDraws(parse_lengths("3:10"), 0, 2)(i) for i in range(2000)]
    assert min(draws) == 1


def test_without_new_flags_the_workload_is_the_prompt_set_it_always_was():
    config = RunConfig(backend="fake", model="m")
    assert run_command(config).count("--unique-prefix") == 1
    w = Workload(config, salt="s")
    assert type(w.source).__name__ == "PromptSet"
    assert w.max_tokens(5) == 128
    assert "output_tokens" not in w.describe() and "prompt_file" not in w.describe()


def test_run_command_carries_the_new_fields():
    config = RunConfig(backend="openai", url="http://h:1", model="m", input_tokens="100-200",
                       output_tokens="64:2,8:1", prompts=None, unique_prefix=False)
    argv = run_command(config)
    assert argv[argv.index("--input-tokens") + 1] == "100-200"
    assert argv[argv.index("--output-tokens") + 1] == "64:2,8:1"
    assert "--no-unique-prefix" in argv


# -- prompt files --------------------------------------------------------------------------


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_three_formats_are_read(tmp_path):
    jsonl = write(tmp_path, "p.jsonl", "\n".join([
        json.dumps({"prompt": "tell me a story", "output_tokens": 7}), "",
        json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "why"}]}),
    ]))
    prompts, info = read_prompt_file(jsonl)
    assert [p.text for p in prompts] == ["tell me a story", "be brief\nwhy"]
    assert prompts[0].output_tokens == 7 and prompts[1].messages[1]["content"] == "why"
    assert info["format"] == "jsonl" and info["name"] == "p.jsonl" and len(info["sha256"]) == 64
    share = write(tmp_path, "s.json", json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "hi there"},
                                      {"from": "gpt", "value": "hello"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "nothing asked"}]},
    ]))
    prompts, info = read_prompt_file(share)
    assert [p.messages for p in prompts] == [({"role": "user", "content": "hi there"},)]
    text = write(tmp_path, "p.txt", "one\n\n  \ntwo words\n")
    assert [p.text for p in read_prompt_file(text)[0]] == ["one", "two words"]


@pytest.mark.parametrize("name, text, said", [
    ("a.jsonl", '{"prompt": "ok"}\n{"prompt": "ok"}\n{not json\n', "a.jsonl line 3"),
    ("b.jsonl", '{"prompt": "ok"}\n{"text": "x"}\n', "b.jsonl line 2"),
    ("c.jsonl", '{"prompt": "ok", "output_tokens": 0}\n', "c.jsonl line 1"),
    ("d.txt", "\n  \n", "holds no prompts"),
    ("e.json", '[\n{"conversations": [{"from": "human", "value": "x"}]},\n{"oops"}\n]',
     "e.json line 3"),
])
def test_a_bad_file_is_one_line_naming_where(tmp_path, name, text, said):
    with pytest.raises(ConfigError) as err:
        read_prompt_file(write(tmp_path, name, text))
    assert said in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Workload(RunConfig(prompts=str(tmp_path / "none.jsonl")))


def test_file_order_is_seeded_cycled_and_each_prompt_unique(tmp_path):
    path = write(tmp_path, "p.txt", "\n".join(f"prompt {i}" for i in range(10)))
    a = Workload(RunConfig(prompts=path, seed=1), salt="x")
    order = [a.file.index(i) for i in range(30)]
    assert sorted(order[:10]) == list(range(10)) == sorted(order[10:20])
    assert order[:10] != order[10:20]  # a new permutation each time through
    assert order == [Workload(RunConfig(prompts=path, seed=1)).file.index(i) for i in range(30)]
    assert order != [Workload(RunConfig(prompts=path, seed=2)).file.index(i) for i in range(30)]
    texts = [a.prompt(i).text for i in range(30)]
    assert len(set(texts)) == 30  # the unique prefix: a repeat is no cache hit
    plain = Workload(RunConfig(prompts=path, seed=1, unique_prefix=False))
    assert plain.prompt(0).text == f"prompt {order[0]}"


def test_rerun_needs_the_same_file(tmp_path):
    path = write(tmp_path, "p.txt", "a\nb\n")
    config = RunConfig(backend="openai", url="http://h:1", model="m", prompts=path,
                       max_requests=4)
    header = SessionStart(0, 1, "", config.to_dict(), {}, {}, Workload(config).describe())
    assert rerun_config([header]).prompts == path
    (tmp_path / "p.txt").write_text("a\nc\n")
    with pytest.raises(ConfigError, match="has changed"):
        rerun_config([header])
    (tmp_path / "p.txt").unlink()
    with pytest.raises(ConfigError, match="not there"):
        rerun_config([header])


# -- against the loopback server -----------------------------------------------------------


async def run_against_loopback(tmp_path, requests=40, **config):
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=4)) as server:
        backend = OpenAIBackend(server.url, model="loopback", api=config.get("api"))
        cfg = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=4,
                        max_requests=requests, warmup_requests=0, **config)
        session = Session(cfg, backend)
        await session.run()
        by_id = {e.request_id: e for e in server.emissions()}
    sent = [by_id[request_uuid(backend.run_id, i)] for i in range(requests)]
    return session, sent


async def test_the_server_receives_the_files_prompts_in_the_recorded_order(tmp_path):
    lines = [json.dumps({"prompt": f"question number {i}", "output_tokens": 3 + i})
             for i in range(5)]
    lines.append(json.dumps({"messages": [{"role": "system", "content": "sys"},
                                          {"role": "user", "content": "chat turn"}]}))
    path = write(tmp_path, "p.jsonl", "\n".join(lines))
    session, sent = await run_against_loopback(tmp_path, requests=18, prompts=path, seed=5,
                                               output_tokens=9)
    entries = session.prompts.file.entries
    workload = session.prompts.describe()
    assert workload["prompt_file"]["name"] == "p.jsonl"
    for i, emission in enumerate(sent):
        entry = entries[session.prompts.file.index(i)]
        messages = emission.prompt
        assert messages[-1]["content"].endswith(entry.messages[-1]["content"]
                                                if entry.messages else entry.text)
        head = messages[0]["content"].split()[:UNIQUE_PREFIX_TOKENS]
        assert len(head) == UNIQUE_PREFIX_TOKENS
        assert len(messages) == (2 if entry.messages else 1)
        assert emission.max_tokens == (entry.output_tokens or 9)
    assert len({e.prompt[0]["content"] for e in sent}) == len(sent)


async def test_the_server_receives_the_asked_length_distributions(tmp_path):
    session, sent = await run_against_loopback(tmp_path, requests=400, seed=3,
                                               input_tokens="200:40",
                                               output_tokens="4:3,16:1", api="completions")
    inputs = np.array([len(e.prompt.split()) for e in sent])
    outputs = np.array([e.max_tokens for e in sent])
    assert abs(inputs.mean() - 200) < 4 * 40 / 400 ** 0.5
    assert 0.85 < inputs.std() / 40 < 1.15
    assert set(outputs) == {4, 16} and abs(np.mean(outputs == 4) - 0.75) < 0.08
    assert session.prompts.describe()["output_tokens"] == "4:3,16:1"
    assert session.prompts.describe()["input_tokens"] == "200:40"


# -- a local tokenizer ---------------------------------------------------------------------


def test_synthetic_prompts_encode_to_exactly_the_asked_length(tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path + "/tokenizer.json")
    for spec in ("37", "50-300"):
        w = Workload(RunConfig(input_tokens=spec, tokenizer=tokenizer_path, seed=4), salt="z")
        for i in range(40):
            prompt = w.prompt(i)
            n = w.source.draws(i)
            assert len(tok.encode(prompt.text, add_special_tokens=False).ids) == n
            assert len(prompt.token_ids) == n
    assert w.describe()["tokenizer"]["name"] == "tokenizer.json"


def test_a_tokenizer_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        Workload(RunConfig(tokenizer=str(tmp_path)))


def test_without_the_library_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigError, match=r"pip install 'soaktop\[tokenizer\]'"):
        Workload(RunConfig(tokenizer=str(tmp_path)))


async def test_the_tokenizer_counts_output_tokens_when_the_server_reports_none(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    from soaktop.engine.events import RequestDone
    from soaktop.engine.loopback.wire import words

    vocab = {w: i for i, w in enumerate(sorted(set(words(0, 17).split())) + ["[UNK]"])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    received = {}
    for tokenizer in (None, str(tmp_path)):
        done: list = []

        def keep(event, done=done):
            if isinstance(event, RequestDone):
                done.append(event)

        # the server refuses stream_options, so it reports no usage; 3 words a chunk
        async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, chunk_tokens=3),
                                  fault="refuse_usage") as server:
            cfg = RunConfig(backend="openai", url=server.url, model="loopback",
                            concurrency=2, max_requests=6, warmup_requests=0,
                            output_tokens=6, tokenizer=tokenizer)
            session = Session(cfg, OpenAIBackend(server.url, model="loopback"),
                              listeners=(keep,))
            await session.run()
        received[tokenizer is not None] = {d.output_tokens for d in done if d.ok}
    assert received == {False: {2}, True: {6}}


async def test_a_prompt_files_chat_messages_cross_to_worker_processes_as_they_are(tmp_path):
    from soaktop.engine.factory import build_session

    turns = [{"role": "system", "content": "sys"}, {"role": "user", "content": "chat turn"}]
    path = write(tmp_path, "chats.jsonl", json.dumps({"messages": turns}))
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=4)) as server:
        config = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=2,
                           max_requests=6, warmup_requests=0, prompts=path, workers=2,
                           telemetry=())
        session = await build_session(config, steerable=False)
        await session.run()
        sent = [e.prompt for e in server.emissions() if e.prompt is not None]
    assert len(sent) == 6
    for messages in sent:  # the unique prefix opens the first turn; the turns are the file's
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"].endswith("sys") and messages[1] == turns[1]
