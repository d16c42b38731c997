"""HDP draft-03 step 0: input validation of an HDP token's JSON tree.

The rules and their order follow ``_validate_token_input`` in hdp-autogen 0.2.0
(the draft-03 Python reference, hdp.md §4 step 0), so both verifiers reject the
same inputs at step 0. Two deliberate differences: integers outside the
IEEE-754 safe range are rejected everywhere (the reference accepts any exactly
representable integer in unchecked members such as ``principal.metadata``),
and nesting deeper than ``MAX_JSON_DEPTH`` is rejected.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from ..canonical import MAX_JSON_DEPTH, MAX_SAFE_INTEGER
from ..errors import MalformedInput

SCHEMA_INVALID = "hdp.schema_invalid"
TOP_LEVEL_MEMBERS = frozenset({"hdp", "header", "principal", "scope", "chain", "signature"})
#: The only ``signed_fields`` value -03 tolerates (SDK 0.1.x output, deprecated).
LEGACY_SIGNED_FIELDS = ["header", "principal", "scope"]

_PRINCIPAL_ID_TYPES = frozenset({"opaque", "email", "uuid", "did", "poh"})
_DATA_CLASSIFICATIONS = frozenset({"public", "internal", "confidential", "restricted"})
# fullmatch, never `$`: "x-custom\n" must fail (expected-outcomes case
# id_type_x_custom_trailing_newline).
_EXTENSION_ID_TYPE = re.compile(r"x-[^\r\n\u2028\u2029]+")
_SIGNATURE_TEXT = re.compile(r"[A-Za-z0-9_-]{86}")
# What `str(UUID(s)) == s.lower()` accepts: the hyphenated form in either case;
# version 4 additionally needs the RFC 4122 variant (8, 9, a or b).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_V4 = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)


def fail(message: str) -> NoReturn:
    """Raise the step-0 rejection.

    :raises MalformedInput: always, code ``hdp.schema_invalid``.
    """
    raise MalformedInput(f"hdp token: {message}", code=SCHEMA_INVALID, step=0)


def json_copy(value: Any, depth: int = 0) -> Any:
    """A deep copy of a JSON tree built from Python objects, checking it is JSON.

    :raises MalformedInput: non-JSON types, non-string keys, non-finite floats,
        unsafe integers, lone surrogates or nesting beyond ``MAX_JSON_DEPTH``.
    """
    if depth > MAX_JSON_DEPTH:
        fail("nested too deeply")
    if isinstance(value, str):
        _check_text(value)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return int(value)
        fail("integer outside the IEEE-754 safe range")
    if isinstance(value, float):
        if value - value == 0.0:  # false for NaN and both infinities
            return value
        fail("non-finite number")
    if isinstance(value, dict):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                fail("object member names must be strings")
            _check_text(key)
            copied[key] = json_copy(item, depth + 1)
        return copied
    if isinstance(value, list):
        return [json_copy(item, depth + 1) for item in value]
    fail(f"{type(value).__name__} is not a JSON value")


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            fail("string is not valid Unicode")


def _is_int_in(value: Any, low: int) -> bool:
    return type(value) is int and low <= value <= MAX_SAFE_INTEGER


def validate_token(token: Any) -> dict[str, Any]:
    """Check the draft-03 step-0 rules on a JSON tree (already checked to be JSON).

    :raises MalformedInput: the first rule broken, code ``hdp.schema_invalid``, step 0.
    """
    if not isinstance(token, dict):
        fail("token must be a JSON object")
    if token.keys() != TOP_LEVEL_MEMBERS:
        fail("token must contain exactly the six defined top-level members")
    if not isinstance(token["hdp"], str):
        fail("hdp must be a string")
    header = token["header"]
    if not isinstance(header, dict):
        fail("header must be an object")
    _check_signature(token["signature"])
    principal = token["principal"]
    if not isinstance(principal, dict):
        fail("principal must be an object")
    scope = token["scope"]
    if not isinstance(scope, dict):
        fail("scope must be an object")
    chain = token["chain"]
    if not isinstance(chain, list) or not all(isinstance(hop, dict) for hop in chain):
        fail("chain must be an array of objects")
    _check_header(header)
    _check_principal(principal)
    _check_scope(scope)
    for index, hop in enumerate(chain):
        _check_hop(index, hop)
    return token


def _check_signature(signature: Any) -> None:
    if not isinstance(signature, dict):
        fail("signature must be an object")
    for name in ("alg", "kid", "value"):
        if not isinstance(signature.get(name), str):
            fail(f"signature.{name} must be a string")
    if not signature["kid"]:
        fail("signature.kid must not be empty")
    if _SIGNATURE_TEXT.fullmatch(signature["value"]) is None:
        fail("signature.value must be 86 characters of base64url")
    if "signed_fields" in signature and signature["signed_fields"] != LEGACY_SIGNED_FIELDS:
        fail('signature.signed_fields must be ["header","principal","scope"]')


def _check_header(header: dict[str, Any]) -> None:
    token_id = header.get("token_id")
    if not isinstance(token_id, str) or _UUID_V4.fullmatch(token_id) is None:
        fail("header.token_id must be a version 4 UUID")
    for name in ("issued_at", "expires_at"):
        if not _is_int_in(header.get(name), 0):
            fail(f"header.{name} must be an integer from 0 to {MAX_SAFE_INTEGER}")
    if header["expires_at"] <= header["issued_at"]:
        fail("header.expires_at must be greater than header.issued_at")
    session_id = header.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        fail("header.session_id must be a non-empty string")
    if not isinstance(header.get("version"), str):
        fail("header.version must be a string")
    if "parent_token_id" in header:
        parent = header["parent_token_id"]
        if not isinstance(parent, str) or _UUID.fullmatch(parent) is None:
            fail("header.parent_token_id must be a UUID")


def _check_principal(principal: dict[str, Any]) -> None:
    if not isinstance(principal.get("id"), str):
        fail("principal.id must be a string")
    id_type = principal.get("id_type")
    if not isinstance(id_type, str) or (
        id_type not in _PRINCIPAL_ID_TYPES and _EXTENSION_ID_TYPE.fullmatch(id_type) is None
    ):
        fail("principal.id_type must be a defined value or x-<name>")
    for name in ("poh_credential", "display_name"):
        if name in principal and not isinstance(principal[name], str):
            fail(f"principal.{name} must be a string")
    if "metadata" in principal and not isinstance(principal["metadata"], dict):
        fail("principal.metadata must be an object")


def _check_scope(scope: dict[str, Any]) -> None:
    if not isinstance(scope.get("intent"), str):
        fail("scope.intent must be a string")
    for name in ("authorized_tools", "authorized_resources"):
        if name in scope:
            values = scope[name]
            if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
                fail(f"scope.{name} must be an array of strings")
    classification = scope.get("data_classification")
    if not isinstance(classification, str) or classification not in _DATA_CLASSIFICATIONS:
        fail("scope.data_classification must be a defined classification")
    for name in ("network_egress", "persistence"):
        if not isinstance(scope.get(name), bool):
            fail(f"scope.{name} must be a boolean")
    if "max_hops" in scope and not _is_int_in(scope["max_hops"], 1):
        fail(f"scope.max_hops must be an integer from 1 to {MAX_SAFE_INTEGER}")
    if "constraints" in scope and not isinstance(scope["constraints"], list):
        fail("scope.constraints must be an array")
    if "extensions" in scope and not isinstance(scope["extensions"], dict):
        fail("scope.extensions must be an object")


def _check_hop(index: int, hop: dict[str, Any]) -> None:
    if not _is_int_in(hop.get("seq"), 1):
        fail(f"chain[{index}].seq must be an integer from 1 to {MAX_SAFE_INTEGER}")
    for name in ("agent_id", "agent_type", "action_summary"):
        if not isinstance(hop.get(name), str):
            fail(f"chain[{index}].{name} must be a string")
    if "agent_fingerprint" in hop and not isinstance(hop["agent_fingerprint"], str):
        fail(f"chain[{index}].agent_fingerprint must be a string")
    signature = hop.get("hop_signature")
    if not isinstance(signature, str) or _SIGNATURE_TEXT.fullmatch(signature) is None:
        fail(f"chain[{index}].hop_signature must be 86 characters of base64url")
    for name in ("timestamp", "parent_hop"):
        if not _is_int_in(hop.get(name), 0):
            fail(f"chain[{index}].{name} must be an integer from 0 to {MAX_SAFE_INTEGER}")
