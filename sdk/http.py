"""Delegation tokens across HTTP calls between agents.

Header conventions, as the protocols define them:

- HDP (hdp.md §8): ``HDP-Token``, the unpadded base64url of the token's canonical JSON, with
  ``HDP-Token-Ref`` (its ``sha256:`` content reference); incoming requests may also use the
  -00/-01 name ``X-HDP-Token``. The encodings are :class:`tallystick.verifier.hdp.HdpToken`'s.
- AIP (aip.md §2): ``X-AIP-Token: <token>``, or ``Authorization: AIP <token>``; we send the
  former and read both (``X-AIP-Token-Ref`` references are not fetched).

Sending: :func:`headers` for the current delegation, or :class:`DelegationAuth` as the ``auth``
of an ``httpx.Client``/``httpx.AsyncClient`` or a ``requests`` session or call; it reads the
delegation that is current when each request is sent. Receiving: :func:`from_headers` verifies
the token with the sidecar (fail closed) and returns the :class:`~.context.Delegation` to run
the handler under (``with use(from_headers(client, request.headers)):``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from typing import Final, Protocol, TypeVar

from tallystick.verifier import aip, hdp
from tallystick.verifier._internal.encoding import b64url_decode
from tallystick.verifier.canonical import parse_json
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.logentry import DelegationFormat

from .client import AsyncClient, Client, TokenVerdict
from .context import Delegation, current
from .errors import NoDelegation, TokenRejected

__all__ = [
    "AIP_HEADER",
    "AIP_SCHEME",
    "DelegationAuth",
    "from_headers",
    "from_headers_async",
    "headers",
    "token_from_headers",
]

AIP_HEADER: Final = "X-AIP-Token"
#: ``Authorization: AIP <token>``.
AIP_SCHEME: Final = "AIP"


def headers(delegation: Delegation | None = None) -> dict[str, str]:
    """The headers that carry ``delegation`` (default: the current one); empty when none.

    :raises MalformedInput: an HDP delegation whose token does not parse.
    """
    delegation = delegation or current()
    if delegation is None:
        return {}
    if delegation.format is DelegationFormat.HDP:
        return hdp.HdpToken.from_json(delegation.token).to_headers()
    return {AIP_HEADER: delegation.token}


class _HasHeaders(Protocol):
    headers: MutableMapping[str, str]


_Request = TypeVar("_Request", bound=_HasHeaders)


class DelegationAuth:
    """Adds the delegation headers to each outgoing request: ``auth=DelegationAuth()`` for
    ``httpx`` (sync and async clients) and ``requests``. ``delegation`` fixes one; default:
    the one current when the request is sent (none: the request goes out unchanged)."""

    def __init__(self, delegation: Delegation | None = None) -> None:
        self._delegation = delegation

    def __call__(self, request: _Request) -> _Request:
        """Set the headers on ``request`` (an ``httpx.Request`` or ``requests.PreparedRequest``).

        :raises MalformedInput: an HDP delegation whose token does not parse.
        """
        for name, value in headers(self._delegation).items():
            request.headers[name] = value
        return request


def token_from_headers(incoming: Mapping[str, str]) -> str:
    """The delegation token an incoming request carries (HDP as JSON text), not verified.

    An HDP header wins over an AIP one. Header names are compared case-insensitively.

    :raises NoDelegation: no token header (``sdk.no_delegation``).
    :raises MalformedInput: an HDP header that does not decode (``hdp.schema_invalid``),
        or an ``Authorization`` header of another scheme with no ``X-AIP-Token``.
    """
    try:
        return hdp.HdpToken.from_headers(incoming).to_json()
    except TallystickError as exc:
        if exc.code != "hdp.header_missing":
            raise
    lowered = {name.lower(): value for name, value in incoming.items()}
    token = lowered.get(AIP_HEADER.lower())
    if token is None:
        scheme, _, value = lowered.get("authorization", "").strip().partition(" ")
        if scheme.upper() == AIP_SCHEME:
            token = value
    if not token or not token.strip():
        raise NoDelegation("request: no HDP-Token or X-AIP-Token header")
    return token.strip()


def _aip_scopes(token: str) -> tuple[str, ...]:
    """The tools an AIP token grants at its leaf, read with the key it names (the sidecar
    verified it against the issuer's key already); () when unreadable: no tool is granted."""
    try:
        if token.startswith("eyJ"):
            claims = parse_json(b64url_decode(token.split(".")[1], what="aip payload"))
            key = aip.resolve_key_identity(str(claims["iss"]))
        else:
            key = aip.unverified_root_key(token)
        return aip.verify(token, public_key=key, now=int(time.time())).scopes
    except (TallystickError, KeyError, IndexError, TypeError):
        return ()


def _delegation(token: str, verdict: TokenVerdict) -> Delegation:
    if not verdict.valid:
        raise TokenRejected(
            f"delegation token refused: {verdict.detail}",
            code=verdict.code or "sdk.token_rejected",
            step=verdict.step,
        )
    if verdict.format is DelegationFormat.HDP:
        return Delegation.from_hdp(token, token_id=verdict.token_id)
    assert verdict.format is not None
    return Delegation(
        token=token,
        token_id=verdict.token_id,
        format=verdict.format,
        principal=verdict.principal or None,
        scopes=_aip_scopes(token),
    )


def from_headers(
    client: Client,
    incoming: Mapping[str, str],
    *,
    tool: str | None = None,
    audience: str | None = None,
) -> Delegation:
    """The delegation of an incoming request, verified by the sidecar now.

    :raises NoDelegation: no token header.
    :raises TokenRejected: the sidecar found the token invalid (its code: ``hdp.revoked``,
        ``aip.scope_insufficient`` for ``tool``, ...).
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
    :raises MalformedInput: a header that does not decode.
    """
    token = token_from_headers(incoming)
    return _delegation(token, client.verify_token(token, tool=tool, audience=audience))


async def from_headers_async(
    client: AsyncClient,
    incoming: Mapping[str, str],
    *,
    tool: str | None = None,
    audience: str | None = None,
) -> Delegation:
    """As :func:`from_headers`, with an :class:`~.client.AsyncClient`.

    :raises: as :func:`from_headers`.
    """
    token = token_from_headers(incoming)
    return _delegation(token, await client.verify_token(token, tool=tool, audience=audience))
