from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginAuditRequest(_message.Message):
    __slots__ = ("head_note", "provider_vkey", "prompt", "answer", "domain", "sketch", "call_request_id", "attestation")
    HEAD_NOTE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_VKEY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    CALL_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    head_note: str
    provider_vkey: str
    prompt: str
    answer: str
    domain: str
    sketch: bytes
    call_request_id: str
    attestation: Attestation
    def __init__(self, head_note: _Optional[str] = ..., provider_vkey: _Optional[str] = ..., prompt: _Optional[str] = ..., answer: _Optional[str] = ..., domain: _Optional[str] = ..., sketch: _Optional[bytes] = ..., call_request_id: _Optional[str] = ..., attestation: _Optional[_Union[Attestation, _Mapping]] = ...) -> None: ...

class Attestation(_message.Message):
    __slots__ = ("format", "document")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    format: str
    document: bytes
    def __init__(self, format: _Optional[str] = ..., document: _Optional[bytes] = ...) -> None: ...

class BeginAuditResponse(_message.Message):
    __slots__ = ("audit_id", "head_entry_index", "challenge_entry_index", "nonce", "indices")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_ENTRY_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_ENTRY_INDEX_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    head_entry_index: int
    challenge_entry_index: int
    nonce: bytes
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, audit_id: _Optional[str] = ..., head_entry_index: _Optional[int] = ..., challenge_entry_index: _Optional[int] = ..., nonce: _Optional[bytes] = ..., indices: _Optional[_Iterable[int]] = ...) -> None: ...

class LeafOpening(_message.Message):
    __slots__ = ("index", "leaf", "salt", "token_id", "proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    leaf: bytes
    salt: bytes
    token_id: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., leaf: _Optional[bytes] = ..., salt: _Optional[bytes] = ..., token_id: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FinishAuditRequest(_message.Message):
    __slots__ = ("audit_id", "openings", "sketch_key")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    OPENINGS_FIELD_NUMBER: _ClassVar[int]
    SKETCH_KEY_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    openings: _containers.RepeatedCompositeFieldContainer[LeafOpening]
    sketch_key: bytes
    def __init__(self, audit_id: _Optional[str] = ..., openings: _Optional[_Iterable[_Union[LeafOpening, _Mapping]]] = ..., sketch_key: _Optional[bytes] = ...) -> None: ...

class FinishAuditResponse(_message.Message):
    __slots__ = ("consistent", "score", "flagged", "verdict_entry_index", "evidence", "error_code")
    CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_ENTRY_INDEX_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    consistent: bool
    score: float
    flagged: _containers.RepeatedScalarFieldContainer[str]
    verdict_entry_index: int
    evidence: bytes
    error_code: str
    def __init__(self, consistent: _Optional[bool] = ..., score: _Optional[float] = ..., flagged: _Optional[_Iterable[str]] = ..., verdict_entry_index: _Optional[int] = ..., evidence: _Optional[bytes] = ..., error_code: _Optional[str] = ...) -> None: ...
