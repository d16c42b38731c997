"""AIP (Agent Identity Protocol, draft-prakash-aip) tokens: verify and issue offline.

Wire-compatible with ``agent-identity-protocol`` 0.6.0 in both modes:

* compact (``aip+jwt``, a single-hop EdDSA JWT), and
* chained (Biscuit, block 0 by the issuer, one block per delegation).

:func:`verify` runs the draft's steps in order and raises the first failure
with a stable code and ``step`` = the V number::

    V1 integrity    aip.token_missing / aip.token_malformed / aip.signature_invalid
    V2 root binding aip.identity_unresolvable (and aip.delegator_unauthenticated)
    V3 depth        aip.depth_exceeded
    V4 attenuation  aip.scope_insufficient / aip.budget_exceeded / aip.token_expired /
                    aip.token_not_yet_valid / aip.token_malformed
    V5 context      aip.token_malformed
    V6 policy       aip.scope_insufficient (aip.token_malformed for an unsafe tool name)
    V7 revocation   aip.key_revoked
    then            aip.audience_mismatch, aip.replay_detected (no step)

What it does beyond the reference (aip.md §7): V2 is enforced (an ``aip:key:``
issuer must be the verifying key; an ``aip:web:`` issuer is accepted only
because the caller supplied the key it resolved for it); V7 checks a caller
supplied revocation set; compact tokens may carry ``aud`` and ``jti``, checked
against ``audience`` and a :class:`ReplayCache`; a delegation block may be a
Biscuit third-party block signed by the delegator's own key, which
``require_authenticated_delegators=True`` demands of every block (and then each
delegator must be the previous block's delegate). :func:`wire_code` gives a code
in the draft's spelling.

Stricter than the reference, on purpose: canonical base64url and canonical
Biscuit bytes only, no quote/backslash/control character in any Datalog term,
only the canonical block statements (see ``_internal/aip_chained``). Not
implemented: the -02 JWT-chain encoding (``~``-joined links are
``aip.token_malformed``) and fetching ``aip:web:`` identity documents. With
several faults in one forged chain the reported one may differ from the
reference's, which checks V5 per block inside its V4 walk.

Example::

    from tallystick.verifier import aip
    result = aip.verify(token, public_key=issuer_key, now=1_800_000_000, tool="tool:search")
    result.scopes, result.depth, result.expires_at
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from ._internal import aip_chained, aip_compact
from ._internal.aip_links import (
    Effective,
    Link,
    authorize_request,
    bind_root,
    covers,
    identity_of_key,
    key_of_identity,
    malformed,
    validate_term,
    verify_links,
)
from .errors import (
    BudgetExceeded,
    ChainBroken,
    DepthExceeded,
    Expired,
    IdentityUnresolvable,
    MalformedInput,
    ReplayDetected,
    Revoked,
    ScopeInsufficient,
    SignatureInvalid,
    TallystickError,
)
from .keys import PrivateKey, PublicKey

__all__ = [
    "AipFormat",
    "AipHop",
    "ReplayCache",
    "VerifiedAip",
    "delegate_chained",
    "issue_chained",
    "issue_compact",
    "key_identity",
    "resolve_key_identity",
    "unverified_root_key",
    "verify",
    "verify_now",
    "wire_code",
]

AipFormat = Literal["aip-compact", "aip-chained"]

#: The last second ``datetime`` can represent (9999-12-31T23:59:59Z); Biscuit dates stop there too.
_MAX_TIME = 253_402_300_799
_MAX_INT = 2**62


# -- identities ---------------------------------------------------------------------------------


def key_identity(public_key: PublicKey) -> str:
    """The self-certifying identifier ``aip:key:ed25519:z<base58btc(raw key)>``."""
    return identity_of_key(public_key.raw)


def resolve_key_identity(identity: str) -> PublicKey:
    """The public key an ``aip:key:ed25519:`` identifier names.

    :raises IdentityUnresolvable: ``aip.identity_unresolvable``: any other identifier
        (``aip:web:`` needs its document fetched, which this offline core never does).
    """
    return PublicKey.from_raw(key_of_identity(identity))


def unverified_root_key(token: str) -> PublicKey:
    """The root key a chained token's ``aip:key:`` issuer names, read before verification.

    For tools that hold a token but not its issuer's key: the key is
    self-certifying, so verifying against it proves the token is intact and
    was issued by that key, not that the key deserves trust. Trust decisions
    MUST pass a key the caller resolved independently to :func:`verify`.

    :raises MalformedInput: ``aip.token_malformed``: not a readable chained token.
    :raises IdentityUnresolvable: ``aip.identity_unresolvable``: the issuer is not ``aip:key:``.
    """
    source = aip_chained.unverified_authority_source(_check_token(token))
    return resolve_key_identity(aip_chained.parse_block(source, 0).issuer)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AipHop:
    """One delegation block of a chained token, as verified.

    ``authenticated`` is True when the block is a Biscuit third-party block
    signed by ``delegator``'s own key; otherwise ``delegator`` is only asserted.
    """

    delegator: str
    delegate: str
    context: str
    authenticated: bool


@dataclass(frozen=True, slots=True)
class VerifiedAip:
    """What a verified AIP token grants at its leaf. Built only by :func:`verify`.

    ``scopes`` and ``domains`` are sorted; ``budget_usd`` is set for compact
    tokens and ``budget_cents`` for chained ones; ``subject`` is the compact
    ``sub`` or the last delegate (None for an undelegated chained token).
    """

    format: AipFormat
    issuer: str
    subject: str | None
    scopes: tuple[str, ...]
    max_depth: int
    depth: int
    expires_at: int
    budget_usd: float | None = None
    budget_cents: int | None = None
    issued_at: int | None = None
    jti: str | None = None
    audience: str | None = None
    principal: str | None = None
    domains: tuple[str, ...] | None = None
    hops: tuple[AipHop, ...] = ()
    tool: str | None = None


class ReplayCache:
    """Token ids already accepted, each kept until its token expires; bounded, thread-safe.

    The clock is injected: every call says what ``now`` is. When ``max_entries``
    unexpired ids are held, a new id is refused rather than an old one dropped,
    because dropping one would let that token be replayed.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        """An empty cache holding at most ``max_entries`` live ids.

        :raises MalformedInput: ``aip.invalid_argument``: ``max_entries`` is not positive.
        """
        _check_int(max_entries, "max_entries", low=1)
        self._max_entries = max_entries
        self._expiry: dict[str, int] = {}
        self._by_expiry: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, jti: str, expires_at: int, now: int) -> bool:
        """True if ``jti`` was recorded and is still live at ``now``; otherwise record it.

        :raises ReplayDetected: ``aip.replay_cache_full``: the cache is full of live ids.
        """
        with self._lock:
            self._forget_expired(now)
            if jti in self._expiry:
                return True
            if len(self._expiry) >= self._max_entries:
                raise ReplayDetected(
                    "replay cache: full of unexpired token ids", code="aip.replay_cache_full"
                )
            self._expiry[jti] = expires_at
            heapq.heappush(self._by_expiry, (expires_at, jti))
            return False

    def _forget_expired(self, now: int) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            expires_at, jti = heapq.heappop(self._by_expiry)
            if self._expiry.get(jti) == expires_at:
                del self._expiry[jti]


