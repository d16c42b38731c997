"""The provider server over real loopback HTTP: commit, audit through ``HttpOpener``, and every
refusal with its status and code. Real engine, real dev traces."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.judge import Auditor
from tallystick.daemon.coin.provider_server import (
    COMMIT_PATH,
    MAX_BODY_BYTES,
    MAX_OPEN_INDICES,
    OPEN_PATH,
    ProviderServer,
)
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier import coin
from tallystick.verifier._cli import EXIT_USAGE, main
from tallystick.verifier._internal.coin_wire import (
    OFFER_FORMAT,
    CoinOffer,
    HttpOpener,
    OpeningsUnavailable,
    prompt_text,
)
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey, save_private_key

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> Iterator[ProviderServer]:
    with ProviderServer(engine, tokenizer, signer) as running:
        yield running


@pytest.fixture(scope="module")
def auditor(engine: EmbeddingEngine, tokenizer: Tokenizer) -> Auditor:
    return Auditor(engine, tokenizer)


def _post(
    url: str,
    path: str,
    body: bytes | dict[str, Any] | list[Any],
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """One request on a fresh connection: status, JSON body, the response."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    try:
        connection.request(
            method,
            path,
            body=raw,
            headers={"Content-Type": "application/json"} | (headers or {}),
        )
        response = connection.getresponse()
        document = json.loads(response.read())
        return response.status, document, response
    finally:
        connection.close()


def _commit_body(trace: dict[str, Any], request_id: str, **changes: Any) -> dict[str, Any]:
    body = {
        "request_id": request_id,
        "model": "sky-t1-32b",
        "prompt": prompt_text([{"role": "user", "content": trace["prompt"]}]),
        "reasoning": trace["reasoning"],
        "answer": trace["answer"],
        "reported_usage": None,
    }
    body.update(changes)
    return body


def _commit(server: ProviderServer, trace: dict[str, Any], request_id: str) -> CoinOffer:
    status, document, _ = _post(server.url, COMMIT_PATH, _commit_body(trace, request_id))
    assert status == 200, document
    assert set(document) == {"offer"}
    return CoinOffer.from_json(document["offer"])


