"""Prompts: unique per request (no prefix-cache hits) unless a shared prefix is asked for."""

from soaktop.engine.load.prompts import UNIQUE_PREFIX_TOKENS, PromptSet


def test_every_request_starts_differently_and_the_length_is_exact():
    prompts = PromptSet(seed=3, pool=8, input_tokens=32, salt="a")
    heads = {prompts.prompt(i).token_ids[:UNIQUE_PREFIX_TOKENS] for i in range(5000)}
    assert len(heads) == 5000  # 5,000 requests over a pool of 8: no two share a start
    assert all(len(prompts.prompt(i).token_ids) == 32 for i in range(20))
    # beyond the unique head, the body is the pool's (the workload's shape is the seed's)
    assert prompts.prompt(0).token_ids[4:] == prompts.prompt(8).token_ids[4:]


def test_runs_do_not_share_prefixes_but_a_salt_repeats_a_run_exactly():
    a, b = PromptSet(3, 8, 32), PromptSet(3, 8, 32)
    assert a.salt != b.salt and a.prompt(0) != b.prompt(0)
    again = PromptSet(3, 8, 32, salt=a.salt)
    assert [again.prompt(i) for i in range(10)] == [a.prompt(i) for i in range(10)]


def test_a_shared_prefix_is_common_then_each_request_is_unique():
    prompts = PromptSet(seed=3, pool=8, input_tokens=64, shared_prefix=40, salt="x")
    p0, p1 = prompts.prompt(0).token_ids, prompts.prompt(1).token_ids
    assert p0[:40] == p1[:40] and p0[40:44] != p1[40:44]
    assert len(p0) == 64


def test_the_header_names_the_workload_and_its_hash():
    d = PromptSet(3, 8, 32, salt="s").describe()
    assert d["prompt_seed"] == 3 and d["prefix_salt"] == "s" and d["unique_prefix_tokens"] == 4
    assert d["prompts_sha256"] == PromptSet(3, 8, 32, salt="t").describe()["prompts_sha256"]
    assert d["prompts_sha256"] != PromptSet(4, 8, 32).describe()["prompts_sha256"]


async def test_a_session_header_keeps_the_workload(make_session):
    from soaktop.engine.events import SessionStart

    session, events = make_session(concurrency=1, max_requests=2, warmup_requests=0)
    await session.run()
    header = events.of(SessionStart)[0]
    assert header.workload == session.prompts.describe()
