from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroupBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_BY_UNSPECIFIED: _ClassVar[GroupBy]
    GROUP_BY_PRINCIPAL: _ClassVar[GroupBy]
    GROUP_BY_AGENT: _ClassVar[GroupBy]
    GROUP_BY_SESSION: _ClassVar[GroupBy]
    GROUP_BY_MODEL: _ClassVar[GroupBy]
GROUP_BY_UNSPECIFIED: GroupBy
GROUP_BY_PRINCIPAL: GroupBy
GROUP_BY_AGENT: GroupBy
GROUP_BY_SESSION: GroupBy
GROUP_BY_MODEL: GroupBy

class GetProvenanceRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class ProvenanceEntry(_message.Message):
    __slots__ = ("index", "entry", "inclusion_proof", "role")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    entry: bytes
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    role: str
    def __init__(self, index: _Optional[int] = ..., entry: _Optional[bytes] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ..., role: _Optional[str] = ...) -> None: ...

class GetProvenanceResponse(_message.Message):
    __slots__ = ("checkpoint", "tree_size", "entries", "principal", "token_id")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    tree_size: int
    entries: _containers.RepeatedCompositeFieldContainer[ProvenanceEntry]
    principal: str
    token_id: str
    def __init__(self, checkpoint: _Optional[str] = ..., tree_size: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[ProvenanceEntry, _Mapping]]] = ..., principal: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class GetTotalsRequest(_message.Message):
    __slots__ = ("group_by", "from_ms", "to_ms", "principal", "agent", "session_id", "model")
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    TO_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    group_by: GroupBy
    from_ms: int
    to_ms: int
    principal: str
    agent: str
    session_id: str
    model: str
    def __init__(self, group_by: _Optional[_Union[GroupBy, str]] = ..., from_ms: _Optional[int] = ..., to_ms: _Optional[int] = ..., principal: _Optional[str] = ..., agent: _Optional[str] = ..., session_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class TokenSum(_message.Message):
    __slots__ = ("sum", "unknown_calls")
    SUM_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CALLS_FIELD_NUMBER: _ClassVar[int]
    sum: int
    unknown_calls: int
    def __init__(self, sum: _Optional[int] = ..., unknown_calls: _Optional[int] = ...) -> None: ...

class CostSum(_message.Message):
    __slots__ = ("currency", "amount", "calls")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    currency: str
    amount: str
    calls: int
    def __init__(self, currency: _Optional[str] = ..., amount: _Optional[str] = ..., calls: _Optional[int] = ...) -> None: ...

class GroupTotals(_message.Message):
    __slots__ = ("key", "calls", "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens", "reasoning_output_tokens", "costs", "unpriced_calls")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_CREATION_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_CALLS_FIELD_NUMBER: _ClassVar[int]
    key: str
    calls: int
    input_tokens: TokenSum
    cache_read_input_tokens: TokenSum
    cache_creation_input_tokens: TokenSum
    output_tokens: TokenSum
    reasoning_output_tokens: TokenSum
    costs: _containers.RepeatedCompositeFieldContainer[CostSum]
    unpriced_calls: int
    def __init__(self, key: _Optional[str] = ..., calls: _Optional[int] = ..., input_tokens: _Optional[_Union[TokenSum, _Mapping]] = ..., cache_read_input_tokens: _Optional[_Union[TokenSum, _Mapping]] = ..., cache_creation_input_tokens: _Optional[_Union[TokenSum, _Mapping]] = ..., output_tokens: _Optional[_Union[TokenSum, _Mapping]] = ..., reasoning_output_tokens: _Optional[_Union[TokenSum, _Mapping]] = ..., costs: _Optional[_Iterable[_Union[CostSum, _Mapping]]] = ..., unpriced_calls: _Optional[int] = ...) -> None: ...

class GetTotalsResponse(_message.Message):
    __slots__ = ("groups", "log_size")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupTotals]
    log_size: int
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupTotals, _Mapping]]] = ..., log_size: _Optional[int] = ...) -> None: ...