def _open(
    offer: CoinOffer, request_id: str, indices: Any
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """POST an open to the offer's ``openings_url`` (capability included)."""
    target = urlsplit(offer.openings_url)
    base = f"http://{target.netloc}"
    return _post(
        base, f"{target.path}?{target.query}", {"request_id": request_id, "indices": indices}
    )


def _commit_raw(server: ProviderServer, body: dict[str, Any]) -> CoinOffer:
    status, document, _ = _post(server.url, COMMIT_PATH, body)
    assert status == 200, document
    return CoinOffer.from_json(document["offer"])


def _error(document: dict[str, Any]) -> str:
    assert set(document) == {"error"} and set(document["error"]) == {"code", "message"}
    code: str = document["error"]["code"]
    return code


# -- the honest flow --------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 3], ids=["math", "safety"])
def test_an_honest_trace_committed_over_http_passes_the_audit(
    server: ProviderServer,
    auditor: Auditor,
    signer: NoteSigner,
    short_traces: list[dict[str, Any]],
    which: int,
) -> None:
    trace = short_traces[which]
    request_id = f"honest-{which}"
    offer = _commit(server, trace, request_id)
    url, _, capability = offer.openings_url.partition("?c=")
    assert url == server.open_url == f"{server.url}{OPEN_PATH}"
    assert len(capability) >= 22
    assert offer.provider_vkey == signer.vkey

    outcome = auditor.audit(
        head_note=offer.head_note,
        provider_vkey=offer.provider_vkey,
        sketch=offer.sketch,
        opener=HttpOpener(offer, request_id),
        prompt=trace["prompt"],
        answer=trace["answer"],
        domain=trace["domain"],
    )

    assert outcome.error_code is None and outcome.passed, outcome
    assert outcome.evidence is not None
    verdict = coin.verify_evidence(outcome.evidence.to_json(), provider_key=signer.verifier)
    assert verdict.consistent
    assert verdict.reasoning_tokens == outcome.reported_tokens


def test_the_offer_is_a_strict_round_tripping_json_object(
    server: ProviderServer, short_traces: list[dict[str, Any]]
) -> None:
    status, document, response = _post(
        server.url, COMMIT_PATH, _commit_body(short_traces[1], "offer-json")
    )
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Cache-Control") == "no-store"
    raw = document["offer"]
    assert raw["format"] == OFFER_FORMAT
    offer = CoinOffer.from_json(json.dumps(raw))
    assert offer.to_json() == raw
    head = coin.verify_head(
        offer.head_note,
        server.signer.verifier,
        answer=short_traces[1]["answer"],
        prompt=short_traces[1]["prompt"],
    )
    assert head.request_id == "offer-json"
    assert head.sketch_sha256 == coin.sketch_sha256(offer.sketch)


def test_reported_usage_is_signed_into_the_head(
    server: ProviderServer, short_traces: list[dict[str, Any]], tokenizer: Tokenizer
) -> None:
    trace = short_traces[2]
    count = len(tokenizer.encode(trace["reasoning"]))
    usage = {"input": 120, "output": count + 40, "reasoning": count, "cached": 0}
    status, document, _ = _post(
        server.url, COMMIT_PATH, _commit_body(trace, "with-usage", reported_usage=usage)
    )
    assert status == 200
    head = coin.verify_head(
        document["offer"]["head_note"], server.signer.verifier, answer=trace["answer"]
    )
    assert head.reported_usage == coin.ReportedUsage(120, count + 40, count, 0)


def test_an_open_can_be_repeated_but_not_widened(
    server: ProviderServer, short_traces: list[dict[str, Any]]
) -> None:
    offer = _commit(server, short_traces[4], "open-once")
    first = _open(offer, "open-once", [0, 5, 9])
    again = _open(offer, "open-once", [0, 5, 9])
    reordered = _open(offer, "open-once", [9, 0, 5])
    assert first[0] == again[0] == reordered[0] == 200
    assert first[1] == again[1]
    assert [item["index"] for item in first[1]["openings"]] == [0, 5, 9]
    assert [item["index"] for item in reordered[1]["openings"]] == [9, 0, 5]

    for wider in ([0, 5, 10], [0, 5], []):
        status, document, _ = _open(offer, "open-once", wider)
        assert (status, _error(document)) == (409, "coin.commitment_opened")


# -- refusals ---------------------------------------------------------------------------------

SECRET = "the-hidden-reasoning-must-never-come-back"
#: In a parametrized commit body: leave this member out.
MISSING = object()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"{not json", "coin.request_malformed", id="not-json"),
        pytest.param(b'{"request_id": "a", "request_id": "b"}', "coin.request_malformed", id="dup"),
        pytest.param(b"\xff\xfe", "coin.request_malformed", id="not-utf8"),
        pytest.param([SECRET], "coin.request_malformed", id="array"),
        pytest.param({"answer": MISSING}, "coin.request_malformed", id="missing"),
        pytest.param({"note": 1}, "coin.request_malformed", id="extra"),
        pytest.param({"reasoning": 7}, "coin.request_malformed", id="reasoning-int"),
        pytest.param({"prompt": None}, "coin.request_malformed", id="prompt-null"),
        pytest.param({"request_id": ""}, "coin.request_malformed", id="request-id-empty"),
        pytest.param({"model": ["m"]}, "coin.request_malformed", id="model-list"),
        pytest.param({"reported_usage": 5}, "coin.request_malformed", id="usage-int"),
        pytest.param(
            {"reported_usage": {"input": 1, "output": 2, "reasoning": 3}},
            "coin.request_malformed",
            id="usage-missing-member",
        ),
        pytest.param(
            {"reported_usage": {"input": 1, "output": 2, "reasoning": True, "cached": 0}},
            "coin.request_malformed",
            id="usage-bool",
        ),
        pytest.param(
            {"reported_usage": {"input": -1, "output": 2, "reasoning": 3, "cached": 0}},
            "coin.head_malformed",
            id="usage-negative",
        ),
        pytest.param({"request_id": "has space"}, "coin.head_malformed", id="request-id-space"),
        pytest.param({"model": "m\u00e9"}, "coin.head_malformed", id="model-non-ascii"),
    ],
)
def test_bad_commit_bodies_are_400_with_a_code_and_no_reasoning(
    server: ProviderServer, body: Any, code: str
) -> None:
    payload: Any = body
    if isinstance(body, dict):
        payload = _commit_body({"prompt": "p", "reasoning": SECRET, "answer": "a"}, "bad")
        payload.update(body)
        payload = {name: value for name, value in payload.items() if value is not MISSING}
    status, document, _ = _post(server.url, COMMIT_PATH, payload)
    assert (status, _error(document)) == (400, code)
    assert SECRET not in json.dumps(document)
    assert "Traceback" not in json.dumps(document)


