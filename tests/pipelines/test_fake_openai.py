"""The fake OpenAI server, exercised with the REAL openai client over HTTP (no patching)."""
from __future__ import annotations

import json
import time

import pytest

import openai  # noqa: E402  (the dev extra installs it; never skipped)

from support.fake_openai import CREATED, FakeOpenAI, Reply, fake_openai_server, running  # noqa: E402

srv = pytest.fixture(fake_openai_server)  # how other test files get a fresh server per test

MSG = [{"role": "user", "content": "the man on the left"}]


def client(s: FakeOpenAI, **kw) -> "openai.OpenAI":
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 5.0)
    return openai.OpenAI(base_url=s.base_url, api_key="sk-test", **kw)


def chat(c, content="the man on the left", model="gpt-4o-mini"):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])


def test_enqueued_content_then_default_echo(srv):
    srv.enqueue(Reply(content='{"rephrased": "leftmost man"}'))
    with client(srv) as c:
        r = chat(c)
        assert r.choices[0].message.content == '{"rephrased": "leftmost man"}'
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason == "stop"
        assert r.model == "gpt-4o-mini" and r.created == CREATED and r.object == "chat.completion"
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        r2 = chat(c, content="red car")
        assert json.loads(r2.choices[0].message.content) == {"echo": "red car"}
        assert r2.id != r.id
    assert srv.count() == 2 and srv.pending == 0
    req = srv.requests[0]
    assert req["method"] == "POST" and req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert req["body"]["messages"] == MSG and req["body"]["model"] == "gpt-4o-mini"


def test_script_handler_and_reset(srv):
    srv.script(lambda body: Reply(content=body["messages"][-1]["content"].upper()))
    with client(srv) as c:
        assert chat(c, "dog").choices[0].message.content == "DOG"
        srv.reset()
        assert srv.count() == 0
        assert json.loads(chat(c, "dog").choices[0].message.content) == {"echo": "dog"}


def test_500_then_success_with_client_retries(srv):
    srv.enqueue(Reply(status=500), Reply(content="ok"))
    with client(srv, max_retries=2) as c:
        raw = c.chat.completions.with_raw_response.create(model="m", messages=MSG)
        assert raw.parse().choices[0].message.content == "ok"
        assert raw.headers["x-request-id"].startswith("req_")
    assert srv.count() == 2
    first, second = (r["headers"] for r in srv.requests)
    assert first["x-stainless-retry-count"] == "0" and second["x-stainless-retry-count"] == "1"


def test_429_retry_after_is_honoured(srv):
    srv.enqueue(Reply(status=429, headers={"Retry-After": "1"}), Reply(content="ok"))
    with client(srv, max_retries=2) as c:
        t0 = time.monotonic()
        assert chat(c).choices[0].message.content == "ok"
        elapsed = time.monotonic() - t0
    assert elapsed >= 0.9
    assert srv.count() == 2


def test_429_retry_after_ms_is_preferred(srv):
    srv.enqueue(Reply(status=429, headers={"retry-after-ms": "50", "Retry-After": "30"}), Reply(content="ok"))
    with client(srv, max_retries=1) as c:
        t0 = time.monotonic()
        assert chat(c).choices[0].message.content == "ok"
        assert time.monotonic() - t0 < 5


def test_429_without_retries_raises_rate_limit_error(srv):
    srv.enqueue(Reply(status=429, headers={"Retry-After": "7"}))
    with client(srv) as c, pytest.raises(openai.RateLimitError) as ei:
        chat(c)
    assert ei.value.status_code == 429
    assert ei.value.response.headers["retry-after"] == "7"
    assert ei.value.code == "rate_limit_exceeded"


def test_timeout(srv):
    srv.enqueue(Reply(content="late", delay=2.0))
    with client(srv, timeout=0.5, max_retries=0) as c:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            chat(c)
        assert time.monotonic() - t0 < 1.5