# -- argument checks ----------------------------------------------------------------------------


def _bad_argument(message: str) -> MalformedInput:
    return MalformedInput(message, code="aip.invalid_argument")


def _check_int(value: object, what: str, *, low: int, high: int = _MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad_argument(f"{what}: must be an integer in [{low}, {high}]")
    return value


def _check_time(value: object, what: str) -> int:
    return _check_int(value, what, low=0, high=_MAX_TIME)


def _check_scopes(scopes: object, *, allow_empty: bool = False) -> list[str]:
    if isinstance(scopes, str) or not isinstance(scopes, Sequence):
        raise _bad_argument("scopes: must be a sequence of strings, not a string")
    checked = [validate_term(scope, "scope", step=4) for scope in scopes]
    if (not checked and not allow_empty) or not all(checked):
        raise malformed("scopes: must be non-empty strings", step=4)
    return checked


def _check_domains(domains: object) -> list[str] | None:
    if domains is None:
        return None
    if isinstance(domains, str) or not isinstance(domains, Sequence) or not domains:
        raise malformed("domains: must be a non-empty sequence of strings", step=4)
    return [validate_term(domain, "domain", step=4) for domain in domains]


def _check_identity(value: object, what: str) -> str:
    text = validate_term(value, what, step=4)
    if not text:
        raise malformed(f"{what}: must not be empty", step=4)
    return text


# -- issuing ------------------------------------------------------------------------------------


def issue_compact(
    *,
    key: PrivateKey,
    subject: str,
    scopes: Sequence[str],
    issuer: str | None = None,
    max_depth: int = 0,
    budget_usd: float | None = None,
    issued_at: int,
    ttl_s: int = 3600,
    audience: str | None = None,
    jti: str | None = None,
) -> str:
    """A compact ``aip+jwt`` token, byte-identical to ``CompactToken.create`` without aud/jti.

    ``issuer`` defaults to :func:`key_identity` of ``key``. ``aud`` and ``jti``
    are Tallystick additions: 0.6.0 accepts ``jti`` but rejects any token with
    ``aud`` (PyJWT refuses an audience it was not told to expect).

    :raises MalformedInput: an argument of the wrong type, range or content.
    :raises BudgetExceeded: ``aip.budget_exceeded``: a negative or non-finite budget.
    :raises IdentityUnresolvable: an issuer that is not ``key``'s ``aip:key:`` or an ``aip:web:``.
    """
    issuer = key_identity(key.public_key) if issuer is None else _check_identity(issuer, "issuer")
    bind_root(issuer, key.public_key.raw)  # refuse to mint what V2 would reject
    issued_at = _check_time(issued_at, "issued_at")
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": _check_identity(subject, "subject"),
        "scope": _check_scopes(scopes),
        "budget_usd": None,
        "max_depth": _check_int(max_depth, "max_depth", low=0),
        "iat": issued_at,
        "exp": _check_time(issued_at + _check_int(ttl_s, "ttl_s", low=1), "expiry"),
    }
    if budget_usd is not None:
        if isinstance(budget_usd, bool) or not isinstance(budget_usd, int | float):
            raise _bad_argument("budget_usd: must be a number")
        if not math.isfinite(budget_usd) or budget_usd < 0:
            raise BudgetExceeded(
                "budget_usd: must be finite and non-negative", code="aip.budget_exceeded"
            )
        claims["budget_usd"] = float(budget_usd)  # AipClaims holds a float: 5 is written 5.0
    if audience is not None:
        claims["aud"] = _check_identity(audience, "audience")
    if jti is not None:
        claims["jti"] = _check_identity(jti, "jti")
    return aip_compact.encode_compact(claims, key)