def test_a_second_commit_of_a_request_id_is_409(
    server: ProviderServer, short_traces: list[dict[str, Any]]
) -> None:
    _commit(server, short_traces[5], "twice")
    status, document, _ = _post(server.url, COMMIT_PATH, _commit_body(short_traces[5], "twice"))
    assert (status, _error(document)) == (409, "coin.commitment_exists")
    assert short_traces[5]["reasoning"][:40] not in json.dumps(document)


def test_opening_an_unknown_request_id_is_404(server: ProviderServer) -> None:
    status, document, _ = _post(server.url, OPEN_PATH, {"request_id": "never", "indices": [0]})
    assert (status, _error(document)) == (404, "coin.commitment_unknown")
    with pytest.raises(OpeningsUnavailable) as caught:
        HttpOpener(server.open_url, "never")([0])
    assert (caught.value.status, caught.value.remote_code) == (404, "coin.commitment_unknown")


def test_an_open_without_the_offers_capability_is_404_like_an_unknown_id(
    server: ProviderServer, short_traces: list[dict[str, Any]]
) -> None:
    offer = _commit(server, short_traces[1], "capability")
    capability = offer.openings_url.partition("?c=")[2]
    body = {"request_id": "capability", "indices": [0]}
    for path in (
        OPEN_PATH,
        f"{OPEN_PATH}?c=",
        f"{OPEN_PATH}?c={capability[:-1]}{'B' if capability[-1] != 'B' else 'C'}",
        f"{OPEN_PATH}?c={capability}&c={capability}",
    ):
        status, document, _ = _post(server.url, path, body)
        assert (status, _error(document)) == (404, "coin.commitment_unknown"), path
    # None of those fixed the open: the offer's holder still gets any set.
    assert _open(offer, "capability", [1, 2])[0] == 200


@pytest.mark.parametrize(
    ("indices", "status", "code"),
    [
        pytest.param([0, 10**6], 400, "coin.index_out_of_range", id="past-the-end"),
        pytest.param([-1], 400, "coin.index_out_of_range", id="negative"),
        pytest.param([1, 1], 400, "coin.request_malformed", id="repeated"),
        pytest.param([True], 400, "coin.request_malformed", id="bool"),
        pytest.param(["0"], 400, "coin.request_malformed", id="string"),
        pytest.param(0, 400, "coin.request_malformed", id="not-a-list"),
        pytest.param(
            list(range(MAX_OPEN_INDICES + 1)), 400, "coin.too_many_indices", id="too-many"
        ),
    ],
)
def test_bad_indices_are_400_and_do_not_fix_the_open(
    server: ProviderServer,
    short_traces: list[dict[str, Any]],
    indices: Any,
    status: int,
    code: str,
) -> None:
    request_id = f"bad-indices-{uuid.uuid4().hex}"
    offer = _commit(server, short_traces[0], request_id)
    got, document, _ = _open(offer, request_id, indices)
    assert (got, _error(document)) == (status, code)
    # The refused open fixed nothing: a valid one still answers.
    assert _open(offer, request_id, [0])[0] == 200


def test_an_oversized_body_is_413_before_it_is_read(server: ProviderServer) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        connection.putrequest("POST", COMMIT_PATH)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders()
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, _error(document)) == (413, "coin.body_too_large")
    assert response.getheader("Connection") == "close"


