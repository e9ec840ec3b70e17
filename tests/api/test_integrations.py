"""The ASGI and WSGI middlewares and the Hugging Face Trainer callback, against a real PULL
socket playing the agent."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from types import SimpleNamespace

import pytest
from fakes.agent_socket import AgentSocket

from wattspan import client, integrations
from wattspan.integrations.asgi import WattspanMiddleware
from wattspan.integrations.transformers import WattspanCallback
from wattspan.integrations.wsgi import WattspanWSGIMiddleware
from wattspan.protocol import End


@pytest.fixture
def agent():
    path = tempfile.mkdtemp(prefix="ws-")
    a = AgentSocket(f"ipc://{path}/spans.sock")
    client.configure(a.endpoint)
    try:
        yield a
    finally:
        client.configure(None)
        a.close()
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------ ASGI


def http_scope(path="/items/42", headers=(), method="GET"):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": list(headers), "root_path": ""}


class Recorder:
    def __init__(self):
        self.sent = []

    async def receive(self):
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message):
        self.sent.append(message)


def make_app(*, route=None, chunks=(b"a", b"b"), fail=False, weight=None):
    seen = {}

    async def app(scope, receive, send):
        seen["scope"] = scope
        if route is not None:
            scope["route"] = SimpleNamespace(path=route)  # what Starlette's router does
        if weight is not None:
            scope["wattspan.span"].weight = weight
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        if fail:
            raise RuntimeError("handler failed")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app, seen


def run_asgi(app, scope):
    rec = Recorder()
    asyncio.run(app(scope, rec.receive, rec.send))
    return rec


def test_asgi_route_template_header_request_id_and_weight(agent):
    app, seen = make_app(route="/items/{item_id}", weight=12)
    rec = run_asgi(WattspanMiddleware(app),
                   http_scope(headers=[(b"X-Request-ID", b"req-9")]))
    assert [m["type"] for m in rec.sent][0] == "http.response.start"
    b, e = agent.recv(2)
    assert (b.name, b.request_id, b.attributes) == ("/items/42", "req-9",
                                                   {"http.request.method": "GET"})
    assert (e.span_id, e.name, e.weight) == (b.span_id, "/items/{item_id}", 12.0)
    assert seen["scope"]["wattspan.request_id"] == "req-9"


def test_asgi_generated_request_id_and_path_name(agent):
    app, seen = make_app()
    run_asgi(WattspanMiddleware(app), http_scope(path="/health"))
    b, e = agent.recv(2)
    assert b.name == "/health" and e.name is None
    assert len(b.request_id) == 32 and int(b.request_id, 16) >= 0
    assert seen["scope"]["wattspan.request_id"] == b.request_id


def test_asgi_fixed_and_callable_names(agent):
    app, _ = make_app(route="/items/{item_id}")
    run_asgi(WattspanMiddleware(app, name="generate"), http_scope())
    run_asgi(WattspanMiddleware(app, name=lambda scope: scope["method"] + " api"),
             http_scope(method="POST"))
    b1, e1, b2, e2 = agent.recv(4)
    assert (b1.name, e1.name, b2.name, e2.name) == ("generate", None, "POST api", None)


def test_asgi_custom_header(agent):
    app, _ = make_app()
    run_asgi(WattspanMiddleware(app, request_id_header="X-Correlation-Id"),
             http_scope(headers=[(b"x-correlation-id", b"c-1"), (b"x-request-id", b"no")]))
    b, _ = agent.recv(2)
    assert b.request_id == "c-1"


def test_asgi_exception_propagates_and_span_ends(agent):
    app, _ = make_app(route="/boom", fail=True)
    with pytest.raises(RuntimeError, match="handler failed"):
        run_asgi(WattspanMiddleware(app), http_scope())
    b, e = agent.recv(2)
    assert e.span_id == b.span_id and e.name == "/boom"


def test_asgi_span_covers_streaming(agent):
    events = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        events.append(("begin seen", len(agent.recv(1))))  # BEGIN arrived, END not yet
        await send({"type": "http.response.body", "body": b"x", "more_body": False})

    run_asgi(WattspanMiddleware(app), http_scope())
    assert events == [("begin seen", 1)]
    assert isinstance(agent.recv(1)[0], End)


def test_asgi_passes_lifespan_and_websocket_through(agent):
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])

    mw = WattspanMiddleware(app)
    for scope in ({"type": "lifespan", "asgi": {"version": "3.0"}},
                  {"type": "websocket", "path": "/ws", "headers": []}):
        asyncio.run(mw(scope, Recorder().receive, Recorder().send))
        assert "wattspan.span" not in scope
    assert calls == ["lifespan", "websocket"]
    agent.nothing()


def test_asgi_never_breaks_the_app_when_wattspan_fails(agent, monkeypatch):
    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("wattspan bug")

    monkeypatch.setattr(integrations, "Span", Broken)
    app, _ = make_app()
    rec = run_asgi(WattspanMiddleware(app), http_scope(headers=[(b"x-request-id", b"\xff")]))
    assert rec.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    agent.nothing()


# ------------------------------------------------------------------------------------ WSGI


def streaming_app(chunks, *, closed=None, fail_at=None):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        environ["wattspan.span"].weight = len(chunks)

        def body():
            try:
                for i, chunk in enumerate(chunks):
                    if i == fail_at:
                        raise ValueError("stream failed")
                    yield chunk
            finally:
                if closed is not None:
                    closed.append(True)

        return body()

    return app


def environ(path="/stream", **headers):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "x",
           "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    env.update(headers)
    return env


def start_response(status, headers, exc_info=None):
    return lambda data: None


def test_wsgi_span_lasts_until_the_stream_is_exhausted(agent):
    closed = []
    mw = WattspanWSGIMiddleware(streaming_app([b"a", b"b", b"c"], closed=closed))
    result = mw(environ(HTTP_X_REQUEST_ID="w-1"), start_response)
    it = iter(result)
    assert next(it) == b"a"
    (b,) = agent.recv(1)
    assert (b.name, b.request_id, b.attributes) == ("/stream", "w-1",
                                                   {"http.request.method": "GET"})
    assert next(it) == b"b"
    agent.nothing(0.02)  # still streaming: no END
    assert list(it) == [b"c"]
    (e,) = agent.recv(1)
    assert e.span_id == b.span_id and e.weight == 3.0
    result.close()  # the server calls close(): the span is not ended twice
    assert closed == [True]
    agent.nothing(0.02)


def test_wsgi_close_before_exhaustion_ends_the_span(agent):
    closed = []
    mw = WattspanWSGIMiddleware(streaming_app([b"a", b"b"], closed=closed), name="stream")
    result = mw(environ(), start_response)
    assert next(iter(result)) == b"a"
    result.close()
    b, e = agent.recv(2)
    assert b.name == "stream" and e.span_id == b.span_id
    assert closed == [True]
    assert len(b.request_id) == 32


def test_wsgi_errors_end_the_span_and_propagate(agent):
    def failing(environ, start_response):
        raise KeyError("app failed")

    with pytest.raises(KeyError):
        WattspanWSGIMiddleware(failing)(environ(), start_response)
    b, e = agent.recv(2)
    assert e.span_id == b.span_id

    mw = WattspanWSGIMiddleware(streaming_app([b"a", b"b"], fail_at=1))
    result = mw(environ(), start_response)
    with pytest.raises(ValueError, match="stream failed"):
        list(result)
    b, e = agent.recv(2)
    assert e.span_id == b.span_id


def test_wsgi_custom_header_and_callable_name(agent):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    mw = WattspanWSGIMiddleware(app, request_id_header="X-Correlation-Id",
                                name=lambda env: env["REQUEST_METHOD"] + " /things")
    assert b"".join(mw(environ(HTTP_X_CORRELATION_ID="c-7"), start_response)) == b"ok"
    b, e = agent.recv(2)
    assert (b.name, b.request_id) == ("GET /things", "c-7")


def test_wsgi_never_breaks_the_app_when_wattspan_fails(agent, monkeypatch):
    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("wattspan bug")

    monkeypatch.setattr(integrations, "Span", Broken)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"fine"]

    assert list(WattspanWSGIMiddleware(app)(environ(), start_response)) == [b"fine"]
    agent.nothing()


# ------------------------------------------------------------------------- Trainer callback


def trainer_args(batch=8, accumulation=4):
    return SimpleNamespace(per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulation)


def test_trainer_callback_tokens(agent):
    cb = WattspanCallback()
    args, control = trainer_args(), SimpleNamespace()
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0, epoch=0.0)
    cb.on_train_begin(args, state, control)
    for _ in range(3):
        assert cb.on_step_begin(args, state, control) is None
        state.num_input_tokens_seen += 4096
        cb.on_substep_end(args, state, control)
        state.global_step += 1
        assert cb.on_step_end(args, state, control) is None
    cb.on_train_end(args, state, control)
    messages = agent.recv(6)
    begins = messages[0::2]
    ends = messages[1::2]
    assert [b.name for b in begins] == ["train_step"] * 3
    assert [b.request_id for b in begins] == ["1", "2", "3"]
    assert [e.weight for e in ends] == [4096.0] * 3
    assert [e.span_id for e in ends] == [b.span_id for b in begins]


def test_trainer_callback_samples_and_none(agent):
    args, control = trainer_args(batch=8, accumulation=4), SimpleNamespace()
    state = SimpleNamespace(global_step=10)  # no token counting
    cb = WattspanCallback(name="step", devices=[0], attributes={"run": "r1"})
    cb.on_step_begin(args, state, control)
    state.global_step = 11
    cb.on_step_end(args, state, control)
    cb_none = WattspanCallback(weight=None)
    cb_none.on_step_begin(args, state, control)
    cb_none.on_step_end(args, state, control)
    cb_tokens = WattspanCallback(weight="tokens")
    cb_tokens.on_step_begin(args, state, control)
    cb_tokens.on_step_end(args, state, control)
    b1, e1, b2, e2, b3, e3 = agent.recv(6)
    assert (b1.name, b1.request_id, b1.devices, b1.attributes) == ("step", "11", (0,),
                                                                  {"run": "r1"})
    assert e1.weight == 32.0
    assert b2.request_id == "12" and e2.weight is None
    assert e3.weight is None


def test_trainer_callback_open_step_closed_at_train_end(agent):
    cb = WattspanCallback()
    args, state, control = trainer_args(), SimpleNamespace(global_step=0), SimpleNamespace()
    cb.on_step_begin(args, state, control)
    cb.on_train_end(args, state, control)
    cb.on_step_end(args, state, control)  # nothing open any more: nothing sent
    b, e = agent.recv(2)
    assert e.span_id == b.span_id


def test_trainer_callback_has_the_trainer_callback_interface():
    cb = WattspanCallback()
    for event in ("on_init_end", "on_train_begin", "on_epoch_begin", "on_epoch_end",
                  "on_evaluate", "on_save", "on_log", "on_prediction_step",
                  "on_substep_end", "on_optimizer_step", "on_pre_optimizer_step"):
        assert getattr(cb, event)(None, None, None) is None
    with pytest.raises(ValueError):
        WattspanCallback(weight="flops")