def issue_chained(
    *,
    key: PrivateKey,
    scopes: Sequence[str],
    issuer: str | None = None,
    max_depth: int = 3,
    budget_cents: int | None = None,
    issued_at: int,
    ttl_s: int = 3600,
    principal: str | None = None,
    domains: Sequence[str] | None = None,
) -> str:
    """A chained (Biscuit) token whose block 0 is byte-identical to ``create_authority``'s.

    :raises MalformedInput: ``aip.token_malformed`` for an unsafe term or empty list,
        ``aip.invalid_argument`` for a value of the wrong type or range.
    :raises BudgetExceeded: ``aip.budget_exceeded``: a negative budget.
    :raises IdentityUnresolvable: an issuer that is not ``key``'s ``aip:key:`` or an ``aip:web:``.
    """
    issuer = key_identity(key.public_key) if issuer is None else _check_identity(issuer, "issuer")
    bind_root(issuer, key.public_key.raw)  # refuse to mint what V2 would reject
    if budget_cents is not None and _check_int(budget_cents, "budget_cents", low=-_MAX_INT) < 0:
        raise BudgetExceeded("budget_cents: must be non-negative", code="aip.budget_exceeded")
    builder = aip_chained.authority_builder(
        issuer=issuer,
        principal=None if principal is None else _check_identity(principal, "principal"),
        scopes=_check_scopes(scopes),
        domains=_check_domains(domains),
        max_depth=_check_int(max_depth, "max_depth", low=0),
        budget_cents=budget_cents,
        expiry=_check_time(
            _check_time(issued_at, "issued_at") + _check_int(ttl_s, "ttl_s", low=1), "expiry"
        ),
    )
    return str(builder.build(aip_chained.biscuit_private_key(key)).to_base64())


