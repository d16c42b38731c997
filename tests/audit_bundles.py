"""Real log bundles for the audit tests: a real ``tallystick.daemon.log.Log`` in a temp dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tallystick.daemon.log import Log
from tallystick.verifier.keys import PublicKey, load_public_key
from tallystick.verifier.logbundle import Bundle
from tallystick.verifier.logentry import CallBody, Cost, EntryKind, Usage
from tallystick.verifier.provenance import AuditedLog

#: 2026-01-01T00:00:00Z in milliseconds.
DAY1_MS = 1_767_225_600_000
DAY_MS = 86_400_000


def call(
    request_id: str | None,
    *,
    model: str = "gpt-4o",
    input_tokens: int | None = 100,
    cached: int | None = 20,
    output_tokens: int | None = 50,
    reasoning: int | None = 10,
    cost: str | None = "0.0015",
    **fields: Any,
) -> CallBody:
    """A call body with the given counts (``None`` = unknown)."""
    return CallBody(
        provider=fields.pop("provider", "openai"),
        model=model,
        request_id=request_id,
        usage=Usage(
            input_tokens=input_tokens,
            cache_read_input_tokens=cached,
            output_tokens=output_tokens,
            reasoning_output_tokens=reasoning,
        ),
        cost=None if cost is None else Cost(amount=cost, currency="USD"),
        **fields,
    )


def write_bundle(
    directory: Path, calls: Sequence[tuple[int, str, CallBody | dict[str, Any]]]
) -> tuple[Path, PublicKey]:
    """Append ``(time_ms, agent, body)`` entries to a fresh log, export it: (bundle, log key).

    A :class:`CallBody` is a ``call`` entry; a plain object is an ``audit`` entry.
    """
    now = [calls[0][0] if calls else DAY1_MS]
    log = Log.open(directory / "log", clock_ms=lambda: now[0])
    try:
        for time_ms, agent, body in calls:
            now[0] = time_ms
            if isinstance(body, CallBody):
                log.append_calls(agent, [body])
            else:
                log.append(EntryKind.AUDIT, agent, body)
        out = directory / "log.bundle"
        log.export(out)
    finally:
        log.close()
    return out, load_public_key(str(directory / "log" / "log.pub"))


def audited(
    directory: Path, calls: Sequence[tuple[int, str, CallBody | dict[str, Any]]]
) -> AuditedLog:
    """The verified bundle of ``calls``."""
    path, key = write_bundle(directory, calls)
    return AuditedLog.open(Bundle.from_path(path), log_key=key)
