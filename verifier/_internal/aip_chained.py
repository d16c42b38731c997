"""AIP chained tokens (Biscuit): V1 parsing, the block grammar, minting and V6.

Wire format (aip.md §3, draft-prakash-aip-01 §3.4.1): block 0 is signed by the
issuer's root key and holds ``identity``, optional ``principal``, descriptive
``right`` facts, ``domain`` facts, ``max_depth``, optional ``budget_ceiling``,
one tool check and one time check; each delegation block holds ``delegator``,
``delegate``, ``context``, optional ``domain``/``principal``/``budget_ceiling``
facts and at most one tool check. Blocks are built only through biscuit-python
parameter binding; the resulting block bytes are identical to the reference's
text-built blocks (the interop tests compare them byte for byte).

Reading a token is stricter than the reference in three ways, each closing a
gap found while testing it:

* The text must be canonical base64url and the bytes canonical protobuf (the
  token re-serialises to exactly the bytes received). biscuit-auth 6 skips
  unknown fields and defaults a missing ``nextKey.algorithm`` to Ed25519, and
  that field's tag is outside every signature, so a token with one flipped
  character still verified.
* biscuit prints string literals unescaped, so a forged block holding
  ``context("x\\");\\nprincipal(\\"evil")`` prints as two facts. Every symbol of
  every block is therefore checked (read from the protobuf) to contain no
  quote, backslash or control character before any block source is read.
* Each printed statement must be one of the canonical forms above; anything
  else (rules, other checks, unknown facts) is rejected rather than ignored.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from biscuit_auth import (
    Algorithm,
    AuthorizationError,
    AuthorizerBuilder,
    Biscuit,
    BiscuitBlockError,
    BiscuitBuilder,
    BiscuitBuildError,
    BiscuitValidationError,
    BlockBuilder,
    Check,
    DataLogError,
    Fact,
    Policy,
    UnverifiedBiscuit,
)
from biscuit_auth import PrivateKey as BiscuitPrivateKey
from biscuit_auth import PublicKey as BiscuitPublicKey

from ..errors import ScopeInsufficient, SignatureInvalid
from ..keys import PrivateKey, PublicKey
from .aip_compact import MAX_TOKEN_CHARS
from .aip_links import Link, is_safe_term, malformed

__all__ = [
    "ParsedChain",
    "append_delegation",
    "authority_builder",
    "authorize_tool",
    "biscuit_private_key",
    "block_payloads",
    "block_symbols",
    "decode_token_text",
    "delegation_builder",
    "parse_block",
    "parse_chain",
    "unverified_authority_source",
    "verify_biscuit",
]

_BISCUIT_ERRORS = (
    AuthorizationError,
    BiscuitBlockError,
    BiscuitBuildError,
    BiscuitValidationError,
    DataLogError,
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Wall-clock backstop for one Datalog run (biscuit's default is 1 ms).
_DATALOG_MAX_TIME = timedelta(milliseconds=200)


# biscuit-python 0.4's stub predates its Algorithm argument (and Algorithm's members).
_ED25519 = Algorithm.Ed25519  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def _biscuit_public_key(raw: bytes) -> BiscuitPublicKey:
    return BiscuitPublicKey.from_bytes(raw, _ED25519)  # type: ignore[call-arg]


def biscuit_private_key(key: PrivateKey) -> BiscuitPrivateKey:
    """biscuit-python's form of an Ed25519 signing key."""
    return BiscuitPrivateKey.from_bytes(key.seed(), _ED25519)  # type: ignore[call-arg]


# -- V1: text, bytes, signatures ----------------------------------------------------------------