def delegate_chained(
    token: str,
    *,
    root_public_key: PublicKey,
    delegator_key: PrivateKey | None = None,
    delegator: str | None = None,
    delegate: str,
    scopes: Sequence[str],
    context: str,
    budget_cents: int | None = None,
    principal: str | None = None,
    domains: Sequence[str] | None = None,
    now: int | None = None,
) -> str:
    """Append one attenuated delegation block to a verified chained token.

    The chain is verified first (V1-V5; the expiry comparison only when
    ``now`` is given, since minting grants nothing an expired parent does not
    also lose). With ``delegator_key`` the block is a Biscuit third-party block
    signed by that key and the delegator is its ``aip:key:`` identity, so the
    delegator is authenticated; without it, ``delegator`` is only asserted, as
    in the reference. Empty ``scopes`` inherit the parent's tools.

    :raises MalformedInput: an empty or whitespace context, an unsafe term, or a
        delegator missing or different from ``delegator_key``'s identity.
    :raises DepthExceeded: the chain is already at ``max_depth``.
    :raises ScopeInsufficient: tools or domains wider than the parent's.
    :raises BudgetExceeded: a ceiling above the parent's, or negative.
    :raises SignatureInvalid: ``token`` does not verify under ``root_public_key``.
    """
    if now is not None:
        _check_time(now, "now")
    links, effective, parsed = _verify_chain(_check_token(token), root_public_key, now=now)
    context = validate_term(context, "context", step=5)
    if not context.strip():
        raise malformed("context: must not be empty or whitespace", step=5)
    if effective.depth >= effective.max_depth:
        raise DepthExceeded(
            f"delegate: chain is already at max_depth {effective.max_depth}",
            code="aip.depth_exceeded",
            step=3,
        )
    delegator = _minting_delegator(delegator, delegator_key)
    delegate = _check_identity(delegate, "delegate")
    checked_scopes = _check_scopes(scopes, allow_empty=True)
    checked_domains = _check_domains(domains)
    if principal is not None:
        principal = _check_identity(principal, "principal")
    if budget_cents is not None:
        budget_cents = _check_int(budget_cents, "budget_cents", low=-_MAX_INT)
    # The same walk a verifier will run, over the chain plus the new block.
    verify_links(
        [
            *links,
            Link(
                issuer=delegator,
                delegate=delegate,
                tools=frozenset(checked_scopes) if checked_scopes else None,
                domains=None if checked_domains is None else frozenset(checked_domains),
                budget_cents=budget_cents,
                context=context,
                principal=principal,
            ),
        ],
        now=now,
    )
    block = aip_chained.delegation_builder(
        delegator=delegator,
        delegate=delegate,
        context=context,
        scopes=checked_scopes,
        domains=checked_domains,
        principal=principal,
        budget_cents=budget_cents,
    )
    appended = aip_chained.append_delegation(parsed.biscuit, block, delegator_key=delegator_key)
    return str(appended.to_base64())


def _minting_delegator(delegator: str | None, delegator_key: PrivateKey | None) -> str:
    if delegator_key is None:
        if delegator is None:
            raise _bad_argument("delegate: give delegator or delegator_key")
        return _check_identity(delegator, "delegator")
    identity = key_identity(delegator_key.public_key)
    if delegator is not None and delegator != identity:
        raise _bad_argument("delegate: delegator is not the identity of delegator_key")
    return identity


# -- verifying ----------------------------------------------------------------------------------


def _check_token(token: object) -> str:
    if not isinstance(token, str):
        raise malformed("token: must be a string", step=1)
    if not token or token.isspace():
        raise MalformedInput("token: missing", code="aip.token_missing", step=1)
    if len(token) > aip_compact.MAX_TOKEN_CHARS:
        raise malformed("token: too large", step=1)
    return token


def _verify_chain(
    token: str, public_key: PublicKey, *, now: int | None
) -> tuple[list[Link], Effective, aip_chained.ParsedChain]:
    parsed = aip_chained.parse_chain(token, public_key)  # V1
    root = aip_chained.parse_block(parsed.sources[0], 0)
    bind_root(root.issuer, public_key.raw)  # V2
    links = [root]
    links.extend(
        aip_chained.parse_block(source, index)
        for index, source in enumerate(parsed.sources[1:], start=1)
    )
    return links, verify_links(links, now=now), parsed  # V3-V5


def _hops(
    links: Sequence[Link], signers: Sequence[str | None], *, required: bool
) -> tuple[AipHop, ...]:
    """Bind each delegation block's delegator to the key that signed it, where one did."""
    hops: list[AipHop] = []
    for index in range(1, len(links)):
        link, signer = links[index], signers[index]
        if signer is not None and signer != _signer_text(link.issuer):
            raise IdentityUnresolvable(
                f"block {index}: signed by {signer}, not by delegator {link.issuer}",
                code="aip.delegator_unauthenticated",
                step=2,
            )
        if required and signer is None:
            raise IdentityUnresolvable(
                f"block {index}: delegator {link.issuer} is asserted, not authenticated",
                code="aip.delegator_unauthenticated",
                step=2,
            )
        if required and index > 1 and link.issuer != links[index - 1].delegate:
            raise ChainBroken(
                f"block {index}: delegator {link.issuer} is not the previous delegate",
                code="aip.chain_broken",
                step=2,
                hop=index,
            )
        hops.append(
            AipHop(link.issuer, link.delegate or "", link.context or "", signer is not None)
        )
    return tuple(hops)