def test_401_authentication_error(srv):
    srv.enqueue(Reply(status=401))
    with client(srv, max_retries=2) as c, pytest.raises(openai.AuthenticationError) as ei:
        chat(c)
    assert ei.value.code == "invalid_api_key"
    assert "Incorrect API key" in ei.value.message
    assert srv.count() == 1  # 4xx other than 408/409/429 is not retried


def test_custom_error_body(srv):
    body = {"error": {"message": "bad schema", "type": "invalid_request_error", "code": "bad_schema"}}
    srv.enqueue(Reply(status=400, json_body=body))
    with client(srv) as c, pytest.raises(openai.BadRequestError) as ei:
        chat(c)
    assert ei.value.code == "bad_schema" and ei.value.body["message"] == "bad schema"


def test_server_stopped_connection_error():
    s = FakeOpenAI().start()
    with client(s) as c:
        assert chat(c).choices[0].message.content  # a keep-alive connection now sits in the client's pool
        s.stop()
        with pytest.raises(openai.APIConnectionError) as ei:
            chat(c)
        assert not isinstance(ei.value, openai.APITimeoutError)


def test_close_connection_is_a_connection_error(srv):
    srv.enqueue(Reply(close_connection=True), Reply(content="recovered"))
    with client(srv) as c:
        with pytest.raises(openai.APIConnectionError):
            chat(c)
        assert chat(c).choices[0].message.content == "recovered"


def test_refusal(srv):
    srv.enqueue(Reply(content=None, refusal="I can't help with that."))
    with client(srv) as c:
        m = chat(c).choices[0].message
    assert m.refusal == "I can't help with that." and m.content is None


def test_finish_reason_length(srv):
    srv.enqueue(Reply(content='{"rephr', finish_reason="length"))
    with client(srv) as c:
        assert chat(c).choices[0].finish_reason == "length"


def _batch_input(tmp_path, n=3):
    p = tmp_path / "in.jsonl"
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"expr {i}"}]}}
             for i in range(n)]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def _poll(c, bid, limit=20):
    for _ in range(limit):
        b = c.batches.retrieve(bid)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
    raise AssertionError(f"batch {bid} never finished: {b.status}")


def _lines(c, file_id):
    return {x["custom_id"]: x for x in map(json.loads, c.files.content(file_id).text.splitlines())}


def test_batch_flow_end_to_end(srv, tmp_path):
    srv.script(lambda body: Reply(status=500) if body["messages"][0]["content"] == "expr 1"
               else Reply(content="ok: " + body["messages"][0]["content"]))
    with client(srv) as c:
        with open(_batch_input(tmp_path), "rb") as f:
            fo = c.files.create(file=f, purpose="batch")
        assert fo.id == "file-000001" and fo.purpose == "batch" and fo.status == "processed"
        assert fo.filename == "in.jsonl" and fo.bytes == (tmp_path / "in.jsonl").stat().st_size
        assert c.files.retrieve(fo.id).id == fo.id
        assert c.files.content(fo.id).content == (tmp_path / "in.jsonl").read_bytes()

        b = c.batches.create(input_file_id=fo.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"stage": "rephrase"})
        assert b.id == "batch_000001" and b.status == "validating" and b.metadata == {"stage": "rephrase"}
        assert b.output_file_id is None and b.error_file_id is None
        statuses = [c.batches.retrieve(b.id).status for _ in range(2)]
        assert statuses == ["in_progress", "in_progress"]
        assert srv.batch_lines_processed == 0
        done = _poll(c, b.id)
        assert done.status == "completed"
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
        out = _lines(c, done.output_file_id)
        err = _lines(c, done.error_file_id)
        assert set(out) == {"req-0", "req-2"} and set(err) == {"req-1"}
        for cid, line in out.items():
            assert line["response"]["status_code"] == 200 and line["error"] is None
            completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
            assert completion.choices[0].message.content == f"ok: expr {cid[-1]}"
        assert err["req-1"]["response"]["status_code"] == 500
        assert err["req-1"]["response"]["body"]["error"]["type"] == "server_error"

        page = c.batches.list()
        assert [x.id for x in page.data] == [b.id] and page.has_more is False
        assert {f.id for f in c.files.list()} == {fo.id, done.output_file_id, done.error_file_id}
    assert srv.batch_lines_processed == 3
    assert srv.count("/chat/completions") == 0  # batch lines are not live requests