def test_reasoning_over_the_token_limit_is_413(
    server: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tallystick.daemon.coin.provider_server as module

    monkeypatch.setattr(module, "MAX_REASONING_TOKENS", 5)
    body = _commit_body(
        {"prompt": "p", "reasoning": "one two three four five six", "answer": "a"}, "long"
    )
    status, document, _ = _post(server.url, COMMIT_PATH, body)
    assert (status, _error(document)) == (413, "coin.reasoning_too_long")


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        pytest.param("GET", OPEN_PATH, {}, 405, "coin.method_not_allowed", id="get"),
        pytest.param("DELETE", COMMIT_PATH, {}, 405, "coin.method_not_allowed", id="delete"),
        pytest.param("POST", "/coin/v1/other", {}, 404, "coin.not_found", id="path"),
        pytest.param("GET", "/", {}, 404, "coin.not_found", id="root"),
        pytest.param(
            "POST",
            OPEN_PATH,
            {"Content-Type": "text/plain"},
            415,
            "coin.unsupported_media_type",
            id="media-type",
        ),
        pytest.param(
            "POST",
            OPEN_PATH,
            {"Content-Length": "12abc"},
            400,
            "coin.request_malformed",
            id="bad-length",
        ),
        pytest.param("OPTIONS", OPEN_PATH, {}, 501, "coin.http_error", id="unknown-method"),
    ],
)
def test_http_level_refusals_are_json_with_a_code(
    server: ProviderServer,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    got, document, response = _post(server.url, path, b"{}", method=method, headers=headers)
    assert (got, _error(document)) == (status, code)
    if status == 405:
        assert response.getheader("Allow") == "POST"


def test_a_body_without_content_length_is_411(server: ProviderServer) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        connection.putrequest("POST", OPEN_PATH)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"2\r\n{}\r\n0\r\n\r\n")
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, _error(document)) == (411, "coin.length_required")


def test_keep_alive_serves_several_requests_on_one_connection(server: ProviderServer) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        for _ in range(3):
            body = json.dumps({"request_id": "never", "indices": []})
            connection.request("POST", OPEN_PATH, body=body)
            response = connection.getresponse()
            assert response.status == 404
            response.read()
    finally:
        connection.close()


class _ExplodingTokenizer:
    """A tokenizer whose encode fails with the text in its message, as a buggy one might."""

    id = "cl100k_base@tiktoken"

    def encode(self, text: str) -> list[int]:
        raise RuntimeError(f"cannot encode {text!r}")

    def token_text(self, token_id: int) -> str:
        raise RuntimeError("unused")

    def token_bytes(self, token_id: int) -> bytes:
        raise RuntimeError("unused")


