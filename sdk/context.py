"""The current delegation: which token authorises what the code is doing now.

It lives in a :mod:`contextvars` variable, so it follows the code:

- **asyncio**: every task copies the context when it is created, so a task started inside
  ``with use(d):`` (or ``authorize`` / ``delegate``) sees ``d`` even after the block ends;
- **threads** do not inherit it. Submit work with :func:`run_in_context`
  (``run_in_context(executor, fn, *args)``), or run it with
  ``contextvars.copy_context().run(fn, *args)`` yourself;
- **HTTP** between agents: :mod:`tallystick.sdk.http`.

A principal authorizes a session once (:func:`authorize`: an HDP root through the sidecar);
each agent that hands work on adds its own hop (:func:`delegate`), in a nested scope that
ends with the ``with`` block. The wrappers stamp ``delegation_id`` (the token id),
``principal`` and ``session_id`` from :func:`current` on every record.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from tallystick.verifier import hdp
from tallystick.verifier.logentry import DelegationFormat

from .client import AsyncClient, Client, HdpGrant
from .errors import NoDelegation

__all__ = [
    "Delegation",
    "authorize",
    "authorize_async",
    "current",
    "delegate",
    "delegate_async",
    "run_in_context",
    "use",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Delegation:
    """A delegation token and what the SDK needs from it.

    ``token`` is the token's text (HDP: canonical JSON), ``token_id`` what a call records as
    ``delegation_id``; ``scopes`` are the tools it authorises (HDP ``authorized_tools``, AIP
    scopes such as ``tool:search``); empty means the token has no tool list.
    """

    token: str
    token_id: str
    format: DelegationFormat
    principal: str | None = None
    session_id: str | None = None
    scopes: tuple[str, ...] = ()

    @classmethod
    def from_hdp(cls, token: str, *, token_id: str | None = None) -> Delegation:
        """The delegation of an HDP token's JSON text (parsed, not verified).

        :raises MalformedInput: not an HDP token (``hdp.schema_invalid``).
        """
        parsed = hdp.HdpToken.from_json(token)
        data = parsed.to_dict()
        return cls(
            token=parsed.to_json(),
            token_id=token_id or parsed.token_id,
            format=DelegationFormat.HDP,
            principal=str(data["principal"]["id"]),
            session_id=parsed.session_id,
            scopes=tuple(data["scope"].get("authorized_tools") or ()),
        )


_CURRENT: ContextVar[Delegation | None] = ContextVar("tallystick_delegation", default=None)


def current() -> Delegation | None:
    """The delegation the running code acts under, or None."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(delegation: Delegation) -> Iterator[Delegation]:
    """Make ``delegation`` current inside the ``with`` block (sync or async code alike)."""
    reset = _CURRENT.set(delegation)
    try:
        yield delegation
    finally:
        _CURRENT.reset(reset)


def run_in_context(
    executor: Executor, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> Future[_R]:
    """``executor.submit(fn, ...)`` with the caller's context, current delegation included."""
    context = contextvars.copy_context()
    return executor.submit(context.run, functools.partial(fn, *args, **kwargs))


def _from_grant(grant: HdpGrant) -> Delegation:
    return Delegation.from_hdp(grant.token, token_id=grant.token_id)


@contextlib.contextmanager
def authorize(
    client: Client,
    principal_id: str,
    session_id: str,
    intent: str,
    *,
    authorized_tools: Sequence[str] = (),
    max_hops: int | None = None,
    ttl_ms: int | None = None,
    agents: Sequence[str] = (),
) -> Iterator[Delegation]:
    """A principal authorizes a session: an HDP root from the sidecar, current in the block.

    :raises SidecarRejected: the sidecar refused (``delegation.principal_not_permitted``, ...).
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed: nothing runs).
    """
    grant = client.issue_hdp_root(
        principal_id,
        session_id,
        intent,
        authorized_tools=authorized_tools,
        max_hops=max_hops,
        ttl_ms=ttl_ms,
        agents=agents,
    )
    with use(_from_grant(grant)) as delegation:
        yield delegation


def _current_hdp(what: str) -> Delegation:
    delegation = current()
    if delegation is None:
        raise NoDelegation(f"{what}: no current delegation (use authorize() or use() first)")
    if delegation.format is not DelegationFormat.HDP:
        raise NoDelegation(
            f"{what}: the current delegation is {delegation.format}, not hdp "
            "(attenuate AIP tokens with client.attenuate_aip)",
            code="sdk.not_hdp",
        )
    return delegation


@contextlib.contextmanager
def delegate(
    client: Client,
    action_summary: str,
    *,
    agent_type: str = "sub-agent",
    parent_hop: int | None = None,
) -> Iterator[Delegation]:
    """The client's agent extends the current HDP token with its own hop; the new token is
    current in the block (the outer one again after it).

    The current token must be the latest version the log holds for its token id. An agent that
    hands work to several sub-agents passes each the latest version and its own hop number as
    ``parent_hop`` (default: the previous hop), so the hops form a tree under it.

    :raises NoDelegation: no current delegation (``sdk.no_delegation``) or not HDP
        (``sdk.not_hdp``).
    :raises SidecarRejected: e.g. ``delegation.agent_not_bound``, ``hdp.max_hops_exceeded``.
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
    """
    parent = _current_hdp("delegate")
    grant = client.extend_hdp(
        parent.token, action_summary, agent_type=agent_type, parent_hop=parent_hop
    )
    with use(_from_grant(grant)) as delegation:
        yield delegation


@contextlib.asynccontextmanager
async def authorize_async(
    client: AsyncClient,
    principal_id: str,
    session_id: str,
    intent: str,
    *,
    authorized_tools: Sequence[str] = (),
    max_hops: int | None = None,
    ttl_ms: int | None = None,
    agents: Sequence[str] = (),
) -> AsyncIterator[Delegation]:
    """As :func:`authorize`, with an :class:`~.client.AsyncClient` (``async with``).

    :raises: as :func:`authorize`.
    """
    grant = await client.issue_hdp_root(
        principal_id,
        session_id,
        intent,
        authorized_tools=authorized_tools,
        max_hops=max_hops,
        ttl_ms=ttl_ms,
        agents=agents,
    )
    with use(_from_grant(grant)) as delegation:
        yield delegation


@contextlib.asynccontextmanager
async def delegate_async(
    client: AsyncClient,
    action_summary: str,
    *,
    agent_type: str = "sub-agent",
    parent_hop: int | None = None,
) -> AsyncIterator[Delegation]:
    """As :func:`delegate`, with an :class:`~.client.AsyncClient` (``async with``).

    :raises: as :func:`delegate`.
    """
    parent = _current_hdp("delegate")
    grant = await client.extend_hdp(
        parent.token, action_summary, agent_type=agent_type, parent_hop=parent_hop
    )
    with use(_from_grant(grant)) as delegation:
        yield delegation