def decode_token_text(token: str) -> bytes:
    """The bytes of a Biscuit token's base64url text (padded, as biscuit writes it, or not).

    :raises MalformedInput: ``aip.token_malformed``: oversized or not canonical base64url.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise malformed("chained token: too large", step=1)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise malformed("chained token: not base64url", step=1) from exc
    # Re-encoding catches everything the lenient decoder tolerates: stray characters,
    # "+" and "/" for "-" and "_", and non-zero trailing bits.
    canonical = base64.urlsafe_b64encode(raw).decode("ascii")
    if token not in (canonical, canonical.rstrip("=")):
        raise malformed("chained token: not canonical base64url", step=1)
    return raw


def verify_biscuit(raw: bytes, root: PublicKey) -> Biscuit:
    """V1: every block signature back to ``root``, and canonical protobuf bytes.

    biscuit-python reports every deserialisation or signature failure as one
    error; like the reference, it is ``aip.signature_invalid``.

    :raises SignatureInvalid: ``aip.signature_invalid``: does not parse or verify under ``root``.
    :raises MalformedInput: ``aip.token_malformed``: verifies, but is not in canonical form.
    """
    try:
        biscuit = Biscuit.from_bytes(raw, _biscuit_public_key(root.raw))
    except _BISCUIT_ERRORS as exc:
        raise SignatureInvalid(
            "chained token: does not verify under the root key",
            code="aip.signature_invalid",
            step=1,
        ) from exc
    # The stub says list[int]; 0.4 returns bytes. bytes() keeps both right.
    if bytes(biscuit.to_bytes()) != raw:
        raise malformed("chained token: not canonically encoded", step=1)
    return biscuit


class _ProtobufError(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 64, 7):
        if pos >= len(buf):
            raise _ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
    raise _ProtobufError("varint too long")


def _length_delimited(buf: bytes, field: int) -> list[bytes]:
    """Every length-delimited value of ``field`` in one protobuf message, in order."""
    values: list[bytes] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            end = pos + length
            if end > len(buf):
                raise _ProtobufError("truncated field")
            if key >> 3 == field:
                values.append(buf[pos:end])
            pos = end
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise _ProtobufError(f"unsupported wire type {wire_type}")
    if pos != len(buf):
        raise _ProtobufError("truncated message")
    return values


def block_payloads(raw: bytes) -> list[bytes]:
    """Each block's signed payload (the ``Block`` protobuf bytes), authority first.

    Biscuit message: authority = 2, blocks = 3; SignedBlock: block = 1
    (schema.proto of biscuit-auth 6). The payload is what the block's
    signature covers; the ephemeral next key is outside it.

    :raises MalformedInput: ``aip.token_malformed``: the bytes are not that structure.
    """
    try:
        signed_blocks = _length_delimited(raw, 2) + _length_delimited(raw, 3)
        return [_only(_length_delimited(signed, 1)) for signed in signed_blocks]
    except _ProtobufError as exc:
        raise malformed(f"chained token: unreadable block structure: {exc}", step=1) from exc


def _only(values: list[bytes]) -> bytes:
    if len(values) != 1:
        raise _ProtobufError("a block must hold exactly one payload")
    return values[0]


def block_symbols(raw: bytes) -> list[list[str]]:
    """Each block's own symbol table plus its block context (Block fields 1 and 2).

    :raises MalformedInput: ``aip.token_malformed``: unreadable, or a string not UTF-8.
    """
    tables: list[list[str]] = []
    try:
        for payload in block_payloads(raw):
            strings = _length_delimited(payload, 1) + _length_delimited(payload, 2)
            tables.append([value.decode("utf-8") for value in strings])
    except (_ProtobufError, UnicodeDecodeError) as exc:
        raise malformed(f"chained token: unreadable block symbols: {exc}", step=1) from exc
    return tables


@dataclass(frozen=True, slots=True)
class ParsedChain:
    """A token whose signatures, encoding and symbols are checked (V1); blocks not yet read.

    ``signers[i]`` is None for a first-party block, else the third-party
    block's external key as biscuit prints it (``"ed25519/<hex>"``).
    """

    biscuit: Biscuit
    sources: tuple[str, ...]
    signers: tuple[str | None, ...]


def parse_chain(token: str, root: PublicKey) -> ParsedChain:
    """V1 for a chained token: canonical text and bytes, signatures, printable symbols.

    :raises MalformedInput: ``aip.token_malformed``.
    :raises SignatureInvalid: ``aip.signature_invalid``.
    """
    raw = decode_token_text(token)
    biscuit = verify_biscuit(raw, root)
    for index, table in enumerate(block_symbols(raw)):
        if not all(is_safe_term(symbol) for symbol in table):
            raise malformed(
                f"block {index}: a string holds a quote, backslash or control character", step=1
            )
    count = biscuit.block_count()
    signers = tuple(
        None if (key := biscuit.block_external_key(i)) is None else str(key) for i in range(count)
    )
    sources = tuple(biscuit.block_source(i) for i in range(count))
    return ParsedChain(biscuit=biscuit, sources=sources, signers=signers)


def unverified_authority_source(token: str) -> str:
    """Block 0's printed source, read WITHOUT checking any signature.

    :raises MalformedInput: ``aip.token_malformed``: not a readable chained token.
    """
    raw = decode_token_text(token)
    tables = block_symbols(raw)
    if not tables or not all(is_safe_term(symbol) for symbol in tables[0]):
        raise malformed("chained token: unreadable authority block", step=1)
    try:
        return str(UnverifiedBiscuit.from_base64(token).block_source(0))
    except _BISCUIT_ERRORS as exc:
        raise malformed("chained token: unreadable", step=1) from exc


# -- V4: the block grammar ----------------------------------------------------------------------

# Terms are known to be free of quotes, backslashes and control characters here
# (parse_chain checked every symbol), so a quote always delimits a literal.
_STRING_FACT = re.compile(
    r'(identity|principal|right|domain|delegator|delegate|context)\("([^"\\]*)"\);'
)
_INT_FACT = re.compile(r"(max_depth|budget_ceiling)\((-?\d{1,19})\);")
_TIME_CHECK = re.compile(r"check if time\(\$t\), \$t <= (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ);")
_TOOL_CLAUSE = re.compile(
    r'tool\(\$t\)(?:, \[("[^"\\]*"(?:, "[^"\\]*")*)\]\.contains\(\$t\)'
    r'|, \$t\.starts_with\("([^"\\]*)"\))?'
)
_LITERAL = re.compile(r'"([^"\\]*)"')
_TOOL_CHECK_START = "check if tool($t)"

_AUTHORITY_FACTS = frozenset({"identity", "principal", "right", "domain"})
_DELEGATION_FACTS = frozenset({"delegator", "delegate", "context", "principal", "domain"})
_SINGLE_VALUED = frozenset({"identity", "principal", "delegator", "delegate", "context"})


def _tool_check(line: str, index: int) -> frozenset[str]:
    """The scope patterns of one canonical tool check, as the reference's ``_parse_scopes``."""
    scopes: set[str] = set()
    pos = len("check if ")
    while True:
        clause = _TOOL_CLAUSE.match(line, pos)
        if clause is None:
            raise malformed(f"block {index}: unrecognised tool check", step=4)
        exact, prefix = clause.group(1), clause.group(2)
        if exact is not None:
            literals = _LITERAL.findall(exact)
            # The canonical encoder writes wildcards as starts_with, never into the list.
            if any(literal.endswith("*") for literal in literals):
                raise malformed(f"block {index}: a wildcard inside a contains list", step=4)
            scopes.update(literals)
        else:
            scopes.add("*" if not prefix else prefix + "*")
        pos = clause.end()
        if line.startswith(" or ", pos):
            pos += len(" or ")
        elif line[pos:] == ";":
            return frozenset(scopes)
        else:
            raise malformed(f"block {index}: unrecognised tool check", step=4)


