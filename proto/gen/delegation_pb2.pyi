from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_FORMAT_UNSPECIFIED: _ClassVar[TokenFormat]
    TOKEN_FORMAT_HDP: _ClassVar[TokenFormat]
    TOKEN_FORMAT_AIP_COMPACT: _ClassVar[TokenFormat]
    TOKEN_FORMAT_AIP_CHAINED: _ClassVar[TokenFormat]
TOKEN_FORMAT_UNSPECIFIED: TokenFormat
TOKEN_FORMAT_HDP: TokenFormat
TOKEN_FORMAT_AIP_COMPACT: TokenFormat
TOKEN_FORMAT_AIP_CHAINED: TokenFormat

class IssueHdpRootRequest(_message.Message):
    __slots__ = ("principal_id", "principal_id_type", "session_id", "intent", "data_classification", "network_egress", "persistence", "authorized_tools", "max_hops", "ttl_ms", "agents")
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_ID_TYPE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_EGRESS_FIELD_NUMBER: _ClassVar[int]
    PERSISTENCE_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_TOOLS_FIELD_NUMBER: _ClassVar[int]
    MAX_HOPS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    principal_id: str
    principal_id_type: str
    session_id: str
    intent: str
    data_classification: str
    network_egress: bool
    persistence: bool
    authorized_tools: _containers.RepeatedScalarFieldContainer[str]
    max_hops: int
    ttl_ms: int
    agents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal_id: _Optional[str] = ..., principal_id_type: _Optional[str] = ..., session_id: _Optional[str] = ..., intent: _Optional[str] = ..., data_classification: _Optional[str] = ..., network_egress: _Optional[bool] = ..., persistence: _Optional[bool] = ..., authorized_tools: _Optional[_Iterable[str]] = ..., max_hops: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., agents: _Optional[_Iterable[str]] = ...) -> None: ...

class ExtendHdpRequest(_message.Message):
    __slots__ = ("token", "action_summary", "agent_type", "parent_hop", "agent_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PARENT_HOP_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    action_summary: str
    agent_type: str
    parent_hop: int
    agent_id: str
    def __init__(self, token: _Optional[str] = ..., action_summary: _Optional[str] = ..., agent_type: _Optional[str] = ..., parent_hop: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class HdpTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "hop_count", "head", "index")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    HOP_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    hop_count: int
    head: str
    index: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., hop_count: _Optional[int] = ..., head: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class IssueAipRequest(_message.Message):
    __slots__ = ("format", "principal", "subject_agent", "scopes", "max_depth", "budget_cents", "ttl_s", "audience", "domains")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_AGENT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CENTS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    format: TokenFormat
    principal: str
    subject_agent: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    max_depth: int
    budget_cents: int
    ttl_s: int
    audience: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, format: _Optional[_Union[TokenFormat, str]] = ..., principal: _Optional[str] = ..., subject_agent: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., max_depth: _Optional[int] = ..., budget_cents: _Optional[int] = ..., ttl_s: _Optional[int] = ..., audience: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ...) -> None: ...

class AttenuateAipRequest(_message.Message):
    __slots__ = ("token", "delegate_agent", "scopes", "context", "budget_cents", "domains")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_AGENT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CENTS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    token: str
    delegate_agent: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    context: str
    budget_cents: int
    domains: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token: _Optional[str] = ..., delegate_agent: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., context: _Optional[str] = ..., budget_cents: _Optional[int] = ..., domains: _Optional[_Iterable[str]] = ...) -> None: ...

class AipTokenResponse(_message.Message):
    __slots__ = ("token", "format", "token_id", "subject", "expires_at", "index")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    token: str
    format: TokenFormat
    token_id: str
    subject: str
    expires_at: int
    index: int
    def __init__(self, token: _Optional[str] = ..., format: _Optional[_Union[TokenFormat, str]] = ..., token_id: _Optional[str] = ..., subject: _Optional[str] = ..., expires_at: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class VerifyTokenRequest(_message.Message):
    __slots__ = ("token", "tool", "audience")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    token: str
    tool: str
    audience: str
    def __init__(self, token: _Optional[str] = ..., tool: _Optional[str] = ..., audience: _Optional[str] = ...) -> None: ...

class VerifyTokenResponse(_message.Message):
    __slots__ = ("valid", "format", "code", "step", "detail", "token_id", "principal", "subject", "depth", "expires_at_ms", "entries")
    VALID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    format: TokenFormat
    code: str
    step: int
    detail: str
    token_id: str
    principal: str
    subject: str
    depth: int
    expires_at_ms: int
    entries: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, valid: _Optional[bool] = ..., format: _Optional[_Union[TokenFormat, str]] = ..., code: _Optional[str] = ..., step: _Optional[int] = ..., detail: _Optional[str] = ..., token_id: _Optional[str] = ..., principal: _Optional[str] = ..., subject: _Optional[str] = ..., depth: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., entries: _Optional[_Iterable[int]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id", "reason")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    reason: str
    def __init__(self, token_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("index", "already_revoked")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    index: int
    already_revoked: bool
    def __init__(self, index: _Optional[int] = ..., already_revoked: _Optional[bool] = ...) -> None: ...
