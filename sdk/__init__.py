"""The Tallystick Python SDK: the sidecar client, delegation context and LLM-client wrappers.

::

    from openai import OpenAI
    from tallystick.sdk import Client, authorize, wrap

    with Client("unix:var/agents/orchestrator.sock") as sidecar:
        llm = wrap(OpenAI(), recorder=sidecar)             # every call recorded, usage and cost
        with authorize(sidecar, "alice@example.com", "s1", "Summarise Q3"):
            llm.chat.completions.create(model="gpt-4.1", messages=[...])

``wrap(..., coin_audit=CoinAuditor(sidecar))`` also audits the hidden reasoning tokens of
providers that attach a CoIn offer to their responses.

Modules: :mod:`~tallystick.sdk.client` (``Client``, ``AsyncClient``, ``Policy``),
:mod:`~tallystick.sdk.context` (the current delegation), :mod:`~tallystick.sdk.http` (passing
it between agents over HTTP), :mod:`~tallystick.sdk.tools` (``@tool``),
:mod:`~tallystick.sdk.wrap` with :mod:`~tallystick.sdk.adapters` (LLM clients),
:mod:`~tallystick.sdk.recount`, :mod:`~tallystick.sdk.otel` and :mod:`~tallystick.sdk.coin`
(CoIn audits of a provider's hidden reasoning tokens, through the sidecar).
"""

from .client import AsyncClient, Client, Policy
from .coin import CoinChallenge, CoinVerdict, audit_commitment, audit_offer, audit_offer_async
from .context import Delegation, authorize, current, delegate, run_in_context, use
from .errors import SidecarRejected, SidecarUnavailable, ToolNotAuthorized
from .http import DelegationAuth, from_headers, headers
from .tools import configure, tool
from .wrap import CoinAuditor, wrap

__all__ = [
    "AsyncClient",
    "Client",
    "CoinAuditor",
    "CoinChallenge",
    "CoinVerdict",
    "Delegation",
    "DelegationAuth",
    "Policy",
    "SidecarRejected",
    "SidecarUnavailable",
    "ToolNotAuthorized",
    "audit_commitment",
    "audit_offer",
    "audit_offer_async",
    "authorize",
    "configure",
    "current",
    "delegate",
    "from_headers",
    "headers",
    "run_in_context",
    "tool",
    "use",
    "wrap",
]