def _signer_text(identity: str) -> str | None:
    """How biscuit prints the key of an ``aip:key:`` identity, or None for any other identity."""
    try:
        return "ed25519/" + key_of_identity(identity).hex()
    except IdentityUnresolvable:
        return None


def _check_revoked(identities: Sequence[str | None], revoked: Collection[str]) -> None:
    if not revoked:
        return
    for identity in identities:
        if identity is not None and identity in revoked:
            raise Revoked(f"revoked: {identity}", code="aip.key_revoked", step=7)


def _check_audience(token_audience: tuple[str, ...] | None, audience: str | None) -> str | None:
    if token_audience is None:
        return None
    if audience is None or audience not in token_audience:
        raise ReplayDetected(
            "audience: the token is bound to another audience", code="aip.audience_mismatch"
        )
    return audience


def _verify_compact(
    token: str,
    public_key: PublicKey,
    *,
    now: int,
    tool: str | None,
    audience: str | None,
    replay_cache: ReplayCache | None,
    revoked: Collection[str],
) -> VerifiedAip:
    claims = aip_compact.decode_compact(token, public_key)  # V1
    bind_root(claims.iss, public_key.raw)  # V2
    if claims.max_depth < 0:  # V3: a compact token is a single hop, depth 0
        raise malformed("compact token: negative max_depth", step=3)
    # V4. PyJWT's rule, with no leeway: the token is dead at the `exp` second itself.
    if claims.budget_usd is not None and claims.budget_usd < 0:
        raise BudgetExceeded("compact token: negative budget", code="aip.budget_exceeded", step=4)
    if claims.iat > claims.exp:
        raise malformed("compact token: issued after it expires", step=4)
    if claims.exp <= now:
        raise Expired(f"compact token: expired at {claims.exp}", code="aip.token_expired", step=4)
    if claims.iat > now or (claims.nbf is not None and claims.nbf > now):
        raise Expired("compact token: not yet valid", code="aip.token_not_yet_valid", step=4)
    if tool is not None:  # V6
        validate_term(tool, "tool", step=6)
        if not any(covers(pattern, tool) for pattern in claims.scope):
            raise ScopeInsufficient(
                f"tool: {tool!r} is not granted", code="aip.scope_insufficient", step=6
            )
    _check_revoked((claims.iss, key_identity(public_key), claims.sub), revoked)  # V7
    matched_audience = _check_audience(claims.aud, audience)
    if (
        claims.jti is not None
        and replay_cache is not None
        and replay_cache.seen(f"{public_key.to_b64url()}:{claims.jti}", claims.exp, now)
    ):
        raise ReplayDetected("jti: token already used", code="aip.replay_detected")
    return VerifiedAip(
        format="aip-compact",
        issuer=claims.iss,
        subject=claims.sub,
        scopes=tuple(sorted(set(claims.scope))),
        max_depth=claims.max_depth,
        depth=0,
        expires_at=claims.exp,
        budget_usd=claims.budget_usd,
        issued_at=claims.iat,
        jti=claims.jti,
        audience=matched_audience,
        tool=tool,
    )


def _verify_chained(
    token: str,
    public_key: PublicKey,
    *,
    now: int,
    tool: str | None,
    domain: str | None,
    require_authenticated_delegators: bool,
    revoked: Collection[str],
) -> VerifiedAip:
    links, effective, parsed = _verify_chain(token, public_key, now=now)  # V1-V5
    hops = _hops(links, parsed.signers, required=require_authenticated_delegators)
    if tool is not None:  # V6
        validate_term(tool, "tool", step=6)
        aip_chained.authorize_tool(parsed.biscuit, tool=tool, now=now, depth=effective.depth)
        authorize_request(effective, tool, domain)
    parties = [links[0].issuer, key_identity(public_key)]
    for hop in hops:
        parties += (hop.delegator, hop.delegate)
    _check_revoked(parties, revoked)  # V7
    return VerifiedAip(
        format="aip-chained",
        issuer=links[0].issuer,
        subject=hops[-1].delegate if hops else None,
        scopes=tuple(sorted(effective.tools)),
        max_depth=effective.max_depth,
        depth=effective.depth,
        expires_at=effective.expiry,
        budget_cents=effective.budget_cents,
        principal=effective.principal,
        domains=None if effective.domains is None else tuple(sorted(effective.domains)),
        hops=hops,
        tool=tool,
    )