def _expiry(stamp: str, index: int) -> int:
    try:
        return int(datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=UTC).timestamp())
    except ValueError as exc:
        raise malformed(f"block {index}: unreadable time check", step=4) from exc


def parse_block(source: str, index: int) -> Link:
    """One block's printed source as a :class:`Link` (block 0 is the authority).

    Only the canonical statements are accepted; single-valued facts may not
    repeat; block 0 needs ``identity``, delegation blocks need ``delegator``
    and ``delegate``.

    :raises MalformedInput: ``aip.token_malformed`` at step 4.
    """
    allowed = _AUTHORITY_FACTS if index == 0 else _DELEGATION_FACTS
    strings: dict[str, list[str]] = {}
    ints: dict[str, int] = {}
    tool_checks: list[frozenset[str]] = []
    time_checks: list[int] = []
    lines = source.split("\n")
    if lines[-1] != "":
        raise malformed(f"block {index}: unterminated statement", step=4)
    for line in lines[:-1]:
        if (string_fact := _STRING_FACT.fullmatch(line)) is not None and (
            string_fact.group(1) in allowed
        ):
            strings.setdefault(string_fact.group(1), []).append(string_fact.group(2))
        elif (int_fact := _INT_FACT.fullmatch(line)) is not None:
            if int_fact.group(1) in ints:
                raise malformed(f"block {index}: repeats the {int_fact.group(1)} fact", step=4)
            ints[int_fact.group(1)] = int(int_fact.group(2))
        elif line.startswith(_TOOL_CHECK_START):
            tool_checks.append(_tool_check(line, index))
        elif (time_check := _TIME_CHECK.fullmatch(line)) is not None:
            time_checks.append(_expiry(time_check.group(1), index))
        else:
            raise malformed(f"block {index}: unrecognised statement {line[:80]!r}", step=4)
    for name, values in strings.items():
        if name in _SINGLE_VALUED and len(values) > 1:
            raise malformed(f"block {index}: repeats the {name} fact", step=4)
    if len(tool_checks) > 1 or len(time_checks) > 1:
        raise malformed(f"block {index}: more than one tool or time check", step=4)
    for name in ("identity",) if index == 0 else ("delegator", "delegate"):
        if name not in strings:
            raise malformed(f"block {index}: has no {name} fact", step=4)
    single = {name: values[0] for name, values in strings.items() if name in _SINGLE_VALUED}
    return Link(
        issuer=single["identity"] if index == 0 else single["delegator"],
        delegate=single.get("delegate"),
        tools=tool_checks[0] if tool_checks else None,
        domains=frozenset(strings["domain"]) if "domain" in strings else None,
        budget_cents=ints.get("budget_ceiling"),
        expiry=time_checks[0] if time_checks else None,
        context=single.get("context"),
        principal=single.get("principal"),
        max_depth=ints.get("max_depth"),
    )


