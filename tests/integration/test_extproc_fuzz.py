"""Property-based fuzzing of the ext_proc stream, driven through the in-process picker.

Each case is one hostile ext_proc stream (random headers, bodies, chunkings, trailers,
message orders and early ends) run next to an ordinary request. The properties:

- the stream ends within a time bound, and the picker keeps serving;
- a stream either gets a destination or an ImmediateResponse with a documented status
  (400, 413, 429, 500, 503) and an OpenAI error object whose message is
  ``inference error: <Code> - <message>``; a stream whose messages come in Envoy's order
  never gets a 500 (``STREAMED`` mode excepted, a documented refusal), and an unexpected exception is never the answer;
- the ordinary request next to it is routed;
- afterwards nothing is held for either: the running gauge is 0 for every model, the
  in-flight requests, tokens and prefill backlog are 0 on every endpoint, and each
  endpoint's dispatch estimate counts exactly the requests routed to it;
- no traceback is logged more than once a minute from the same place.

``make test`` runs a short deterministic profile. ``make fuzz`` sets ``EPP_FUZZ_CASES``
(100,000) and prints the number of cases run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from epp.datalayer.endpoint import Metrics
from epp.framework.attributes import InFlightLoad
from epp.plugins.inflight.producer import InFlightLoadProducer
from epp.server.app import PickerServer, ServeOptions
from epp.testing import ExtProcClient
from epp.testing.envoy_stream import (
    ScriptedStream,
    body_message,
    request_headers_message,
    response_headers_message,
    trailers_message,
)

CASES = int(os.environ.get("EPP_FUZZ_CASES", "150"))
CASE_TIMEOUT = 10.0  # seconds for one case, stream and checks included: a hang fails the case
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINTS = ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
MAX_BODY = 256 * 1024  # small, so that oversized bodies are cheap to generate

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
- type: prefill-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: prefix-cache-scorer
  - pluginRef: prefill-load-scorer
dataLayer:
  sources: []
"""

# What every endpoint "scraped" before each case, so that dispatch estimates show up.
BASELINE = Metrics(waiting_queue_size=1, running_requests_size=1, kv_cache_usage_percent=0.1,
                   cache_block_size=16, cache_num_blocks=10_000, update_time=1.0)

FULL_DUPLEX = modes.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = modes.ProcessingMode.BUFFERED
STREAMED = modes.ProcessingMode.STREAMED
DOCUMENTED = {400: "BadRequest", 413: "PayloadTooLarge", 429: "ResourceExhausted", 500: "Internal",
              503: "ServiceUnavailable"}
ERROR_BODY = re.compile(r"inference error: (\w+) - (.+)", re.DOTALL)
# The ext_proc server's answer to an exception it did not expect (a bug, whatever the input).
UNEXPECTED = re.compile(r"internal error: \w+$")

CONTROL_HEADERS = ("x-gateway-model-name-rewrite", "x-gateway-destination-endpoint",
                   "x-gateway-destination-endpoint-subset", "x-gateway-destination-endpoint-served",
                   "x-gateway-inference-objective", "x-gateway-inference-fairness-id")
PLAIN_HEADERS = ("x-request-id", "content-type", "content-length", "user-agent", "x-original-path", "accept")
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "responses": "/v1/responses",
         "conversations": "/v1/conversations", "embeddings": "/v1/embeddings"}

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

short_text = st.text(st.characters(codec="utf-8"), max_size=40)  # the codec rules out lone surrogates
huge_size = st.sampled_from([5_000, 70_000, 300_000])


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["text", "text", "model", "binary", "huge", "empty"]))
    if kind == "model":  # a plausible value for the rewrite header: a model name
        return b"rewritten/target-model"
    if kind == "text":
        return draw(short_text).encode()
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=40)) + b"\xff\xfe"  # never valid UTF-8
    if kind == "huge":
        return b"h" * draw(huge_size)
    return b""


@st.composite
def extra_headers(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], bool]:
    """Random headers (repeated keys allowed) and whether they are all harmless for routing."""
    keys = st.one_of(st.sampled_from(CONTROL_HEADERS), st.sampled_from(PLAIN_HEADERS),
                     st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20))
    pairs = draw(st.lists(st.tuples(keys, header_value()), max_size=6))
    benign = all(key not in CONTROL_HEADERS and key not in ("x-original-path", "content-type") and len(value) < 1000
                 for key, value in pairs)
    return pairs, benign


