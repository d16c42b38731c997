"""wrap(..., coin_audit=) end to end: a real tallystickd, a real CoIn provider server, the demo
LLM server as the cooperating provider, and a real ``openai`` client; whole responses and
streams.

One daemon, one provider server and three LLM servers (one honest, one whose commits go through
a proxy that edits the answer, one that offers nothing) serve the whole module; the sidecar
loads its engine once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sdk.conftest import Sidecar  # the SDK tests' real-daemon fixture class
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider_server import COMMIT_PATH, ProviderServer
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.sdk import AsyncClient, Client, audit_offer, audit_offer_async
from tallystick.sdk.background import BackgroundRecorder
from tallystick.sdk.client import Policy
from tallystick.sdk.coin import CoinVerdict
from tallystick.sdk.wrap import CoinAuditor, CoinAuditOutcome, wrap
from tallystick.verifier.checkpoint import NoteSigner, SignedNote
from tallystick.verifier.coin import (
    Attestation,
    CoinOffer,
    prompt_text,
    verify_evidence,
    verify_head,
)

from demo.llm_server import LLMServer, load_traces

MODEL = "sky-t1-32b"
#: Generous: the sidecar loads its embedding model on the first audit.
WAIT_S = 300.0


class _AnswerEditingProxy:
    """Stands between an LLM server and the provider server and edits the answer of every
    commit: the provider then signs a head whose answer hash is not the delivered answer's."""

    def __init__(self, target: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["answer"] += " (edited)"
                forward = urllib.request.Request(
                    target + self.path,
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(forward, timeout=WAIT_S) as answer:
                    status, payload = answer.status, answer.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Wire:
    """httpx event hooks keeping the raw (non-streamed) response bodies."""

    def __init__(self) -> None:
        self.responses: list[bytes] = []

    def on_response(self, response: httpx.Response) -> None:
        if response.headers["content-type"] == "application/json":
            self.responses.append(response.read())


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    """One daemon for the module (agents alice, bob, carol): its engine loads once."""
    with tempfile.TemporaryDirectory(prefix="tsw-") as name:
        running = Sidecar(Path(name) / "d").start()
        yield running
        running.stop()


@pytest.fixture(scope="module")
def provider(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> Iterator[ProviderServer]:
    with ProviderServer(engine, tokenizer, signer) as running:
        yield running


@pytest.fixture(scope="module")
def traces_file(
    tmp_path_factory: pytest.TempPathFactory, short_traces: list[dict[str, Any]]
) -> Path:
    path = tmp_path_factory.mktemp("traces") / "short.jsonl"
    path.write_text("".join(json.dumps(trace) + "\n" for trace in short_traces), "utf-8")
    return path


@pytest.fixture(scope="module")
def llm(traces_file: Path, provider: ProviderServer) -> Iterator[LLMServer]:
    """The demo server as a cooperating provider."""
    with LLMServer(load_traces(traces_file), coin_provider_url=provider.url) as server:
        yield server


@pytest.fixture(scope="module")
def broken_llm(traces_file: Path, provider: ProviderServer) -> Iterator[LLMServer]:
    """The demo server whose offers commit to another answer than the one it serves."""
    proxy = _AnswerEditingProxy(provider.url)
    try:
        with LLMServer(load_traces(traces_file), coin_provider_url=proxy.url) as server:
            yield server
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def plain_llm(traces_file: Path) -> Iterator[LLMServer]:
    """The demo server as a provider that offers no audit."""
    with LLMServer(load_traces(traces_file)) as server:
        yield server


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy(spool_dir=tmp_path / "spool", retry_in_background=False, timeout_s=5)


def _countersigned(logged: str, offered: str) -> bool:
    """The logged head is the offered note with the log's signature added (coin.md §4.3)."""
    mine, theirs = SignedNote.from_text(logged), SignedNote.from_text(offered)
    return mine.text == theirs.text and mine.signatures[:-1] == theirs.signatures


def _openai(server: LLMServer, wire: _Wire | None = None) -> openai.OpenAI:
    http_client = httpx.Client(event_hooks={"response": [wire.on_response] if wire else []})
    return openai.OpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, http_client=http_client
    )


def _async_openai(server: LLMServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


@contextlib.contextmanager
def _wrapped_openai(
    sidecar: Sidecar,
    llm: LLMServer,
    policy: Policy,
    *,
    agent: str = "alice",
    make_client: Callable[[LLMServer], Any] = _openai,
) -> Iterator[tuple[Any, CoinAuditor]]:
    """``llm``'s OpenAI client (sync by default) wrapped to record on ``agent``'s sidecar
    client and audit there."""
    with Client(sidecar.address(agent), policy=policy) as client:
        auditor = CoinAuditor(client)
        yield wrap(make_client(llm), recorder=client, coin_audit=auditor), auditor


def _messages(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": trace["prompt"]}]


def _audit_bodies(sidecar: Sidecar, start: int) -> list[dict[str, Any]]:
    return [entry.body for entry in sidecar.entries(start) if entry.kind.value == "audit"]


def _size(sidecar: Sidecar) -> int:
    assert sidecar.daemon is not None
    return sidecar.daemon.log.size


def _offer(provider: ProviderServer, trace: dict[str, Any], request_id: str) -> CoinOffer:
    """The provider server's offer for ``trace``, committed directly (no LLM server)."""
    commit = {
        "request_id": request_id,
        "model": MODEL,
        "prompt": prompt_text(_messages(trace)),
        "reasoning": trace["reasoning"],
        "answer": trace["answer"],
    }
    request = urllib.request.Request(
        provider.url + COMMIT_PATH,
        data=json.dumps(commit).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
        return CoinOffer.from_json(json.loads(answer.read())["offer"])


def _head_of(sidecar: Sidecar, call_request_id: str) -> dict[str, Any]:
    """The one logged head entry for ``call_request_id``."""
    (head,) = [
        entry.body
        for entry in sidecar.entries(0)
        if entry.kind.value == "audit"
        and entry.body.get("coin") == "head"
        and entry.body.get("call_request_id") == call_request_id
    ]
    return head


# -- the honest provider ------------------------------------------------------------------------


def test_an_offered_call_is_recorded_then_audited(
    sidecar: Sidecar,
    llm: LLMServer,
    signer: NoteSigner,
    short_traces: list[dict[str, Any]],
    policy: Policy,
) -> None:
    trace = short_traces[0]
    wire = _Wire()
    start = _size(sidecar)
    with Client(sidecar.address("alice"), policy=policy) as client:
        auditor = CoinAuditor(client)
        llm_client = wrap(_openai(llm, wire), recorder=client, coin_audit=auditor)
        response = llm_client.chat.completions.create(model=MODEL, messages=_messages(trace))
        assert auditor.wait(WAIT_S)

    # The caller's response is exactly what the server sent, offer included.
    (raw,) = wire.responses
    assert response.to_dict() == json.loads(raw)
    assert response.choices[0].message.content == trace["answer"]
    assert response.model_extra is not None and "tallystick_coin" in response.model_extra

    # The call is recorded first, then the head, challenge, evidence and verdict entries.
    entries = sidecar.entries(start)
    call, *audit = entries
    assert call.kind.value == "call" and call.body["request_id"] == response.id
    assert [entry.kind.value for entry in audit] == ["audit"] * len(audit)
    head, challenge, *parts, final = [entry.body for entry in audit]
    assert (head["coin"], challenge["coin"], final["coin"]) == ("head", "challenge", "verdict")
    assert head["call_request_id"] == response.id
    assert head["provider_vkey"] == signer.vkey
    assert parts and {part["coin"] for part in parts} == {"evidence"}

    # The head is the provider's commitment to this very response.
    offer = CoinOffer.from_response(json.loads(raw))
    assert offer is not None and _countersigned(head["head_note"], offer.head_note)
    committed = verify_head(
        offer.head_note,
        signer.verifier,
        answer=trace["answer"],
        prompt=prompt_text(_messages(trace)),
    )
    assert committed.request_id == response.id
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    assert committed.reasoning_tokens == response.usage.completion_tokens_details.reasoning_tokens

    # One outcome: a verdict that agrees with the log and re-verifies offline.
    (outcome,) = auditor.outcomes()
    assert outcome.call_request_id == response.id and outcome.error_code is None
    verdict = outcome.verdict
    assert isinstance(verdict, CoinVerdict)
    assert verdict.consistent, verdict.flagged
    assert verdict.verdict_entry_index == start + len(entries) - 1
    assert final["consistent"] is True and final["challenge_entry"] == start + 2
    assert verify_evidence(verdict.evidence, provider_key=signer.verifier).consistent


def test_an_async_client_is_audited_too(
    sidecar: Sidecar, llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    trace = short_traces[3]
    start = _size(sidecar)
    with _wrapped_openai(sidecar, llm, policy, agent="bob", make_client=_async_openai) as (
        llm_client,
        auditor,
    ):

        async def call() -> Any:
            return await llm_client.chat.completions.create(model=MODEL, messages=_messages(trace))

        response = asyncio.run(call())
        assert auditor.wait(WAIT_S)

    (outcome,) = auditor.outcomes()
    assert outcome.verdict is not None and outcome.verdict.consistent, outcome
    heads = [body for body in _audit_bodies(sidecar, start) if body["coin"] == "head"]
    assert [head["call_request_id"] for head in heads] == [response.id]


def test_a_deferred_recorder_audits_as_it_builds_the_record(
    sidecar: Sidecar, llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    trace = short_traces[4]
    messages = _messages(trace)
    start = _size(sidecar)
    with Client(sidecar.address("alice"), policy=policy) as client:
        auditor = CoinAuditor(client)
        with BackgroundRecorder(client) as recorder:
            llm_client = wrap(_openai(llm), recorder=recorder, coin_audit=auditor)
            response = llm_client.chat.completions.create(model=MODEL, messages=messages)
            messages.append({"role": "user", "content": "and now?"})  # after the call: not bound
        assert auditor.wait(WAIT_S)

    (outcome,) = auditor.outcomes()
    assert outcome.verdict is not None and outcome.verdict.consistent, outcome
    entries = sidecar.entries(start)
    (call,) = [entry.body for entry in entries if entry.kind.value == "call"]
    (head,) = [entry.body for entry in entries if entry.body.get("coin") == "head"]
    assert call["request_id"] == head["call_request_id"] == response.id


def test_audit_offer_async_audits_an_offer(
    sidecar: Sidecar,
    provider: ProviderServer,
    short_traces: list[dict[str, Any]],
    policy: Policy,
) -> None:
    trace = short_traces[1]
    prompt = prompt_text(_messages(trace))
    offer = _offer(provider, trace, "async-offer-1")

    async def run() -> CoinVerdict:
        async with AsyncClient(sidecar.address("carol"), policy=policy) as client:
            return await audit_offer_async(
                client, offer, prompt=prompt, answer=trace["answer"], call_request_id="call-9"
            )

    verdict = asyncio.run(run())
    assert verdict.consistent, verdict.flagged
    head = _head_of(sidecar, "call-9")
    assert _countersigned(head["head_note"], offer.head_note)
    assert "attestation" not in head


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_offers_attestation_is_logged_with_its_head(
    sidecar: Sidecar,
    provider: ProviderServer,
    short_traces: list[dict[str, Any]],
    policy: Policy,
    asynchronous: bool,
) -> None:
    trace = short_traces[5]
    quote = bytes(range(256)) * 20  # stands in for a TDX quote: recorded, never parsed
    name = "async" if asynchronous else "sync"
    offer = dataclasses.replace(
        _offer(provider, trace, f"attested-{name}"),
        attestation=Attestation("intel-tdx-quote", quote),
    )
    # The offer as a provider sends it: the attestation survives the wire format.
    offer = CoinOffer.from_json(json.dumps(offer.to_json()))
    audit = {
        "prompt": prompt_text(_messages(trace)),
        "answer": trace["answer"],
        "call_request_id": f"call-attested-{name}",
    }

    async def run() -> CoinVerdict:
        async with AsyncClient(sidecar.address("carol"), policy=policy) as client:
            return await audit_offer_async(client, offer, **audit)

    if asynchronous:
        verdict = asyncio.run(run())
    else:
        with Client(sidecar.address("carol"), policy=policy) as client:
            verdict = audit_offer(client, offer, **audit)

    assert verdict.consistent, verdict.flagged
    head = _head_of(sidecar, f"call-attested-{name}")
    assert head["attestation"] == {
        "format": "intel-tdx-quote",
        "sha256": hashlib.sha256(quote).hexdigest(),
    }


# -- a broken offer ------------------------------------------------------------------------------


def test_a_broken_offer_never_reaches_the_caller_nor_the_log(
    sidecar: Sidecar,
    broken_llm: LLMServer,
    short_traces: list[dict[str, Any]],
    policy: Policy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = short_traces[2]
    start = _size(sidecar)
    with (
        caplog.at_level(logging.WARNING, logger="tallystick.sdk.wrap"),
        _wrapped_openai(sidecar, broken_llm, policy) as (llm_client, auditor),
    ):
        response = llm_client.chat.completions.create(model=MODEL, messages=_messages(trace))
        assert auditor.wait(WAIT_S)

    assert response.choices[0].message.content == trace["answer"]
    assert response.model_extra is not None and "tallystick_coin" in response.model_extra
    assert auditor.outcomes() == [CoinAuditOutcome(response.id, None, "coin.answer_mismatch")]
    (call,) = sidecar.entries(start)  # the call, and nothing for the bad head
    assert call.kind.value == "call" and call.body["request_id"] == response.id
    failures = [
        record
        for record in caplog.records
        if record.name == "tallystick.sdk.wrap" and "coin.answer_mismatch" in record.getMessage()
    ]
    assert len(failures) == 1 and response.id in failures[0].getMessage()


def test_a_malformed_offer_is_logged_and_the_call_recorded(
    sidecar: Sidecar, policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider whose offer member is not an offer: logged with its code, nothing audited."""
    served = {
        "id": "chatcmpl-malformed",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "4"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        "tallystick_coin": {"format": "tallystick.coin.offer/v1", "head_note": "x"},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=served)

    start = _size(sidecar)
    with (
        caplog.at_level(logging.WARNING, logger="tallystick.sdk.wrap"),
        Client(sidecar.address("alice"), policy=policy) as client,
    ):
        auditor = CoinAuditor(client)
        llm_client = wrap(
            openai.OpenAI(
                base_url="http://provider.invalid/v1",
                api_key="test",
                max_retries=0,
                http_client=httpx.Client(transport=httpx.MockTransport(handler)),
            ),
            recorder=client,
            coin_audit=auditor,
        )
        response = llm_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "2+2?"}]
        )
        assert auditor.wait(WAIT_S)

    assert response.to_dict() == served
    assert auditor.outcomes() == [
        CoinAuditOutcome("chatcmpl-malformed", None, "coin.offer_malformed")
    ]
    assert [entry.kind.value for entry in sidecar.entries(start)] == ["call"]
    assert any("coin.offer_malformed" in record.getMessage() for record in caplog.records)


# -- the auditor's bounds, without a daemon ----------------------------------------------------


class _BlockingSidecar:
    """Stands in for the sidecar Client: every BeginAudit waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.begun: list[str | None] = []

    def begin_coin_audit(self, **fields: Any) -> Any:
        self.begun.append(fields["call_request_id"])
        self.release.wait(WAIT_S)
        raise _Refused


class _Refused(Exception):
    pass


def test_audits_beyond_the_bound_are_skipped_and_logged(
    caplog: pytest.LogCaptureFixture, signer: NoteSigner
) -> None:
    sidecar = _BlockingSidecar()
    auditor = CoinAuditor(sidecar, max_in_flight=1)  # type: ignore[arg-type]
    offer = {
        "format": "tallystick.coin.offer/v1",
        "head_note": "not a note",
        "provider_vkey": signer.vkey,
        "sketch": "",
        "openings_url": "http://127.0.0.1:9/coin/v1/open",
    }
    fields: dict[str, Any] = {"prompt": "p", "answer": "a", "response_id": "r"}
    with caplog.at_level(logging.WARNING, logger="tallystick.sdk.wrap"):
        assert auditor.submit(offer, call_request_id="first", **fields)
        assert not auditor.submit(offer, call_request_id="second", **fields)
        assert auditor.in_flight == 1
        assert not auditor.wait(0.05)
        sidecar.release.set()
        assert auditor.wait(WAIT_S)

    outcomes = auditor.outcomes()
    assert outcomes[0] == CoinAuditOutcome("second", None, "sdk.coin_audits_busy")
    assert outcomes[1].call_request_id == "first"
    # The head did not parse, so the provider's request id fell back to the response id and
    # the sidecar was asked anyway: its refusal (here a bug-like exception) is logged too.
    assert outcomes[1].error_code == "sdk.coin_audit_failed"
    assert sidecar.begun == ["first"]
    assert any("sdk.coin_audits_busy" in record.getMessage() for record in caplog.records)


class _AsyncSidecar:
    """Has the asyncio client's shape: its calls are coroutines."""

    async def begin_coin_audit(self, **fields: Any) -> Any:
        raise AssertionError("never called")


def test_an_async_sidecar_client_is_refused() -> None:
    with pytest.raises(TypeError, match="AsyncClient"):
        CoinAuditor(_AsyncSidecar())  # type: ignore[arg-type]


# -- streams ---------------------------------------------------------------------------------------


def _text(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def _comparable(chunks: list[Any]) -> list[dict[str, Any]]:
    """The chunks' bodies less what differs from one call to the next: the id, the time, and
    the offer's own bytes (its head names the call)."""
    bodies = []
    for chunk in chunks:
        body = chunk.to_dict()
        assert body.pop("id") == chunks[0].id
        body.pop("created")
        if "tallystick_coin" in body:
            body["tallystick_coin"] = "an offer"
        bodies.append(body)
    return bodies


def test_a_streamed_call_is_recorded_then_audited(
    sidecar: Sidecar,
    llm: LLMServer,
    signer: NoteSigner,
    short_traces: list[dict[str, Any]],
    policy: Policy,
) -> None:
    """The caller did not ask for usage: the offer comes in the usage chunk the wrapper hides."""
    trace = short_traces[0]
    start = _size(sidecar)
    with _wrapped_openai(sidecar, llm, policy) as (llm_client, auditor):
        stream = llm_client.chat.completions.create(
            model=MODEL, messages=_messages(trace), stream=True
        )
        chunks = list(stream)
        assert auditor.wait(WAIT_S)

    request_id = chunks[0].id
    assert _text(chunks) == trace["answer"]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)  # usage chunk hidden

    # The call is recorded first, then the head, challenge, evidence and verdict entries.
    entries = sidecar.entries(start)
    call, *audit = entries
    assert call.kind.value == "call" and call.body["request_id"] == request_id
    assert [entry.kind.value for entry in audit] == ["audit"] * len(audit)
    head, challenge, *parts, final = [entry.body for entry in audit]
    assert (head["coin"], challenge["coin"], final["coin"]) == ("head", "challenge", "verdict")
    assert head["call_request_id"] == request_id
    assert parts and {part["coin"] for part in parts} == {"evidence"}

    # The head commits to this call's streamed answer and to the reasoning it billed.
    committed = verify_head(
        head["head_note"],
        signer.verifier,
        answer=_text(chunks),
        prompt=prompt_text(_messages(trace)),
    )
    assert committed.request_id == request_id
    assert committed.reasoning_tokens == call.body["usage"]["reasoning_output_tokens"]

    (outcome,) = auditor.outcomes()
    assert outcome.call_request_id == request_id and outcome.error_code is None
    verdict = outcome.verdict
    assert verdict is not None and verdict.consistent, verdict
    assert verdict.verdict_entry_index == start + len(entries) - 1
    assert final["consistent"] is True
    assert verify_evidence(verdict.evidence, provider_key=signer.verifier).consistent


def test_a_streamed_call_shows_the_caller_what_it_would_see_unwrapped(
    sidecar: Sidecar, llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    """The caller asked for usage: the offer rides the usage chunk, and the caller sees it."""
    trace = short_traces[1]
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": _messages(trace),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    plain = list(_openai(llm).chat.completions.create(**kwargs))
    with _wrapped_openai(sidecar, llm, policy, agent="bob") as (llm_client, auditor):
        seen = list(llm_client.chat.completions.create(**kwargs))
        assert auditor.wait(WAIT_S)

    assert _comparable(seen) == _comparable(plain)
    last = seen[-1]
    assert last.choices == [] and last.usage is not None
    assert last.model_extra is not None and "tallystick_coin" in last.model_extra
    (outcome,) = auditor.outcomes()
    assert outcome.call_request_id == last.id
    assert outcome.verdict is not None and outcome.verdict.consistent, outcome
    # The head the sidecar logged is the offer the caller saw, countersigned.
    offer = CoinOffer.from_json(last.model_extra["tallystick_coin"])
    heads = [body for body in _audit_bodies(sidecar, 0) if body.get("call_request_id") == last.id]
    assert [head["coin"] for head in heads][:1] == ["head"]
    assert _countersigned(heads[0]["head_note"], offer.head_note)


def test_an_async_stream_is_audited_too(
    sidecar: Sidecar, llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    trace = short_traces[3]
    start = _size(sidecar)
    with _wrapped_openai(sidecar, llm, policy, agent="carol", make_client=_async_openai) as (
        llm_client,
        auditor,
    ):

        async def call() -> list[Any]:
            stream = await llm_client.chat.completions.create(
                model=MODEL, messages=_messages(trace), stream=True
            )
            return [chunk async for chunk in stream]

        chunks = asyncio.run(call())
        assert auditor.wait(WAIT_S)

    assert _text(chunks) == trace["answer"]
    (outcome,) = auditor.outcomes()
    assert outcome.call_request_id == chunks[0].id
    assert outcome.verdict is not None and outcome.verdict.consistent, outcome
    heads = [body for body in _audit_bodies(sidecar, start) if body["coin"] == "head"]
    assert [head["call_request_id"] for head in heads] == [chunks[0].id]


def test_a_deferred_recorder_audits_a_stream_with_the_prompt_as_sent(
    sidecar: Sidecar, llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    trace = short_traces[4]
    messages = _messages(trace)
    start = _size(sidecar)
    with Client(sidecar.address("alice"), policy=policy) as client:
        auditor = CoinAuditor(client)
        with BackgroundRecorder(client) as recorder:
            llm_client = wrap(_openai(llm), recorder=recorder, coin_audit=auditor)
            chunks = []
            for chunk in llm_client.chat.completions.create(
                model=MODEL, messages=messages, stream=True
            ):
                chunks.append(chunk)
                if len(messages) == 1:  # while it streams: not what was sent
                    messages.append({"role": "assistant", "content": "thinking..."})
        assert auditor.wait(WAIT_S)

    (outcome,) = auditor.outcomes()
    assert outcome.verdict is not None and outcome.verdict.consistent, outcome
    entries = sidecar.entries(start)
    (call,) = [entry.body for entry in entries if entry.kind.value == "call"]
    (head,) = [entry.body for entry in entries if entry.body.get("coin") == "head"]
    assert call["request_id"] == head["call_request_id"] == chunks[0].id


def test_a_stream_closed_early_is_not_audited(
    sidecar: Sidecar,
    llm: LLMServer,
    short_traces: list[dict[str, Any]],
    policy: Policy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller stops at the chunk that carries the offer, before the stream's end."""
    trace = short_traces[5]
    start = _size(sidecar)
    with (
        caplog.at_level(logging.WARNING, logger="tallystick.sdk.wrap"),
        _wrapped_openai(sidecar, llm, policy) as (llm_client, auditor),
    ):
        with llm_client.chat.completions.create(
            model=MODEL,
            messages=_messages(trace),
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            for chunk in stream:
                if chunk.model_extra and "tallystick_coin" in chunk.model_extra:
                    break
            else:
                pytest.fail("no chunk carried an offer")
        assert auditor.wait(WAIT_S)

    assert auditor.outcomes() == [CoinAuditOutcome(chunk.id, None, "sdk.coin_not_auditable")]
    (call,) = sidecar.entries(start)  # recorded with what it said, and nothing audited
    assert call.kind.value == "call" and call.body["request_id"] == chunk.id
    assert any(
        "sdk.coin_not_auditable" in record.getMessage() and chunk.id in record.getMessage()
        for record in caplog.records
    )


def test_a_stream_without_an_offer_starts_no_audit(
    sidecar: Sidecar, plain_llm: LLMServer, short_traces: list[dict[str, Any]], policy: Policy
) -> None:
    trace = short_traces[0]
    start = _size(sidecar)
    with _wrapped_openai(sidecar, plain_llm, policy) as (llm_client, auditor):
        chunks = list(
            llm_client.chat.completions.create(model=MODEL, messages=_messages(trace), stream=True)
        )
        assert auditor.in_flight == 0

    assert _text(chunks) == trace["answer"]
    assert auditor.outcomes() == []
    (call,) = sidecar.entries(start)
    assert call.kind.value == "call" and call.body["request_id"] == chunks[0].id


def test_a_streamed_offer_with_a_bad_head_is_logged_and_the_caller_unaffected(
    sidecar: Sidecar,
    broken_llm: LLMServer,
    short_traces: list[dict[str, Any]],
    policy: Policy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = short_traces[2]
    start = _size(sidecar)
    with (
        caplog.at_level(logging.WARNING, logger="tallystick.sdk.wrap"),
        _wrapped_openai(sidecar, broken_llm, policy) as (llm_client, auditor),
    ):
        chunks = list(
            llm_client.chat.completions.create(model=MODEL, messages=_messages(trace), stream=True)
        )
        assert auditor.wait(WAIT_S)

    request_id = chunks[0].id
    assert _text(chunks) == trace["answer"]
    assert auditor.outcomes() == [CoinAuditOutcome(request_id, None, "coin.answer_mismatch")]
    (call,) = sidecar.entries(start)  # the call, and nothing for the bad head
    assert call.kind.value == "call" and call.body["request_id"] == request_id
    assert any(
        "coin.answer_mismatch" in record.getMessage() and request_id in record.getMessage()
        for record in caplog.records
    )


_OFFER = {
    "format": "tallystick.coin.offer/v1",
    "head_note": "never parsed",
    "provider_vkey": "never parsed",
    "sketch": "",
    "openings_url": "http://provider.invalid/coin/v1/open",
}


@pytest.mark.parametrize(
    "deltas",
    [
        pytest.param([(0, {"content": "4"}), (1, {"content": "four"})], id="two-choices"),
        pytest.param(
            [(0, {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}]})],
            id="no-text",
        ),
    ],
)
def test_a_stream_without_a_single_text_answer_is_not_audited(
    sidecar: Sidecar, policy: Policy, deltas: list[tuple[int, dict[str, Any]]]
) -> None:
    chunk = {"id": "chatcmpl-sse", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    events = [
        {**chunk, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        for index, delta in deltas
    ]
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    events.append({**chunk, "choices": [], "usage": usage, "tallystick_coin": _OFFER})
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body.encode()
        )

    start = _size(sidecar)
    with Client(sidecar.address("alice"), policy=policy) as client:
        auditor = CoinAuditor(client)
        llm_client = wrap(
            openai.OpenAI(
                base_url="http://provider.invalid/v1",
                api_key="test",
                max_retries=0,
                http_client=httpx.Client(transport=httpx.MockTransport(handler)),
            ),
            recorder=client,
            coin_audit=auditor,
        )
        seen = list(
            llm_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "2+2?"}], n=2, stream=True
            )
        )
        assert auditor.wait(WAIT_S)

    assert len(seen) == len(deltas)  # the usage chunk, offer and all, hidden as ever
    assert auditor.outcomes() == [CoinAuditOutcome("chatcmpl-sse", None, "sdk.coin_not_auditable")]
    assert [entry.kind.value for entry in sidecar.entries(start)] == ["call"]
