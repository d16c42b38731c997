"""The CoIn wire format (offers, openings, the openings answer, the prompt) and ``HttpOpener``
against real loopback HTTP servers. No embedding engine."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tallystick.verifier import coin
from tallystick.verifier._internal.coin_wire import (
    MAX_ATTESTATION_BYTES,
    MAX_SKETCH_BYTES,
    MAX_URL_CHARS,
    OFFER_FORMAT,
    OFFER_MEMBER,
    Attestation,
    CoinOffer,
    HttpOpener,
    OpeningsUnavailable,
    opening_from_json,
    opening_to_json,
    openings_from_json,
    openings_to_json,
    prompt_text,
)
from tallystick.verifier.errors import MalformedInput, TallystickError, UnsupportedVersion
from vectors import generate_coin as golden

VECTORS = Path(__file__).resolve().parent / "vectors" / "coin"
URL = "https://provider.example/coin/v1/open"
SKETCH = bytes(range(24))
KEY = bytes(range(32))
QUOTE = bytes(range(256)) * 20  # stands in for a ~5 KB TDX quote: Tallystick never parses it


@pytest.fixture(scope="module")
def trace() -> golden.Synthetic:
    return golden.commit(golden.TOKEN_IDS)


@pytest.fixture(scope="module")
def offer(trace: golden.Synthetic) -> CoinOffer:
    return CoinOffer(
        head_note=trace.head_note,
        provider_vkey=golden.PROVIDER.vkey,
        sketch=SKETCH,
        openings_url=URL,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- openings ---------------------------------------------------------------------------------


def test_opening_json_is_the_evidence_encoding_of_the_golden_vectors() -> None:
    """One encoding: the openings in the checked-in evidence parse and re-encode byte for byte."""
    for name in ("evidence-consistent.json", "evidence-flagged.json"):
        for item in json.loads((VECTORS / name).read_text())["openings"]:
            assert opening_to_json(opening_from_json(item)) == item


def test_opening_json_round_trips_and_verifies(trace: golden.Synthetic) -> None:
    for opening in trace.open(range(10)):
        item = opening_to_json(opening)
        assert set(item) == {"index", "leaf", "salt", "token_id", "proof"}
        assert item["leaf"] == _b64(opening.leaf.to_bytes())
        parsed = opening_from_json(json.loads(json.dumps(item)))
        assert parsed == opening
        coin.verify_opening(trace.head, parsed)


_FP = st.binary(min_size=coin.EMBEDDING_DIM, max_size=coin.EMBEDDING_DIM).filter(
    lambda fp: b"\x80" not in fp
)
_UINT32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
_OPENINGS = st.builds(
    coin.Opening,
    index=_UINT32,
    leaf=st.builds(
        coin.Leaf,
        token_index=_UINT32,
        block_index=_UINT32,
        token_commitment=st.binary(min_size=32, max_size=32),
        block_fp=_FP,
        token_fp=_FP,
    ),
    salt=st.binary(max_size=32),
    token_id=_UINT32,
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=40).map(tuple),
)


@given(_OPENINGS)
def test_any_opening_round_trips_through_json_text(opening: coin.Opening) -> None:
    assert opening_from_json(json.loads(json.dumps(opening_to_json(opening)))) == opening


@given(st.lists(_OPENINGS, max_size=4), st.binary(max_size=64))
def test_the_openings_answer_round_trips(openings: list[coin.Opening], key: bytes) -> None:
    document = json.loads(json.dumps(openings_to_json(openings, key)))
    assert set(document) == {"openings", "sketch_key"}
    assert openings_from_json(document) == (openings, key)


def _opening_item(trace: golden.Synthetic) -> dict[str, Any]:
    return opening_to_json(trace.open([3])[0])


def _with(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(item: dict[str, Any]) -> Any:
        item.update(changes)
        return item

    return mutate


def _without(name: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(item: dict[str, Any]) -> Any:
        del item[name]
        return item

    return mutate


def _leaf_bytes(trace: golden.Synthetic, edit: Callable[[bytes], bytes]) -> Callable[..., Any]:
    return _with(leaf=_b64(edit(trace.leaves[3].to_bytes())))


OPENING_TWINS: dict[str, tuple[Callable[[golden.Synthetic], Callable[..., Any]], str]] = {
    "array": (lambda t: lambda item: [item], "coin.opening_malformed"),
    "missing-proof": (lambda t: _without("proof"), "coin.opening_malformed"),
    "extra-member": (lambda t: _with(note="x"), "coin.opening_malformed"),
    "index-bool": (lambda t: _with(index=True), "coin.opening_malformed"),
    "index-negative": (lambda t: _with(index=-1), "coin.opening_malformed"),
    "index-2^32": (lambda t: _with(index=1 << 32), "coin.opening_malformed"),
    "index-string": (lambda t: _with(index="3"), "coin.opening_malformed"),
    "token-id-float": (lambda t: _with(token_id=1.0), "coin.opening_malformed"),
    "leaf-not-string": (lambda t: _with(leaf=7), "coin.opening_malformed"),
    "leaf-not-base64": (lambda t: _with(leaf="not base64!"), "coin.opening_malformed"),
    "leaf-short": (lambda t: _leaf_bytes(t, lambda raw: raw[:-1]), "coin.leaf_malformed"),
    "leaf-minus-128": (
        lambda t: _leaf_bytes(t, lambda raw: raw[:-1] + b"\x80"),
        "coin.leaf_malformed",
    ),
    "leaf-version": (lambda t: _leaf_bytes(t, lambda raw: b"\x02" + raw[1:]), "coin.leaf_version"),
    "salt-unpadded": (lambda t: _with(salt=_b64(bytes(16)).rstrip("=")), "coin.opening_malformed"),
    "salt-urlsafe": (lambda t: _with(salt="-_" + _b64(bytes(15))[2:]), "coin.opening_malformed"),
    "proof-object": (lambda t: _with(proof={"0": _b64(bytes(32))}), "coin.opening_malformed"),
    "proof-node-int": (lambda t: _with(proof=[0]), "coin.opening_malformed"),
    "proof-node-noncanonical": (lambda t: _with(proof=["AB=="]), "coin.opening_malformed"),
}


@pytest.mark.parametrize(("make", "code"), list(OPENING_TWINS.values()), ids=list(OPENING_TWINS))
def test_malformed_openings_are_refused_with_their_code(
    trace: golden.Synthetic, make: Callable[[golden.Synthetic], Callable[..., Any]], code: str
) -> None:
    value = make(trace)(_opening_item(trace))
    with pytest.raises((MalformedInput, UnsupportedVersion)) as caught:
        opening_from_json(value)
    assert caught.value.code == code


def test_opening_sizes_are_left_to_verify_opening(trace: golden.Synthetic) -> None:
    item = _opening_item(trace) | {"salt": _b64(bytes(15))}
    parsed = opening_from_json(item)
    with pytest.raises(MalformedInput) as caught:
        coin.verify_opening(trace.head, parsed)
    assert caught.value.code == "coin.opening_malformed"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([], id="array"),
        pytest.param({"openings": []}, id="no-key"),
        pytest.param({"openings": [], "sketch_key": _b64(KEY), "x": 1}, id="extra"),
        pytest.param({"openings": {}, "sketch_key": _b64(KEY)}, id="openings-object"),
        pytest.param({"openings": [], "sketch_key": None}, id="key-null"),
        pytest.param({"openings": [], "sketch_key": "AAA"}, id="key-unpadded"),
    ],
)
def test_malformed_openings_answers_are_refused(value: object) -> None:
    with pytest.raises(MalformedInput) as caught:
        openings_from_json(value)
    assert caught.value.code == "coin.response_malformed"


def test_evidence_still_reports_a_malformed_opening_as_malformed_evidence() -> None:
    document = json.loads((VECTORS / "evidence-consistent.json").read_text())
    document["openings"][0]["index"] = "0"
    with pytest.raises(MalformedInput) as caught:
        coin.Evidence.from_json(json.dumps(document))
    assert caught.value.code == "coin.evidence_malformed"


# -- offers -----------------------------------------------------------------------------------


def test_offer_json_round_trips(offer: CoinOffer) -> None:
    document = offer.to_json()
    assert document == {
        "format": OFFER_FORMAT,
        "head_note": offer.head_note,
        "provider_vkey": offer.provider_vkey,
        "sketch": _b64(SKETCH),
        "openings_url": URL,
    }
    assert CoinOffer.from_json(document) == offer
    assert CoinOffer.from_json(json.dumps(document)) == offer
    assert CoinOffer.from_json(json.dumps(document).encode()) == offer
    body = {"id": "chatcmpl-1", "choices": [], OFFER_MEMBER: document}
    assert CoinOffer.from_response(json.loads(json.dumps(body))) == offer
    assert CoinOffer.from_response({"id": "chatcmpl-1"}) is None
    assert offer.head_note not in repr(offer)


@given(st.binary(max_size=512))
def test_any_sketch_round_trips(sketch: bytes) -> None:
    offer = CoinOffer(
        golden.commit(golden.TOKEN_IDS[:2]).head_note, golden.PROVIDER.vkey, sketch, URL
    )
    assert CoinOffer.from_json(json.dumps(offer.to_json())) == offer


OFFER_TWINS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "array": (lambda document: [document], "coin.offer_malformed"),
    "missing-url": (_without("openings_url"), "coin.offer_malformed"),
    "missing-format": (_without("format"), "coin.offer_malformed"),
    "missing-sketch": (_without("sketch"), "coin.offer_malformed"),
    "extra-member": (_with(request_id="r1"), "coin.offer_malformed"),
    "format-other": (_with(format="tallystick.coin.offer/v2"), "coin.offer_version"),
    "format-int": (_with(format=1), "coin.offer_malformed"),
    "head-note-int": (_with(head_note=1), "coin.offer_malformed"),
    "head-note-empty": (_with(head_note=""), "coin.offer_malformed"),
    "head-note-huge": (_with(head_note="x" * (64 << 10)), "coin.offer_malformed"),
    "vkey-null": (_with(provider_vkey=None), "coin.offer_malformed"),
    "vkey-garbage": (_with(provider_vkey="nope"), "coin.offer_malformed"),
    "sketch-bytes-list": (_with(sketch=[1, 2]), "coin.offer_malformed"),
    "sketch-not-base64": (_with(sketch="***"), "coin.offer_malformed"),
    "sketch-noncanonical": (_with(sketch="AB=="), "coin.offer_malformed"),
    "sketch-too-large": (
        _with(sketch=_b64(bytes(MAX_SKETCH_BYTES + 3))),
        "coin.offer_malformed",
    ),
    "url-int": (_with(openings_url=8080), "coin.offer_malformed"),
    "url-empty": (_with(openings_url=""), "coin.offer_malformed"),
    "url-relative": (_with(openings_url="/coin/v1/open"), "coin.offer_malformed"),
    "url-ftp": (_with(openings_url="ftp://provider.example/x"), "coin.offer_malformed"),
    "url-file": (_with(openings_url="file:///etc/passwd"), "coin.offer_malformed"),
    "url-javascript": (_with(openings_url="javascript:alert(1)"), "coin.offer_malformed"),
    "url-no-host": (_with(openings_url="http:///coin/v1/open"), "coin.offer_malformed"),
    "url-credentials": (
        _with(openings_url="https://user:pw@provider.example/open"),
        "coin.offer_malformed",
    ),
    "url-fragment": (_with(openings_url=URL + "#frag"), "coin.offer_malformed"),
    "url-space": (_with(openings_url=URL + " x"), "coin.offer_malformed"),
    "url-newline": (_with(openings_url=URL + "\r\nX-Injected: 1"), "coin.offer_malformed"),
    "url-non-ascii": (_with(openings_url="https://prövider.example/"), "coin.offer_malformed"),
    "url-bad-port": (_with(openings_url="http://provider.example:99999/"), "coin.offer_malformed"),
    "url-too-long": (
        _with(openings_url="https://p.example/" + "a" * MAX_URL_CHARS),
        "coin.offer_malformed",
    ),
}


@pytest.mark.parametrize(("mutate", "code"), list(OFFER_TWINS.values()), ids=list(OFFER_TWINS))
def test_malformed_offers_are_refused_with_their_code(
    offer: CoinOffer, mutate: Callable[[dict[str, Any]], Any], code: str
) -> None:
    document = mutate(copy.deepcopy(offer.to_json()))
    with pytest.raises(TallystickError) as caught:
        CoinOffer.from_json(document)
    assert caught.value.code == code
    assert isinstance(
        caught.value, UnsupportedVersion if code.endswith("version") else MalformedInput
    )


@pytest.mark.parametrize("text", ["not json", "[1]", '{"format": 1, "format": 2}', "\xff"])
def test_offer_text_that_is_not_one_json_object_is_malformed(text: str) -> None:
    with pytest.raises(MalformedInput) as caught:
        CoinOffer.from_json(text)
    assert caught.value.code == "coin.offer_malformed"


def test_offer_urls_that_are_accepted(offer: CoinOffer) -> None:
    for url in (
        "http://127.0.0.1:8790/coin/v1/open",
        "http://[::1]:8790/coin/v1/open",
        "https://provider.example/coin/v1/open?tenant=a",
        "HTTPS://provider.example/coin/v1/open",
    ):
        assert CoinOffer(offer.head_note, offer.provider_vkey, b"", url).openings_url == url


def test_offer_refuses_a_sketch_over_the_limit_on_construction(offer: CoinOffer) -> None:
    with pytest.raises(MalformedInput) as caught:
        CoinOffer(offer.head_note, offer.provider_vkey, bytes(MAX_SKETCH_BYTES + 1), URL)
    assert caught.value.code == "coin.offer_malformed"


# -- attestation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attested(offer: CoinOffer) -> CoinOffer:
    return dataclasses.replace(offer, attestation=Attestation("intel-tdx-quote", QUOTE))


def test_an_attested_offer_round_trips(attested: CoinOffer) -> None:
    document = attested.to_json()
    unattested = dataclasses.replace(attested, attestation=None).to_json()
    assert document == {
        **unattested,
        "attestation": {"format": "intel-tdx-quote", "document": _b64(QUOTE)},
    }
    assert CoinOffer.from_json(document) == attested
    assert CoinOffer.from_json(json.dumps(document)) == attested
    body = {"id": "chatcmpl-1", OFFER_MEMBER: document}
    parsed = CoinOffer.from_response(json.loads(json.dumps(body)))
    assert parsed is not None and parsed.attestation == attested.attestation
    assert "intel-tdx-quote" in repr(attested) and _b64(QUOTE)[:16] not in repr(attested)


def test_an_offer_without_attestation_has_no_member_and_parses_to_none(offer: CoinOffer) -> None:
    assert "attestation" not in offer.to_json()
    assert CoinOffer.from_json(offer.to_json()).attestation is None


def test_the_logged_record_is_the_format_and_the_documents_digest() -> None:
    attestation = Attestation("nvidia-cc-report", b"report")
    assert attestation.digest_json() == {
        "format": "nvidia-cc-report",
        "sha256": hashlib.sha256(b"report").hexdigest(),
    }
    assert attestation.sha256 == hashlib.sha256(b"report").hexdigest()


@pytest.mark.parametrize(
    ("format_", "size"),
    [
        pytest.param("a", 1, id="shortest"),
        pytest.param("a" + "0._-" * 15 + "zzz", MAX_ATTESTATION_BYTES, id="longest"),
    ],
)
def test_attestation_bounds_are_accepted(offer: CoinOffer, format_: str, size: int) -> None:
    attested = dataclasses.replace(offer, attestation=Attestation(format_, b"q" * size))
    assert len(format_) in (1, 64)
    assert CoinOffer.from_json(json.dumps(attested.to_json())) == attested


ATTESTATION_TWINS: dict[str, Any] = {
    "null": None,
    "string": "intel-tdx-quote",
    "missing-document": {"format": "intel-tdx-quote"},
    "missing-format": {"document": _b64(QUOTE)},
    "extra-member": {"format": "intel-tdx-quote", "document": _b64(QUOTE), "sha256": "00"},
    "format-int": {"format": 1, "document": _b64(QUOTE)},
    "format-empty": {"format": "", "document": _b64(QUOTE)},
    "format-uppercase": {"format": "Intel-TDX", "document": _b64(QUOTE)},
    "format-leading-dash": {"format": "-tdx", "document": _b64(QUOTE)},
    "format-space": {"format": "intel tdx", "document": _b64(QUOTE)},
    "format-newline": {"format": "tdx\n", "document": _b64(QUOTE)},
    "format-non-ascii": {"format": "tdx\u00e9", "document": _b64(QUOTE)},
    "format-65-chars": {"format": "a" * 65, "document": _b64(QUOTE)},
    "document-empty": {"format": "intel-tdx-quote", "document": ""},
    "document-list": {"format": "intel-tdx-quote", "document": [1, 2]},
    "document-not-base64": {"format": "intel-tdx-quote", "document": "***"},
    "document-noncanonical": {"format": "intel-tdx-quote", "document": "AB=="},
    "document-too-large": {
        "format": "intel-tdx-quote",
        "document": _b64(bytes(MAX_ATTESTATION_BYTES + 1)),
    },
}


@pytest.mark.parametrize("value", list(ATTESTATION_TWINS.values()), ids=list(ATTESTATION_TWINS))
def test_malformed_attestations_are_refused(offer: CoinOffer, value: Any) -> None:
    document = {**offer.to_json(), "attestation": value}
    with pytest.raises(MalformedInput) as caught:
        CoinOffer.from_json(json.dumps(document))
    assert caught.value.code == "coin.offer_malformed"


@pytest.mark.parametrize(
    ("format_", "document"),
    [
        pytest.param("Intel", QUOTE, id="format-uppercase"),
        pytest.param("intel-tdx-quote", b"", id="document-empty"),
        pytest.param("intel-tdx-quote", bytes(MAX_ATTESTATION_BYTES + 1), id="document-too-large"),
        pytest.param("intel-tdx-quote", bytearray(QUOTE), id="document-bytearray"),
        pytest.param(b"intel-tdx-quote", QUOTE, id="format-bytes"),
    ],
)
def test_attestation_refuses_bad_fields_on_construction(format_: Any, document: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        Attestation(format_, document)
    assert caught.value.code == "coin.offer_malformed"


def test_an_offer_refuses_an_attestation_that_is_not_one(offer: CoinOffer) -> None:
    with pytest.raises(MalformedInput) as caught:
        dataclasses.replace(offer, attestation={"format": "x", "document": "eA=="})
    assert caught.value.code == "coin.offer_malformed"


# -- the prompt -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([{"role": "user", "content": "What is 2 + 2?"}], "What is 2 + 2?", id="one"),
        pytest.param(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 2?"},
            ],
            "Be brief.\n\nWhat is 2 + 2?",
            id="system-and-user",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}},
                        {"type": "input_text", "text": "this image"},
                    ],
                }
            ],
            "Describe\n\nthis image",
            id="parts",
        ),
        pytest.param(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "content": ""},
                {"role": "user", "content": []},
                {"role": "user"},
                {"role": "user", "content": "again"},
            ],
            "hi\n\nagain",
            id="empty-and-null-skipped",
        ),
        pytest.param(
            [{"role": "user", "content": "  spaced \n"}, {"role": "user", "content": "x"}],
            "  spaced \n\n\nx",
            id="verbatim",
        ),
        pytest.param([], "", id="no-messages"),
        pytest.param("a bare Responses input", "a bare Responses input", id="string"),
        pytest.param(({"content": "tuple"},), "tuple", id="tuple"),
    ],
)
def test_prompt_text(messages: Any, expected: str) -> None:
    assert prompt_text(messages) == expected


def test_prompt_text_ignores_roles_and_names() -> None:
    assert prompt_text([{"role": "system", "name": "x", "content": "a"}]) == prompt_text(
        [{"role": "user", "content": "a"}]
    )


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param({"role": "user", "content": "x"}, id="object-not-list"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param(None, id="null"),
        pytest.param(["x"], id="message-not-object"),
        pytest.param([{"content": 3}], id="content-int"),
        pytest.param([{"content": {"text": "x"}}], id="content-object"),
        pytest.param([{"content": ["x"]}], id="part-not-object"),
        pytest.param([{"content": [{"type": "text", "text": 3}]}], id="part-text-int"),
    ],
)
def test_prompt_text_refuses_malformed_messages(messages: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        prompt_text(messages)
    assert caught.value.code == "coin.prompt_malformed"


# -- HttpOpener against real loopback servers -------------------------------------------------


class _Canned:
    """A loopback HTTP server answering every request with one canned response, recording the
    request bodies it got."""

    def __init__(
        self,
        status: int,
        body: bytes,
        *,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                canned.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
                time.sleep(delay_s)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/coin/v1/open"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def canned() -> Iterator[Callable[..., _Canned]]:
    servers: list[_Canned] = []

    def make(status: int, body: bytes | dict[str, Any], **kwargs: Any) -> _Canned:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        servers.append(_Canned(status, raw, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_http_opener_posts_the_indices_and_parses_the_answer(
    trace: golden.Synthetic, canned: Callable[..., _Canned]
) -> None:
    openings = trace.open([1, 4, 9])
    server = canned(200, openings_to_json(openings, KEY))
    opener = HttpOpener(server.url, "req-golden-1")
    assert opener([1, 4, 9]) == (openings, KEY)
    (path, headers, body), *_ = server.requests
    assert path == "/coin/v1/open"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"request_id": "req-golden-1", "indices": [1, 4, 9]}


def test_http_opener_takes_the_url_from_an_offer(
    offer: CoinOffer, canned: Callable[..., _Canned]
) -> None:
    server = canned(200, openings_to_json([], KEY))
    opener = HttpOpener(CoinOffer(offer.head_note, offer.provider_vkey, b"", server.url), "r1")
    assert opener.url == server.url
    assert opener([]) == ([], KEY)


def test_http_opener_reports_the_providers_error(canned: Callable[..., _Canned]) -> None:
    error = {"error": {"code": "coin.commitment_unknown", "message": "no commitment\x1b[31m"}}
    server = canned(404, error)
    with pytest.raises(OpeningsUnavailable) as caught:
        HttpOpener(server.url, "r1")([0])
    assert caught.value.code == "coin.openings_unavailable"
    assert (caught.value.status, caught.value.remote_code) == (404, "coin.commitment_unknown")
    assert "\x1b" not in str(caught.value)


def test_http_opener_reports_a_non_json_error_without_a_remote_code(
    canned: Callable[..., _Canned],
) -> None:
    server = canned(500, b"<html>Internal Server Error</html>")
    with pytest.raises(OpeningsUnavailable) as caught:
        HttpOpener(server.url, "r1")([0])
    assert (caught.value.status, caught.value.remote_code) == (500, None)


def test_http_opener_never_follows_a_redirect(
    trace: golden.Synthetic, canned: Callable[..., _Canned]
) -> None:
    elsewhere = canned(200, openings_to_json(trace.open([0]), KEY))
    redirecting = canned(302, b"", headers={"Location": elsewhere.url})
    with pytest.raises(OpeningsUnavailable) as caught:
        HttpOpener(redirecting.url, "r1")([0])
    assert caught.value.status == 302
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"not json", "coin.response_malformed", id="not-json"),
        pytest.param(b'{"openings": []}', "coin.response_malformed", id="no-sketch-key"),
        pytest.param(b'{"openings": [], "openings": []}', "coin.response_malformed", id="dup"),
        pytest.param(
            json.dumps({"openings": [{"index": 0}], "sketch_key": _b64(KEY)}).encode(),
            "coin.opening_malformed",
            id="bad-opening",
        ),
    ],
)
def test_http_opener_refuses_a_malformed_answer(
    canned: Callable[..., _Canned], body: bytes, code: str
) -> None:
    server = canned(200, body)
    with pytest.raises(MalformedInput) as caught:
        HttpOpener(server.url, "r1")([0])
    assert caught.value.code == code


def test_http_opener_reports_an_unreachable_provider(canned: Callable[..., _Canned]) -> None:
    server = canned(200, b"{}")
    url = server.url
    server.close()
    with pytest.raises(OpeningsUnavailable) as caught:
        HttpOpener(url, "r1")([0])
    assert caught.value.status is None


def test_http_opener_times_out(canned: Callable[..., _Canned]) -> None:
    server = canned(200, b"{}", delay_s=2.0)
    started = time.monotonic()
    with pytest.raises(OpeningsUnavailable):
        HttpOpener(server.url, "r1", timeout=0.2)([0])
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("indices", [[-1], [True], [1 << 32], ["0"]])
def test_http_opener_refuses_bad_indices_before_any_request(
    canned: Callable[..., _Canned], indices: list[Any]
) -> None:
    server = canned(200, b"{}")
    with pytest.raises(MalformedInput) as caught:
        HttpOpener(server.url, "r1")(indices)
    assert caught.value.code == "coin.bad_int"
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "request_id", "timeout", "code"),
    [
        pytest.param("file:///etc/passwd", "r1", 1.0, "coin.url_invalid", id="file-url"),
        pytest.param("provider.example/open", "r1", 1.0, "coin.url_invalid", id="no-scheme"),
        pytest.param(URL, "", 1.0, "coin.input_invalid", id="empty-request-id"),
        pytest.param(URL, None, 1.0, "coin.input_invalid", id="null-request-id"),
        pytest.param(URL, "r1", 0, "coin.input_invalid", id="zero-timeout"),
        pytest.param(URL, "r1", float("nan"), "coin.input_invalid", id="nan-timeout"),
    ],
)
def test_http_opener_refuses_bad_arguments(
    url: str, request_id: Any, timeout: float, code: str
) -> None:
    with pytest.raises(MalformedInput) as caught:
        HttpOpener(url, request_id, timeout=timeout)
    assert caught.value.code == code