def verify(
    token: str,
    *,
    public_key: PublicKey,
    now: int,
    tool: str | None = None,
    audience: str | None = None,
    replay_cache: ReplayCache | None = None,
    require_authenticated_delegators: bool = False,
    domain: str | None = None,
    revoked: Collection[str] = frozenset(),
) -> VerifiedAip:
    """Verify an AIP token (compact if it starts with ``eyJ``, else chained) at ``now`` (seconds).

    ``public_key`` is the issuer's root key, resolved by the caller; it is never
    taken from the token. ``tool=None`` verifies the chain without authorising a
    call (V6 skipped); ``domain`` narrows V6 for chained tokens (compact tokens
    carry no domains). ``revoked`` holds AIP identifiers (issuer, root key
    identity, delegators, delegates) to refuse at V7. A token with ``aud``
    needs an equal ``audience``; with ``jti`` and a ``replay_cache`` it is
    accepted once per lifetime. Time comparisons have no leeway.

    :raises MalformedInput: ``aip.token_missing``, ``aip.token_malformed``,
        ``aip.invalid_argument``.
    :raises SignatureInvalid: ``aip.signature_invalid``.
    :raises IdentityUnresolvable: ``aip.identity_unresolvable``, ``aip.delegator_unauthenticated``.
    :raises ChainBroken: ``aip.chain_broken``: with authenticated delegators, a hop's
        delegator is not the previous delegate.
    :raises DepthExceeded: ``aip.depth_exceeded``.
    :raises ScopeInsufficient: ``aip.scope_insufficient``.
    :raises BudgetExceeded: ``aip.budget_exceeded``.
    :raises Expired: ``aip.token_expired``, ``aip.token_not_yet_valid``.
    :raises Revoked: ``aip.key_revoked``.
    :raises ReplayDetected: ``aip.audience_mismatch``, ``aip.replay_detected``,
        ``aip.replay_cache_full``.
    """
    token = _check_token(token)
    now = _check_time(now, "now")
    if domain is not None:
        validate_term(domain, "domain", step=6)
    if token.startswith("eyJ"):
        return _verify_compact(
            token,
            public_key,
            now=now,
            tool=tool,
            audience=audience,
            replay_cache=replay_cache,
            revoked=revoked,
        )
    return _verify_chained(
        token,
        public_key,
        now=now,
        tool=tool,
        domain=domain,
        require_authenticated_delegators=require_authenticated_delegators,
        revoked=revoked,
    )


def verify_now(
    token: str,
    *,
    public_key: PublicKey,
    tool: str | None = None,
    audience: str | None = None,
    replay_cache: ReplayCache | None = None,
    require_authenticated_delegators: bool = False,
    domain: str | None = None,
    revoked: Collection[str] = frozenset(),
) -> VerifiedAip:
    """:func:`verify` at the current wall-clock second.

    :raises TallystickError: as :func:`verify`.
    """
    return verify(
        token,
        public_key=public_key,
        now=int(time.time()),
        tool=tool,
        audience=audience,
        replay_cache=replay_cache,
        require_authenticated_delegators=require_authenticated_delegators,
        domain=domain,
        revoked=revoked,
    )


_WIRE_FALLBACK: tuple[tuple[type[TallystickError], str], ...] = (
    (ScopeInsufficient, "aip_scope_insufficient"),
    (BudgetExceeded, "aip_budget_exceeded"),
    (DepthExceeded, "aip_depth_exceeded"),
    (Expired, "aip_token_expired"),
    (Revoked, "aip_key_revoked"),
    (IdentityUnresolvable, "aip_identity_unresolvable"),
    (SignatureInvalid, "aip_signature_invalid"),
    (ReplayDetected, "aip_replay_detected"),
    (MalformedInput, "aip_token_malformed"),
)


def wire_code(exc: TallystickError) -> str:
    """The code in the draft's spelling (``aip.scope_insufficient`` is ``aip_scope_insufficient``).

    A non-AIP code maps by family (a bare ``MalformedInput`` is ``aip_token_malformed``).
    """
    if exc.code.startswith("aip."):
        return "aip_" + exc.code[len("aip.") :]
    for family, code in _WIRE_FALLBACK:
        if isinstance(exc, family):
            return code
    return "aip_token_malformed"
