"""``@tool("name")``: a tool runs only under a delegation that authorises it, and is recorded.

Before the function runs, the decorator checks the current delegation
(:func:`tallystick.sdk.context.current`) and refuses with
:class:`~.errors.ToolNotAuthorized` unless its scope names the tool: an HDP token's
``scope.authorized_tools`` (a token with no tool list authorises every tool), or an AIP
scope that covers ``tool:<name>`` (``tool:*`` covers all; the verifier's own matching). With
a client (given, or set by :func:`configure`) the sidecar checks the token too
(``verify_token(token, tool=...)``: signatures, expiry, revocation); an unreachable sidecar
raises :class:`~.errors.SidecarUnavailable` and the tool does not run, unless the client's
policy says ``on_unavailable_delegation="allow"``.

After it runs (or raises), one ``execute_tool`` record goes to the recorder:
``CallBody(provider="tool", model=name, operation="execute_tool", tool_name=name,
usage=Usage(), latency_ms=..., delegation_id/principal/session_id from the delegation)``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar, cast

from tallystick.verifier import hdp
from tallystick.verifier._internal.aip_links import covers
from tallystick.verifier.logentry import CallBody, DelegationFormat, Usage

from .client import AsyncClient, Client, TokenVerdict
from .context import Delegation, current
from .errors import ClientConfigError, SidecarUnavailable, ToolNotAuthorized
from .recorder import AsyncRecorder, Recorder

__all__ = ["TOOL_PROVIDER", "aip_tool", "configure", "permits", "tool"]

#: ``CallBody.provider`` of a tool record.
TOOL_PROVIDER: Final = "tool"
_AIP_TOOL_PREFIX: Final = "tool:"

_P = ParamSpec("_P")
_R = TypeVar("_R")
_logger = logging.getLogger("tallystick.sdk")


@dataclass(frozen=True, slots=True)
class _Defaults:
    client: Client | AsyncClient | None = None
    recorder: Recorder | AsyncRecorder | None = None


_defaults = _Defaults()


def configure(
    client: Client | AsyncClient | None, *, recorder: Recorder | AsyncRecorder | None = None
) -> None:
    """Set the client (sidecar checks, and the recorder unless ``recorder`` is given) that
    ``@tool`` uses when the decorator names none; ``configure(None)`` clears it."""
    global _defaults
    _defaults = _Defaults(client, recorder or client)


def aip_tool(name: str) -> str:
    """The AIP scope value of tool ``name``: ``tool:<name>`` (unchanged if already prefixed)."""
    return name if name.startswith(_AIP_TOOL_PREFIX) else _AIP_TOOL_PREFIX + name


def permits(delegation: Delegation, name: str) -> bool:
    """Whether ``delegation``'s own scope authorises tool ``name`` (no sidecar involved).

    :raises MalformedInput: an HDP delegation whose token does not parse.
    """
    if delegation.format is DelegationFormat.HDP:
        # The token itself, not Delegation.scopes: an empty list authorises nothing, while
        # no list at all authorises everything.
        tools = hdp.HdpToken.from_json(delegation.token).to_dict()["scope"].get("authorized_tools")
        return tools is None or name in tools
    wanted = aip_tool(name)
    return any(covers(pattern, wanted) for pattern in delegation.scopes)


def _wire_tool(delegation: Delegation, name: str) -> str:
    return name if delegation.format is DelegationFormat.HDP else aip_tool(name)


def _authorised_locally(name: str) -> Delegation:
    delegation = current()
    if delegation is None:
        raise ToolNotAuthorized(f"tool {name!r}: no current delegation", code="sdk.no_delegation")
    if not permits(delegation, name):
        raise ToolNotAuthorized(f"tool {name!r}: not in the current delegation's scope")
    return delegation


def _check_verdict(name: str, verdict: TokenVerdict) -> None:
    if not verdict.valid:
        raise ToolNotAuthorized(
            f"tool {name!r}: the sidecar refused the delegation: {verdict.detail}",
            code=verdict.code or ToolNotAuthorized.default_code,
            step=verdict.step,
        )


def _unavailable(client: Client | AsyncClient, name: str, exc: SidecarUnavailable) -> None:
    if client.policy.on_unavailable_delegation != "allow":
        raise exc
    _logger.warning("sdk.tool_unchecked tool=%s (sidecar unreachable, policy allow)", name)


def _tool_call(name: str, delegation: Delegation, started: float) -> CallBody:
    return CallBody(
        provider=TOOL_PROVIDER,
        model=name,
        operation="execute_tool",
        tool_name=name,
        usage=Usage(),
        latency_ms=int((time.perf_counter() - started) * 1000),
        delegation_id=delegation.token_id,
        principal=delegation.principal,
        session_id=delegation.session_id,
    )


def _recorder(
    name: str, client: Client | AsyncClient | None, recorder: Recorder | AsyncRecorder | None
) -> tuple[Client | AsyncClient | None, Recorder | AsyncRecorder]:
    client = client or _defaults.client
    chosen = recorder or client or _defaults.recorder
    if chosen is None:
        raise ClientConfigError(
            f"tool {name!r}: no recorder: pass recorder= or client=, or call configure(client)",
            code="sdk.not_configured",
        )
    return client, chosen


def tool(
    name: str,
    *,
    client: Client | AsyncClient | None = None,
    recorder: Recorder | AsyncRecorder | None = None,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a tool function (sync or ``async def``) as tool ``name``.

    A sync function needs a sync :class:`~.client.Client` and recorder; an async one takes
    either kind.

    :raises ToolNotAuthorized: (from the call) no current delegation (``sdk.no_delegation``),
        a scope without the tool (``sdk.tool_not_authorized``), or the sidecar's refusal (its
        code, e.g. ``hdp.revoked``); the function did not run.
    :raises SidecarUnavailable: (from the call) the sidecar could not check the token.
    :raises ClientConfigError: (from the call) no recorder, or an async one for a sync tool.
    """
    if not name:
        raise ClientConfigError("tool: the name must not be empty", code="sdk.bad_tool")

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[_P, _R], _async_tool(name, fn, client, recorder))

        @functools.wraps(fn)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            checker, chosen = _recorder(name, client, recorder)
            if isinstance(checker, AsyncClient) or inspect.iscoroutinefunction(chosen.record):
                raise ClientConfigError(
                    f"tool {name!r}: a sync tool needs a sync client and recorder",
                    code="sdk.not_configured",
                )
            delegation = _authorised_locally(name)
            if checker is not None:
                try:
                    verdict = checker.verify_token(
                        delegation.token, tool=_wire_tool(delegation, name)
                    )
                except SidecarUnavailable as exc:
                    _unavailable(checker, name, exc)
                else:
                    _check_verdict(name, verdict)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cast(Recorder, chosen).record(_tool_call(name, delegation, started))

        return run

    return decorate


def _async_tool(
    name: str,
    fn: Callable[..., Awaitable[Any]],
    client: Client | AsyncClient | None,
    recorder: Recorder | AsyncRecorder | None,
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        checker, chosen = _recorder(name, client, recorder)
        delegation = _authorised_locally(name)
        if checker is not None:
            try:
                checked = checker.verify_token(delegation.token, tool=_wire_tool(delegation, name))
                verdict = await checked if inspect.isawaitable(checked) else checked
            except SidecarUnavailable as exc:
                _unavailable(checker, name, exc)
            else:
                _check_verdict(name, verdict)
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            recorded = chosen.record(_tool_call(name, delegation, started))
            if inspect.isawaitable(recorded):
                await recorded

    return run