# -- minting -------------------------------------------------------------------------------------


def _tool_check_statement(scopes: Sequence[str]) -> Check:
    """The reference's ``tool_check``, with every scope bound as a parameter.

    The source text is assembled only from constant fragments and parameter
    names made from list positions (``p0``, ``p1``); no caller value is ever
    formatted into it.
    """
    exact = [scope for scope in scopes if not scope.endswith("*")]
    prefixes = [scope[:-1] for scope in scopes if scope.endswith("*")]
    clauses: list[str] = []
    parameters: dict[str, object] = {}
    if exact:
        clauses.append("tool($t), {exact}.contains($t)")
        parameters["exact"] = exact
    for position, prefix in enumerate(prefixes):
        if prefix:
            name = f"p{position}"
            clauses.append("tool($t), $t.starts_with({" + name + "})")
            parameters[name] = prefix
        else:
            clauses.append("tool($t)")
    return Check("check if " + " or ".join(clauses), parameters)


def _string_fact(name: str, value: str) -> Fact:
    # `name` is always one of this module's constant predicate names.
    return Fact(name + "({value})", {"value": value})


def _int_fact(name: str, value: int) -> Fact:
    return Fact(name + "({value})", {"value": value})


def authority_builder(
    *,
    issuer: str,
    principal: str | None,
    scopes: Sequence[str],
    domains: Sequence[str] | None,
    max_depth: int,
    budget_cents: int | None,
    expiry: int,
) -> BiscuitBuilder:
    """Block 0 in the reference's canonical statement order (terms already validated)."""
    builder = BiscuitBuilder()
    builder.add_fact(_string_fact("identity", issuer))
    if principal is not None:
        builder.add_fact(_string_fact("principal", principal))
    for scope in scopes:
        builder.add_fact(_string_fact("right", scope))
    for domain in domains or ():
        builder.add_fact(_string_fact("domain", domain))
    builder.add_fact(_int_fact("max_depth", max_depth))
    if budget_cents is not None:
        builder.add_fact(_int_fact("budget_ceiling", budget_cents))
    builder.add_check(_tool_check_statement(scopes))
    builder.add_check(
        Check("check if time($t), $t <= {expiry}", {"expiry": datetime.fromtimestamp(expiry, UTC)})
    )
    return builder


