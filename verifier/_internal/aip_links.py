"""The encoding-neutral AIP delegation link model: steps V3, V4 and V5 (aip.md §5).

Both encodings are parsed into :class:`Link` values and checked here, on
structured values and never on policy text, exactly as the reference's
``aip_token.chain_model.verify_links`` does. Link 0 is the authority; links
1..N are delegations. The checks run in the order aip.md §5 lists them: V3
(depth), then the V4 attenuation walk over every link, then V5 (context) over
every link, and the first failure is raised with the draft's error code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import base58

from ..errors import (
    BudgetExceeded,
    DepthExceeded,
    Expired,
    IdentityUnresolvable,
    MalformedInput,
    ScopeInsufficient,
)

__all__ = [
    "Effective",
    "Link",
    "authorize_request",
    "bind_root",
    "covers",
    "identity_of_key",
    "is_safe_term",
    "key_of_identity",
    "malformed",
    "unresolvable",
    "validate_term",
    "verify_links",
]

_FORBIDDEN_TERM_CHARS = frozenset('"\\')
_KEY_IDENTITY_PREFIX = "aip:key:ed25519:z"
# aip:web:<domain>[:port][/<path>], ASCII only (IDNs travel as punycode).
_WEB_IDENTITY = re.compile(
    r"aip:web:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?(?:/[!-~]*)?"
)


@functools.lru_cache(maxsize=256)
def identity_of_key(raw: bytes) -> str:
    """``aip:key:ed25519:z<base58btc(raw)>``, the self-certifying AIP identifier of a key."""
    return _KEY_IDENTITY_PREFIX + base58.b58encode(raw).decode("ascii")


def unresolvable(message: str) -> IdentityUnresolvable:
    """The ``aip.identity_unresolvable`` rejection (step V2)."""
    return IdentityUnresolvable(message, code="aip.identity_unresolvable", step=2)


def key_of_identity(identity: object) -> bytes:
    """The raw Ed25519 key an ``aip:key:ed25519:z...`` identifier names.

    :raises IdentityUnresolvable: ``aip.identity_unresolvable``: any other form, a bad
        base58 string, a non-canonical encoding or a key that is not 32 bytes.
    """
    if not isinstance(identity, str) or not identity.startswith(_KEY_IDENTITY_PREFIX):
        raise unresolvable("identity: not an aip:key:ed25519 identifier")
    text = identity[len(_KEY_IDENTITY_PREFIX) :]
    try:
        raw = base58.b58decode(text)
    except ValueError as exc:
        raise unresolvable("identity: not base58btc") from exc
    if len(raw) != 32 or base58.b58encode(raw).decode("ascii") != text:
        raise unresolvable("identity: not a canonical 32-byte key")
    return raw


def bind_root(issuer: str, root: bytes) -> None:
    """V2: the issuer identity must resolve to the verifying key ``root``.

    An ``aip:key:`` identity must decode to ``root``. An ``aip:web:`` identity
    is accepted because the caller supplied ``root`` for it: resolving the web
    document is the caller's job, and the verifier never takes a key from the
    token itself.

    :raises IdentityUnresolvable: ``aip.identity_unresolvable``.
    """
    if issuer.startswith("aip:key:"):
        # The identifier encoding is canonical (key_of_identity insists), so
        # comparing text is comparing keys, without decoding base58 every time.
        if issuer != identity_of_key(root):
            raise unresolvable(f"identity: {issuer[:100]} is not the verifying key")
    elif _WEB_IDENTITY.fullmatch(issuer) is None:
        raise unresolvable(f"identity: {issuer[:80]!r} is not an AIP identifier")


def malformed(message: str, *, step: int) -> MalformedInput:
    """The ``aip.token_malformed`` rejection for ``step``."""
    return MalformedInput(message, code="aip.token_malformed", step=step)


def is_safe_term(value: str) -> bool:
    """True when ``value`` cannot escape a quoted Datalog string (no ``"``, ``\\``, controls)."""
    return not any(
        char in _FORBIDDEN_TERM_CHARS or ord(char) < 0x20 or ord(char) == 0x7F for char in value
    )


def validate_term(value: object, what: str, *, step: int) -> str:
    """Return ``value`` if it is a string that is safe inside a Datalog string literal.

    Biscuit prints string literals unescaped, so a quote, backslash or control
    character (newline included) in a term makes a block's printed source read
    as different statements than it holds. The reference's ``validate_term``
    rejects the same set.

    :raises MalformedInput: ``aip.token_malformed``, not a string or an unsafe character.
    """
    if not isinstance(value, str):
        raise malformed(f"{what}: must be a string", step=step)
    if not is_safe_term(value):
        raise malformed(f"{what}: contains a quote, backslash or control character", step=step)
    return value


@dataclass(frozen=True, slots=True)
class Link:
    """One link of a chain as declared; ``None`` means "not declared, inherit"."""

    issuer: str
    delegate: str | None = None
    tools: frozenset[str] | None = None
    domains: frozenset[str] | None = None
    budget_cents: int | None = None
    expiry: int | None = None
    context: str | None = None
    principal: str | None = None
    max_depth: int | None = None


@dataclass(frozen=True, slots=True)
class Effective:
    """The authority left at the leaf: each dimension's nearest declaration."""

    tools: frozenset[str]
    domains: frozenset[str] | None
    budget_cents: int | None
    expiry: int
    principal: str | None
    max_depth: int
    depth: int


def covers(pattern: str, value: str) -> bool:
    """Does an ancestor's scope ``pattern`` permit ``value``?

    A trailing ``*`` permits whatever it prefixes; a specific value never
    covers a wildcard, because ``"tool:*"`` does not start with ``"tool:search"``.
    """
    if pattern in (value, "*"):
        return True
    return pattern.endswith("*") and value.startswith(pattern[:-1])


def _check_declarations(links: Sequence[Link]) -> tuple[frozenset[str], int, int]:
    """The authority's tools, expiry and max_depth, after the 0.6.0 structural rejections."""
    if not links:
        raise malformed("chain: no links", step=4)
    root = links[0]
    if root.tools is None:
        raise malformed("authority: declares no tools", step=4)
    if root.expiry is None:
        raise malformed("authority: declares no expiry", step=4)
    if root.max_depth is None or root.max_depth < 0:
        raise malformed("authority: declares no valid max_depth", step=4)
    for index, link in enumerate(links):
        if link.tools is not None and not link.tools:
            raise malformed(f"block {index}: declares an empty tools list", step=4)
        if link.domains is not None and not link.domains:
            raise malformed(f"block {index}: declares an empty domains list", step=4)
        if index and link.max_depth is not None:
            raise malformed(f"block {index}: a delegation declares max_depth", step=4)
    return root.tools, root.expiry, root.max_depth


def _check_expiry(expiry: int, *, now: int | None, index: int) -> None:
    # Valid through the expiry second itself, as the Datalog `$t <= expiry` check reads it.
    if now is not None and expiry < now:
        raise Expired(f"block {index}: expired at {expiry}", code="aip.token_expired", step=4)


def verify_links(links: Sequence[Link], *, now: int | None) -> Effective:
    """Run V3, V4 and V5 and return the leaf's effective authority.

    ``now=None`` skips only the "not in the past" comparisons (used when
    minting a delegation, which grants nothing by itself).

    :raises MalformedInput: ``aip.token_malformed``: a missing or repeated declaration (V4),
        a principal swap (V4), or an empty or whitespace context (V5).
    :raises DepthExceeded: ``aip.depth_exceeded``: more delegations than ``max_depth`` (V3).
    :raises ScopeInsufficient: ``aip.scope_insufficient``: tools or domains widen (V4).
    :raises BudgetExceeded: ``aip.budget_exceeded``: a negative or raised ceiling (V4).
    :raises Expired: ``aip.token_expired``: an expiry after the parent's or in the past (V4).
    """
    tools, expiry, max_depth = _check_declarations(links)
    root = links[0]
    # V3
    depth = len(links) - 1
    if depth > max_depth:
        raise DepthExceeded(
            f"chain: {depth} delegations exceed max_depth {max_depth}",
            code="aip.depth_exceeded",
            step=3,
        )
    # V4
    if root.budget_cents is not None and root.budget_cents < 0:
        raise BudgetExceeded(
            "authority: negative budget ceiling", code="aip.budget_exceeded", step=4
        )
    _check_expiry(expiry, now=now, index=0)
    domains, budget, principal = root.domains, root.budget_cents, root.principal
    for index, link in enumerate(links[1:], start=1):
        if link.tools is not None:
            widened = sorted(t for t in link.tools if not any(covers(p, t) for p in tools))
            if widened:
                raise ScopeInsufficient(
                    f"block {index}: widens tools: {', '.join(widened)}",
                    code="aip.scope_insufficient",
                    step=4,
                )
            tools = link.tools
        if link.domains is not None:
            if domains is not None and not link.domains <= domains:
                widened = sorted(link.domains - domains)
                raise ScopeInsufficient(
                    f"block {index}: widens domains: {', '.join(widened)}",
                    code="aip.scope_insufficient",
                    step=4,
                )
            domains = link.domains
        if link.budget_cents is not None:
            if link.budget_cents < 0 or (budget is not None and link.budget_cents > budget):
                raise BudgetExceeded(
                    f"block {index}: budget ceiling {link.budget_cents} exceeds {budget}",
                    code="aip.budget_exceeded",
                    step=4,
                )
            budget = link.budget_cents
        if link.expiry is not None:
            if link.expiry > expiry:
                raise Expired(
                    f"block {index}: expiry {link.expiry} is after the parent's {expiry}",
                    code="aip.token_expired",
                    step=4,
                )
            _check_expiry(link.expiry, now=now, index=index)
            expiry = link.expiry
        if link.principal is not None:
            if principal is not None and link.principal != principal:
                raise malformed(
                    f"block {index}: substitutes the principal {principal} with {link.principal}",
                    step=4,
                )
            principal = link.principal
    # V5
    for index, link in enumerate(links[1:], start=1):
        if link.context is None or not link.context.strip():
            raise malformed(f"block {index}: delegation has no context", step=5)
    return Effective(
        tools=tools,
        domains=domains,
        budget_cents=budget,
        expiry=expiry,
        principal=principal,
        max_depth=max_depth,
        depth=depth,
    )


def authorize_request(effective: Effective, tool: str, domain: str | None) -> None:
    """The structural part of V6: is ``tool`` (and ``domain``) inside the leaf's authority?

    :raises ScopeInsufficient: ``aip.scope_insufficient`` at step 6.
    """
    if not any(covers(pattern, tool) for pattern in effective.tools):
        raise ScopeInsufficient(
            f"tool: {tool!r} is not granted", code="aip.scope_insufficient", step=6
        )
    if domain is not None and effective.domains is not None and domain not in effective.domains:
        raise ScopeInsufficient(
            f"domain: {domain!r} is not granted", code="aip.scope_insufficient", step=6
        )