def test_an_internal_error_is_500_without_a_traceback_or_the_text(
    engine: EmbeddingEngine, signer: NoteSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tallystick.daemon.coin.provider_server")
    with ProviderServer(engine, _ExplodingTokenizer(), signer) as broken:  # type: ignore[arg-type]
        payload = _commit_body({"prompt": "p", "reasoning": SECRET, "answer": "a"}, "boom")
        status, document, _ = _post(broken.url, COMMIT_PATH, payload)
    assert (status, _error(document)) == (500, "coin.internal")
    assert document["error"]["message"] == "internal error"
    assert SECRET not in caplog.text and "Traceback" not in caplog.text


def test_the_log_never_holds_reasoning_prompt_or_answer(
    server: ProviderServer, short_traces: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tallystick.daemon.coin.provider_server")
    trace = short_traces[3]
    offer = _commit(server, trace, "logged")
    assert _open(offer, "logged", [0, 1])[0] == 200
    assert "logged" in caplog.text  # the request id and counts are logged
    assert OPEN_PATH in caplog.text  # and the requests, without their query
    assert offer.openings_url.partition("?c=")[2] not in caplog.text
    for text in (trace["reasoning"], trace["prompt"], trace["answer"]):
        assert text[:30] not in caplog.text


# -- bounds -----------------------------------------------------------------------------------


def test_commitments_are_evicted_least_recently_used_first(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    def body(request_id: str) -> dict[str, Any]:
        trace = {"prompt": "p", "reasoning": f"reasoning of {request_id}", "answer": "a"}
        return _commit_body(trace, request_id)

    with ProviderServer(engine, tokenizer, signer, max_commitments=2) as small:
        offers = {request_id: _commit_raw(small, body(request_id)) for request_id in ("a", "b")}
        # Opening "a" makes "b" the least recently used.
        assert _open(offers["a"], "a", [0])[0] == 200
        offers["c"] = _commit_raw(small, body("c"))
        assert small.held == 2
        status, document, _ = _open(offers["b"], "b", [0])
        assert (status, _error(document)) == (404, "coin.commitment_unknown")
        for request_id in ("a", "c"):
            assert _open(offers[request_id], request_id, [0])[0] == 200
        # An evicted request id may be committed again.
        assert _post(small.url, COMMIT_PATH, body("b"))[0] == 200


def test_commitments_are_also_bounded_by_held_tokens(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    words = " ".join(["word"] * 50)
    with ProviderServer(engine, tokenizer, signer, max_held_tokens=80) as small:
        for request_id in ("x", "y"):
            body = _commit_body({"prompt": "p", "reasoning": words, "answer": "a"}, request_id)
            assert _post(small.url, COMMIT_PATH, body)[0] == 200
        assert small.held == 1


def test_a_public_url_names_the_openings_url(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    server = ProviderServer(
        engine, tokenizer, signer, public_url="https://coin.provider.example/base/"
    )
    server.close()
    assert server.open_url == "https://coin.provider.example/base/coin/v1/open"
    with pytest.raises(MalformedInput) as caught:
        ProviderServer(engine, tokenizer, signer, public_url="ftp://x.example")
    assert caught.value.code == "coin.offer_malformed"


# -- the CLI ----------------------------------------------------------------------------------


def _key_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "provider.pem"
    save_private_key(path, PrivateKey.generate())
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_provider_cli_refuses_a_key_that_others_may_access(
    tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _key_file(tmp_path, mode)
    with pytest.raises(SystemExit) as exited:
        main(["audit", "provider", "--key", str(path), "--listen", "127.0.0.1:0"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "group or others" in err and f"{mode:04o}" in err and "chmod 600" in err


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        pytest.param(b"not a key", [], "key.invalid", id="garbage"),
        pytest.param(b"PRIVATE+KEY+x+00000000+AAAA", [], "note.bad_skey", id="bad-skey"),
        pytest.param(None, ["--listen", "nohost"], "--listen", id="bad-listen"),
        pytest.param(None, ["--listen", "127.0.0.1:70000"], "--listen", id="bad-port"),
        pytest.param(None, ["--listen", "0.0.0.0:8790"], "--public-url", id="wildcard"),
        pytest.param(None, ["--public-url", "ftp://x.example"], "coin.offer_malformed", id="url"),
    ],
)
def test_provider_cli_refuses_bad_keys_and_options(
    tmp_path: Path,
    content: bytes | None,
    extra: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _key_file(tmp_path, 0o600)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        main(["audit", "provider", "--key", str(path), *extra])
    assert exited.value.code == EXIT_USAGE
    assert needle in capsys.readouterr().err


def test_provider_cli_serves_until_sigterm(
    tmp_path: Path, coin_cache_dir: Path, short_traces: list[dict[str, Any]]
) -> None:
    key = PrivateKey.generate()
    signer = NoteSigner("provider.cli.test/coin", key)
    skey_path = tmp_path / "provider.skey"
    skey_path.write_text(_skey(signer.name, key) + "\n")
    skey_path.chmod(0o600)
    env = os.environ | {
        "XDG_CACHE_HOME": str(coin_cache_dir.parent / "xdg"),
        "TALLYSTICK_COIN_DEVICE": "cpu",
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tallystick")),
            *("audit", "provider", "--key", str(skey_path), "--listen", "127.0.0.1:0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        vkey_line = process.stdout.readline().strip()
        url_line = process.stdout.readline().strip()
        assert vkey_line == f"vkey {signer.vkey}", process.stderr.read() if process.stderr else ""
        assert url_line.startswith("listening http://127.0.0.1:")
        url = url_line.removeprefix("listening ")
        status, document, _ = _post(url, COMMIT_PATH, _commit_body(short_traces[0], "via-cli"))
        assert status == 200
        assert document["offer"]["provider_vkey"] == signer.vkey
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _skey(name: str, key: PrivateKey) -> str:
    """The C2SP ``PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>`` of ``key``."""
    import base64

    verifier = NoteSigner(name, key).verifier
    encoded = base64.b64encode(b"\x01" + key.seed()).decode()
    return f"PRIVATE+KEY+{name}+{verifier.key_id:08x}+{encoded}"