def delegation_builder(
    *,
    delegator: str,
    delegate: str,
    context: str,
    scopes: Sequence[str],
    domains: Sequence[str] | None,
    principal: str | None,
    budget_cents: int | None,
) -> BlockBuilder:
    """A delegation block in the reference's canonical statement order (terms validated)."""
    builder = BlockBuilder(None)
    builder.add_fact(_string_fact("delegator", delegator))
    builder.add_fact(_string_fact("delegate", delegate))
    builder.add_fact(_string_fact("context", context))
    for domain in domains or ():
        builder.add_fact(_string_fact("domain", domain))
    if principal is not None:
        builder.add_fact(_string_fact("principal", principal))
    if budget_cents is not None:
        builder.add_fact(_int_fact("budget_ceiling", budget_cents))
    if scopes:
        builder.add_check(_tool_check_statement(scopes))
    return builder


def append_delegation(
    biscuit: Biscuit, block: BlockBuilder, *, delegator_key: PrivateKey | None
) -> Biscuit:
    """Append ``block`` first-party, or as a third-party block signed by ``delegator_key``.

    A third-party block carries the delegator's own Ed25519 signature over the
    block and the previous block's signature, so it cannot be moved to another
    token; the reference still accepts it (it reads block sources only).
    """
    if delegator_key is None:
        return biscuit.append(block)
    request = biscuit.third_party_request()
    signed = request.create_block(biscuit_private_key(delegator_key), block)
    return biscuit.append_third_party(_biscuit_public_key(delegator_key.public_key.raw), signed)


# -- V6 -----------------------------------------------------------------------------------------


def authorize_tool(biscuit: Biscuit, *, tool: str, now: int, depth: int) -> None:
    """V6: a Biscuit authorizer with only ``tool``, ``time`` and ``depth`` as ambient facts.

    ``tool`` is bound as a parameter, never formatted into Datalog (aip.md §6).

    :raises ScopeInsufficient: ``aip.scope_insufficient`` at step 6: a check in some block fails.
    """
    builder = AuthorizerBuilder()
    builder.add_fact(Fact("tool({tool})", {"tool": tool}))
    builder.add_fact(Fact("time({time})", {"time": datetime.fromtimestamp(now, UTC)}))
    builder.add_fact(Fact("depth({depth})", {"depth": depth}))
    builder.add_policy(Policy("allow if tool({tool})", {"tool": tool}))
    # Biscuit's default 1 ms wall-clock cap made a valid token fail on a busy machine (seen in
    # CI): the fact and iteration caps bound the work deterministically; time is a backstop.
    limits = builder.limits()  # type: ignore[attr-defined]  # missing from the 0.4 stub
    limits.max_time = _DATALOG_MAX_TIME
    builder.set_limits(limits)  # type: ignore[attr-defined]
    try:
        builder.build(biscuit).authorize()
    except _BISCUIT_ERRORS as exc:
        raise ScopeInsufficient(
            f"tool: {tool!r} is not authorised by every block",
            code="aip.scope_insufficient",
            step=6,
        ) from exc