def nested(value: str, depth: int, wrap: str) -> bytes:
    """JSON ``value`` nested ``depth`` levels deep, built as text (orjson stops at 254 levels)."""
    inner = orjson.dumps(value)
    if wrap == "list":
        return b"[" * depth + inner + b"]" * depth
    return b'{"k":' * depth + inner + b"}" * depth


def valid_body(api: str, text: str, model: str = MODEL) -> dict[str, Any]:
    match api:
        case "completions":
            return {"model": model, "prompt": text, "max_tokens": 4}
        case "chat":
            return {"model": model, "max_tokens": 4, "messages": [{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": text}]}
        case "responses":
            return {"model": model, "input": text, "instructions": "Be brief."}
        case "conversations":
            return {"model": model, "items": [{"type": "message", "role": "user", "content": text}]}
        case _:
            return {"model": model, "input": [text]}


DEEP = "\u0000deep-value-goes-here\u0000"  # replaced in the serialised body by the nested JSON
# Fields the parser hashes, per API, where deep nesting hurts most (defect 3).
DEEP_FIELDS = {"completions": ("prompt",), "chat": ("messages",), "responses": ("input", "tools"),
               "conversations": ("items",), "embeddings": ("input",)}


@st.composite
def request_body(draw: st.DrawFn, api: str) -> tuple[bytes, bool]:
    """A body for ``api`` and whether it is a valid request the picker must route."""
    text = draw(short_text) or "hello"
    kind = draw(st.sampled_from(["valid", "valid", "valid", "malformed", "deep", "huge_model", "wrong_type",
                                 "not_object", "binary", "oversized", "huge_prompt"]))
    body = valid_body(api, text)
    if kind == "valid":
        return orjson.dumps(body), True
    if kind == "malformed":
        raw = orjson.dumps(body)
        return raw[: draw(st.integers(0, len(raw) - 1))], False
    if kind == "deep":
        key = draw(st.sampled_from(DEEP_FIELDS[api]))
        depth = draw(st.sampled_from([100, 253, 254, 255, 300, 600, 1_100]))
        if api == "chat":
            body["messages"][-1][draw(st.sampled_from(["content", "role"]))] = DEEP
        else:
            body[key] = DEEP
        deep = nested(text, depth, draw(st.sampled_from(["list", "dict"])))
        return orjson.dumps(body).replace(orjson.dumps(DEEP), deep), False
    if kind == "huge_model":
        body["model"] = "m" * draw(huge_size)
        return orjson.dumps(body), False
    if kind == "wrong_type":
        field_name = draw(st.sampled_from(["model", *DEEP_FIELDS[api], "max_tokens", "stream"]))
        body[field_name] = draw(st.sampled_from([5, 1.5, None, True, {}, [], [1, "a"], {"a": [None]}, "x"]))
        return orjson.dumps(body), False
    if kind == "not_object":
        return draw(st.sampled_from([b"[]", b"null", b"1", b'"s"', b"", b"{}", b'{"model": ""}'])), False
    if kind == "binary":
        return draw(st.binary(max_size=200)), False
    if kind == "oversized":
        body["prompt" if api == "completions" else "user"] = "o" * (MAX_BODY + 10)
        return orjson.dumps(body), False
    body = valid_body(api, "a long prompt " * draw(st.integers(1_000, 15_000)))  # up to 210 KB: under the limit
    return orjson.dumps(body), True


@dataclass
class Case:
    """One stream to run: the messages in order and how the client ends it."""

    api: str
    messages: list[pb.ProcessingRequest]
    in_order: bool  # the messages follow Envoy's order for one request
    must_route: bool  # a valid request with harmless headers in a body mode that carries a destination
    streamed_mode: bool
    ending: str  # "close" (half-close, as Envoy does) or "abort" (client gone)
    empty_pool: bool
    description: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Case({'; '.join(self.description)}; messages: {', '.join(map(summary, self.messages))})"


def summary(message: pb.ProcessingRequest) -> str:
    """One message in a line, long values cut, so a failing example reads in a report."""
    kind = message.WhichOneof("request")
    part = getattr(message, kind)
    if kind.endswith("headers"):
        pairs = [f"{h.key}={h.raw_value[:30]!r}" + (f"...{len(h.raw_value)}" if len(h.raw_value) > 30 else "")
                 for h in part.headers.headers]
        return f"{kind}(eos={part.end_of_stream}, {' '.join(pairs)})"
    if kind.endswith("body"):
        cut = f"...{len(part.body)} bytes" if len(part.body) > 60 else ""
        return f"{kind}({part.body[:60]!r}{cut}, eos={part.end_of_stream})"
    return kind


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(body[start:point])
        start = point
    pieces.append(body[start:])
    return [p for p in pieces if p] or [b""]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    api = draw(st.sampled_from(list(PATHS)))
    headers, benign = draw(extra_headers())
    headers_only = draw(st.booleans()) and draw(st.booleans())  # a quarter of the cases
    body, valid = draw(request_body(api))
    mode = draw(st.sampled_from([FULL_DUPLEX, FULL_DUPLEX, FULL_DUPLEX, BUFFERED, STREAMED]))
    subset = draw(st.sampled_from([None, None, None, [ENDPOINTS[1]], ["10.9.9.9:1"], []]))
    request_trailers = draw(st.booleans()) and draw(st.booleans())
    base = [(":method", b"GET" if headers_only else b"POST"), (":path", PATHS[api].encode()),
            (":authority", b"gateway"), ("content-type", b"application/json")]
    first = request_headers_message(base + headers, end_of_stream=headers_only, request_mode=mode,
                                    response_mode=draw(st.sampled_from([FULL_DUPLEX, BUFFERED, STREAMED])))
    if subset is not None:
        hint = first.metadata_context.filter_metadata["envoy.lb.subset_hint"]
        hint.fields["x-gateway-destination-endpoint-subset"].list_value.extend(subset)
    messages = [first]
    if not headers_only:
        pieces = [body] if mode == BUFFERED else split(body, draw(st.lists(st.integers(0, 1 << 20), max_size=7)))
        messages += [body_message(p, end_of_stream=i == len(pieces) - 1 and not request_trailers)
                     for i, p in enumerate(pieces)]
        if request_trailers:
            messages.append(trailers_message(request=True))
    sse = draw(st.booleans())
    response = [response_headers_message({"content-type": "text/event-stream" if sse else "application/json"})]
    usage = orjson.dumps({"model": MODEL, "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    chunks = split(b"data: " + usage + b"\n\ndata: [DONE]\n\n" if sse else usage,
                   draw(st.lists(st.integers(0, 300), max_size=4)))
    response_trailers = draw(st.booleans()) and draw(st.booleans())
    response += [body_message(c, end_of_stream=i == len(chunks) - 1 and not response_trailers, request=False)
                 for i, c in enumerate(chunks)]
    if response_trailers:
        response.append(trailers_message(request=False))
    messages += response[: draw(st.integers(0, len(response)))]

    in_order = True
    description = [f"api={api} mode={modes.ProcessingMode.BodySendMode.Name(mode)} headers_only={headers_only} "
                   f"valid={valid} benign={benign} subset={subset} trailers={request_trailers}"]
    misuse = draw(st.sampled_from(["none"] * 6 + ["drop_headers", "second_headers", "second_headers_only",
                                                  "response_first", "trailers_first", "shuffle", "duplicate"]))
    if misuse != "none":
        in_order = False
        description.append(f"misuse={misuse}")
        if misuse == "drop_headers":
            messages = messages[1:] or [body_message(b"{}", True)]
        elif misuse == "second_headers":
            again = request_headers_message(base, end_of_stream=False)
            messages[draw(st.integers(1, len(messages))):0] = [again, body_message(orjson.dumps(
                valid_body(api, "second")), True)]
        elif misuse == "second_headers_only":
            messages.insert(draw(st.integers(1, len(messages))), request_headers_message(base, end_of_stream=True))
        elif misuse == "response_first":
            messages.insert(0, response[0])
        elif misuse == "trailers_first":
            messages.insert(0, trailers_message(request=draw(st.booleans())))
        elif misuse == "shuffle":
            messages = draw(st.permutations(messages))
        else:
            messages.insert(draw(st.integers(0, len(messages))), draw(st.sampled_from(messages)))
    early_end = draw(st.integers(0, 3)) == 0
    if early_end:
        cut = draw(st.integers(1, len(messages)))
        description.append(f"ends after message {cut} of {len(messages)}")
        messages = messages[:cut]
    ending = draw(st.sampled_from(["close", "close", "abort"]))
    empty_pool = draw(st.integers(0, 15)) == 0
    description.append(f"ending={ending} empty_pool={empty_pool}")
    must_route = (valid and benign and not headers_only and in_order and not early_end and mode != STREAMED
                  and subset in (None, [ENDPOINTS[1]]) and not empty_pool)
    return Case(api, messages, in_order, must_route, mode == STREAMED, ending, empty_pool, description)


# ---------------------------------------------------------------------------------------------
# Running a case and checking the picker is idle afterwards
# ---------------------------------------------------------------------------------------------


def short(label: str) -> str:
    """A label value fit for a message, still distinct from every other value."""
    return label if len(label) <= 60 else f"{label[:40]}...({len(label)} chars, {hash(label):x})"


def destinations(responses: list[pb.ProcessingResponse]) -> list[str]:
    """Every destination the picker set on the stream (more than one is a second routed request)."""
    found = []
    for r in responses:
        for kind in ("request_headers", "request_body"):
            if r.HasField(kind) and getattr(r, kind).response.HasField("header_mutation"):
                for h in getattr(r, kind).response.header_mutation.set_headers:
                    if h.header.key == "x-gateway-destination-endpoint":
                        found.append((h.header.raw_value or h.header.value.encode()).decode())
    return found


def check_answer(case: Case, responses: list[pb.ProcessingResponse], routed: list[str]) -> None:
    immediate = [r.immediate_response for r in responses if r.HasField("immediate_response")]
    assert len(immediate) <= 1, "more than one immediate response on one stream"
    assert set(routed) <= set(ENDPOINTS), routed
    if immediate:
        status, body = int(immediate[0].status.code), immediate[0].body.decode("utf-8", "replace")
        assert status in DOCUMENTED, (status, body)
        error = orjson.loads(immediate[0].body)["error"]  # OpenAI's error object, as vLLM answers
        assert error["code"] == status, body
        match = ERROR_BODY.fullmatch(error["message"])
        assert match is not None, body
        assert match.group(1) == DOCUMENTED[status], (status, body)
        assert not UNEXPECTED.search(match.group(2)), f"an unexpected exception answered the request: {body}"
        if case.in_order and not case.streamed_mode:
            assert status != 500, f"500 for a request in Envoy's order: {body}"
        if case.empty_pool and case.in_order and not case.streamed_mode:
            assert status in (400, 413, 503), body
    if case.must_route and case.ending == "close":
        assert routed, f"a valid request was not routed: {[r.WhichOneof('response') for r in responses]}"


@dataclass
class Picker:
    server: PickerServer
    client: ExtProcClient
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def load(self) -> InFlightLoad:
        assert self.server.config is not None
        plugin = self.server.config.plugins["inflight-load-producer"]
        assert isinstance(plugin, InFlightLoadProducer)
        return plugin.load

    def held(self) -> dict[str, Any]:
        """Everything still held for requests; empty when the picker is idle."""
        running = {short(sample.labels.get("model_name", "")): sample.value
                   for family in self.server.metrics.running_requests.collect() for sample in family.samples
                   if sample.value != 0}
        load = {name: (self.load.requests(name), self.load.tokens(name), self.load.prefill_backlog(name))
                for name in ENDPOINTS}
        return {"running gauge": running, "in flight": {k: v for k, v in load.items() if any(v)}}

    def reset_estimates(self) -> None:
        for ep in self.server.pool.endpoints():
            ep.metrics = BASELINE  # a "scrape": replaces any dispatch estimate

    def estimates(self) -> Counter[str]:
        """Requests each endpoint's dispatch estimate adds to its last scrape."""
        return Counter({ep.name: ep.metrics.waiting_queue_size - ep.scraped_metrics.waiting_queue_size
                        for ep in self.server.pool.endpoints()})


async def run_case(picker: Picker, case: Case) -> None:
    pool = picker.server.pool
    members = [ep.metadata for ep in pool.endpoints()]
    if case.empty_pool:
        pool.replace_all([])
    picker.reset_estimates()
    before = picker.held()
    try:
        async with picker.client.stream() as stream:
            ordinary = asyncio.create_task(picker.client.exchange(orjson.dumps(valid_body("chat", "ordinary")),
                                                                  path=PATHS["chat"]))
            await send_all(stream, case.messages)
            result = await (stream.close() if case.ending == "close" else stream.abort())
            neighbour = await ordinary
        routed = destinations(result.responses)
        check_answer(case, result.responses, routed)
        neighbour_routed = destinations(neighbour.responses)
        if case.empty_pool:
            assert neighbour.status == 503, neighbour.responses
        else:
            assert len(neighbour_routed) == 1, f"the ordinary request next to it was not routed: {neighbour.status}"
        picker.outcomes[outcome(result.responses, routed)] += 1
        await idle(picker, before)
        # Headers-only requests carry no prompt to account, so an estimate may be missing, never extra.
        sent = Counter(routed) + Counter(neighbour_routed)
        extra = {name: (n, sent[name]) for name, n in picker.estimates().items() if n > sent[name]}
        # An aborted stream may have been routed after the client stopped reading: one unseen decision.
        unseen = 1 if case.ending == "abort" and not routed else 0
        assert sum(n - s for n, s in extra.values()) <= unseen, \
            f"dispatch estimates for requests never sent (estimated, routed): {extra}"
    finally:
        if case.empty_pool:
            pool.replace_all(members)


async def send_all(stream: ScriptedStream, messages: list[pb.ProcessingRequest]) -> None:
    for message in messages:
        if not await stream.send(message):
            return


async def idle(picker: Picker, before: dict[str, Any]) -> None:
    """Wait for the stream's end to be processed (an abort is seen asynchronously), then require
    that nothing more is held than before the case (so one leak does not fail every later case)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while (held := picker.held()) != before and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert held == before, f"state held after the stream ended: {held}, before the case: {before}"


def outcome(responses: list[pb.ProcessingResponse], routed: list[str]) -> str:
    for r in responses:
        if r.HasField("immediate_response"):
            message = r.immediate_response.body.decode("utf-8", "replace")
            return f"{r.immediate_response.status.code} {re.sub(r'[0-9]+', 'N', message)[:70]}"
    return "routed" if routed else "no answer"


def tracebacks_repeated_within_a_minute(records: list[logging.LogRecord]) -> list[str]:
    by_place: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        if record.exc_info:
            by_place[(record.name, str(record.msg))].append(record.created)
    return [f"{name}: {msg!r} x{len(times)}" for (name, msg), times in by_place.items()
            if any(b - a < 60 for a, b in zip(sorted(times), sorted(times)[1:], strict=False))]


async def bounded(case: Coroutine[Any, Any, None]) -> None:
    try:
        async with asyncio.timeout(CASE_TIMEOUT):
            await case
    except TimeoutError as exc:
        raise AssertionError(f"the case did not finish within {CASE_TIMEOUT} s") from exc


@pytest.fixture
def picker() -> Iterator[tuple[asyncio.Runner, Picker]]:
    with asyncio.Runner() as runner:
        options = ServeOptions(grpc_port=0, grpc_health_port=0, metrics_port=0, endpoints=",".join(ENDPOINTS),
                               config_text=CONFIG, seed=7, max_request_body_bytes=MAX_BODY)
        server = PickerServer(options)
        runner.run(server.start())
        client = ExtProcClient(f"127.0.0.1:{server.grpc_port}")
        try:
            yield runner, Picker(server, client)
        finally:
            runner.run(client.close())
            runner.run(server.stop(grace=0))


def test_hostile_ext_proc_streams_are_answered_and_leave_nothing_behind(
        picker: tuple[asyncio.Runner, Picker], caplog: pytest.LogCaptureFixture) -> None:
    runner, state = picker
    caplog.set_level(logging.WARNING)

    @settings(max_examples=CASES, deadline=None, derandomize=CASES <= 1000, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(case=cases())
    def one_case(case: Case) -> None:
        note(repr(case))
        state.cases += 1
        runner.run(bounded(run_case(state, case)))

    try:
        one_case()
    finally:
        outcomes = "\n".join(f"  {n:7d}  {what}" for what, n in state.outcomes.most_common())
        print(f"\next_proc fuzz: {state.cases} cases run; outcomes:\n{outcomes}")
    repeated = tracebacks_repeated_within_a_minute(caplog.records)
    assert not repeated, f"tracebacks logged more than once a minute for client input: {repeated}"