def test_batch_uses_queue_in_line_order_and_cancel(tmp_path):
    with running(batch_polls_until_done=0) as s, client(s) as c:
        fo = c.files.create(file=_batch_input(tmp_path, 2).read_bytes(), purpose="batch")
        s.enqueue(Reply(content="A"), Reply(status=429))
        b = c.batches.create(input_file_id=fo.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = c.batches.retrieve(b.id)
        assert done.status == "completed"
        assert _lines(c, done.output_file_id)["req-0"]["response"]["body"]["choices"][0]["message"]["content"] == "A"
        assert _lines(c, done.error_file_id)["req-1"]["response"]["status_code"] == 429

        b2 = c.batches.create(input_file_id=fo.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.cancel(b2.id).status == "cancelling"
        assert c.batches.retrieve(b2.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            c.batches.cancel(b.id)  # already completed
        assert [x.id for x in c.batches.list(limit=1)] == [b2.id, b.id]  # auto-pagination via ?after=
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_nope")


def test_state_dir_resume(tmp_path):
    state = tmp_path / "state"
    s1 = FakeOpenAI(state_dir=state, batch_polls_until_done=1).start()
    port = s1.port
    with client(s1) as c:
        fo = c.files.create(file=_batch_input(tmp_path), purpose="batch")
        b = c.batches.create(input_file_id=fo.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert c.batches.retrieve(b.id).status == "in_progress"
    s1.stop()  # "kill" the server mid-batch

    try:
        s2 = FakeOpenAI(port=port, state_dir=state, batch_polls_until_done=1).start()
    except OSError:  # port taken meanwhile: a new one works as well
        s2 = FakeOpenAI(state_dir=state, batch_polls_until_done=1).start()
    with s2, client(s2) as c:
        done = _poll(c, b.id)
        assert done.status == "completed" and done.request_counts.completed == 3
        assert done.input_file_id == fo.id
        out = _lines(c, done.output_file_id)
        assert json.loads(out["req-2"]["response"]["body"]["choices"][0]["message"]["content"]) == {"echo": "expr 2"}
        # counters survived: new ids do not collide with the old ones
        fo2 = c.files.create(file=b"{}\n", purpose="batch")
        assert fo2.id not in {fo.id, done.output_file_id}
    assert s2.batch_lines_processed == 3


def test_multipart_upload_is_byte_exact(srv):
    data = b"line1\r\nline2\n\x00\xff--not-a-boundary\r\n--\r\n\r\n"
    with client(srv) as c:
        fo = c.files.create(file=("weird name.jsonl", data), purpose="batch")
        assert fo.filename == "weird name.jsonl" and fo.bytes == len(data)
        assert c.files.content(fo.id).content == data
    assert isinstance(srv.requests[0]["body"], bytes)


def test_every_response_has_request_id(srv):
    with client(srv) as c:
        r = c.with_raw_response.batches.list()
        assert r.headers["x-request-id"]
        with pytest.raises(openai.NotFoundError) as ei:
            c.files.retrieve("file-nope")
        assert ei.value.response.headers["x-request-id"]


def test_concurrent_async_clients(srv):
    import asyncio

    async def main():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=1) as c:
            rs = await asyncio.gather(*[c.chat.completions.create(model="m", messages=[{"role": "user",
                                                                                        "content": str(i)}])
                                        for i in range(16)])
        return [json.loads(r.choices[0].message.content)["echo"] for r in rs]

    assert asyncio.run(main()) == [str(i) for i in range(16)]
    assert srv.count() == 16
