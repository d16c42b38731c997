"""A self-contained HTML report of a verified log bundle: usage, cost, delegations, findings.

::

    page = render(AuditedLog.open(bundle, log_key=key), reconciliation=result)
    Path("report.html").write_text(page, encoding="utf-8")

One file with inline CSS and inline SVG charts drawn here: no script, no external font, image
or style sheet, so it opens offline and is safe to mail. Every string that comes from the log
or the invoice is HTML-escaped (:func:`html.escape`), so a model called ``<script>`` is text.

Sections: totals; tokens (input, visible output, hidden reasoning) and cost per agent, per
model and per UTC day; the share of output tokens that is hidden reasoning; one delegation
graph per session (principal -> agents, one edge per hop); the billing findings when a
:class:`~tallystick.verifier.billing.Reconciliation` is given. Unknown counts and prices are
shown as unknown, never as zero.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC as _UTC
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from .billing import Reconciliation
from .logentry import EntryKind
from .provenance import AuditedLog, TokenIndex, TokenVersion, build_index

__all__ = ["render"]

_BAR_HEIGHT: Final = 18
_LABEL_WIDTH: Final = 200
_CHART_WIDTH: Final = 760
_MAX_ROWS: Final = 30
_COLOURS: Final = {"input": "#4e79a7", "visible": "#59a14f", "reasoning": "#e15759"}
_CSS: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.num{text-align:right}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:bold}.muted{color:#777}
svg{display:block;margin:8px 0}svg text{font:12px sans-serif}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(slots=True)
class _Tally:
    """Sums for one group; ``unknown`` counts calls whose count was not reported."""

    calls: int = 0
    input: int = 0
    output: int = 0
    reasoning: int = 0
    unknown: int = 0
    cost: dict[str, Decimal] = field(default_factory=dict)
    unpriced: int = 0

    def add(self, body: dict[str, Any]) -> None:
        usage = body["usage"]
        self.calls += 1
        counts = (usage.get("input_tokens"), usage.get("output_tokens"))
        if None in counts:
            self.unknown += 1
        self.input += counts[0] or 0
        self.output += counts[1] or 0
        self.reasoning += usage.get("reasoning_output_tokens") or 0
        cost = body.get("cost")
        if cost is None:
            self.unpriced += 1
        else:
            currency = cost["currency"]
            self.cost[currency] = self.cost.get(currency, Decimal(0)) + Decimal(cost["amount"])

    def cost_text(self) -> str:
        parts = [f"{amount} {currency}" for currency, amount in sorted(self.cost.items())]
        if self.unpriced:
            parts.append(f"{self.unpriced} unpriced")
        return ", ".join(parts) or "unknown"


@dataclass(slots=True)
class _Totals:
    by_agent: dict[str, _Tally] = field(default_factory=dict)
    by_model: dict[str, _Tally] = field(default_factory=dict)
    by_day: dict[str, _Tally] = field(default_factory=dict)
    all: _Tally = field(default_factory=_Tally)


def _totals(log: AuditedLog) -> _Totals:
    totals = _Totals()
    for entry, body in log.calls():
        day = datetime.fromtimestamp(entry.time_ms / 1000, tz=_UTC).date().isoformat()
        for table, key in (
            (totals.by_agent, entry.agent),
            (totals.by_model, body["model"]),
            (totals.by_day, day),
        ):
            table.setdefault(key, _Tally()).add(body)
        totals.all.add(body)
    return totals


def render(log: AuditedLog, *, reconciliation: Reconciliation | None = None) -> str:
    """The report of ``log`` (and of ``reconciliation``, when given) as one HTML document."""
    totals = _totals(log)
    tokens = build_index(log)
    share = _share(totals.all)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Tallystick report: {_e(log.bundle.origin)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Tallystick report: {_e(log.bundle.origin)}</h1>",
        f'<p class="ok">The log verified: {log.size} entries under its signed checkpoint.</p>',
        "<h2>Totals</h2>",
        _table(
            ("calls", "input tokens", "output tokens", "hidden reasoning", "cost"),
            [
                (
                    str(totals.all.calls),
                    str(totals.all.input),
                    str(totals.all.output),
                    f"{totals.all.reasoning} ({share})",
                    totals.all.cost_text(),
                )
            ],
        ),
        _unknown_note(totals.all),
        '<p class="legend">tokens:'
        + "".join(
            f'<span style="background:{colour}"></span>{name}' for name, colour in _COLOURS.items()
        )
        + "</p>",
    ]
    for title, table, chart_id in (
        ("agent", totals.by_agent, "chart-agent"),
        ("model", totals.by_model, "chart-model"),
        ("day (UTC)", totals.by_day, "chart-day"),
    ):
        parts.append(f"<h2>Tokens and cost per {title}</h2>")
        parts.append(_token_chart(chart_id, table))
        parts.append(_cost_chart(f"{chart_id}-cost", table))
    parts.append("<h2>Hidden reasoning share per model</h2>")
    parts.append(
        _table(
            ("model", "output tokens", "hidden reasoning", "share"),
            [
                (model, str(tally.output), str(tally.reasoning), _share(tally))
                for model, tally in sorted(totals.by_model.items())
            ],
        )
    )
    parts.append("<h2>Delegation graphs</h2>")
    parts.extend(_graphs(log, tokens) or ['<p class="muted">No delegations in the log.</p>'])
    if reconciliation is not None:
        parts.append(_findings(reconciliation))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _share(tally: _Tally) -> str:
    if not tally.output:
        return "n/a"
    return f"{100 * tally.reasoning / tally.output:.1f}%"


def _unknown_note(tally: _Tally) -> str:
    if not tally.unknown:
        return ""
    return (
        f'<p class="muted">{tally.unknown} call(s) reported no input or output count; '
        "they are not counted as zero tokens.</p>"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _rows(table: dict[str, _Tally]) -> list[tuple[str, _Tally]]:
    return sorted(table.items())[:_MAX_ROWS]


def _token_chart(chart_id: str, table: dict[str, _Tally]) -> str:
    """Stacked horizontal bars: input, visible output, hidden reasoning."""
    rows = _rows(table)
    scale = max((tally.input + tally.output for _, tally in rows), default=0) or 1
    height = _BAR_HEIGHT * len(rows) + 10
    items = []
    for position, (label, tally) in enumerate(rows):
        y = 5 + position * _BAR_HEIGHT
        x = float(_LABEL_WIDTH)
        items.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">{_e(label[:32])}</text>'
        )
        for part, value in (
            ("input", tally.input),
            ("visible", tally.output - tally.reasoning),
            ("reasoning", tally.reasoning),
        ):
            width = (_CHART_WIDTH - _LABEL_WIDTH - 120) * value / scale
            items.append(
                f'<rect class="bar" x="{x:.1f}" y="{y}" width="{width:.1f}" '
                f'height="{_BAR_HEIGHT - 4}" fill="{_COLOURS[part]}">'
                f"<title>{_e(label)}: {part} {value}</title></rect>"
            )
            x += width
        items.append(f'<text x="{x + 6:.1f}" y="{y + 13}">{tally.input + tally.output}</text>')
    return (
        f'<svg id="{chart_id}" class="chart" role="img" width="{_CHART_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_CHART_WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(items)}</svg>'
    )


def _cost_chart(chart_id: str, table: dict[str, _Tally]) -> str:
    """Bars of cost in the most used currency; other currencies and unpriced calls as text."""
    rows = _rows(table)
    currencies = sorted({c for _, tally in rows for c in tally.cost})
    if not currencies:
        return '<p class="muted">No recorded costs: prices unknown.</p>'
    currency = max(currencies, key=lambda c: sum(t.cost.get(c, Decimal(0)) for _, t in rows))
    scale = max((tally.cost.get(currency, Decimal(0)) for _, tally in rows), default=Decimal(0))
    height = _BAR_HEIGHT * len(rows) + 10
    items = []
    for position, (label, tally) in enumerate(rows):
        y = 5 + position * _BAR_HEIGHT
        amount = tally.cost.get(currency, Decimal(0))
        width = float((_CHART_WIDTH - _LABEL_WIDTH - 200) * amount / scale) if scale else 0.0
        items.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">{_e(label[:32])}</text>'
            f'<rect class="bar" x="{_LABEL_WIDTH}" y="{y}" width="{width:.1f}" '
            f'height="{_BAR_HEIGHT - 4}" fill="#f28e2b"><title>{_e(label)}: '
            f"{_e(tally.cost_text())}</title></rect>"
            f'<text x="{_LABEL_WIDTH + width + 6:.1f}" y="{y + 13}">{_e(tally.cost_text())}</text>'
        )
    return (
        f"<p>Cost ({_e(currency)}):</p>"
        f'<svg id="{chart_id}" class="chart" role="img" width="{_CHART_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_CHART_WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(items)}</svg>'
    )


# -- delegation graphs ---------------------------------------------------------------------------


def _sessions(log: AuditedLog, tokens: TokenIndex) -> dict[str, list[tuple[str, str, str]]]:
    """Edges ``(from, to, label)`` per session: principal -> issuing agent -> each hop's agent."""
    latest: dict[str, TokenVersion] = {}
    for entry in log.entries:
        if entry.kind is EntryKind.DELEGATION:
            version = tokens.version(entry.index)
            if version is not None:
                latest[version.token_id] = version
    sessions: dict[str, list[tuple[str, str, str]]] = {}
    for version in latest.values():
        principal = version.principal or "(no principal)"
        issuer = log.entries[tokens.versions(version.token_id)[0].index].agent
        session = version.session_id or f"{version.format.value} {version.token_id[:24]}"
        edges = sessions.setdefault(session, [])
        edges.append((principal, issuer, "issue"))
        previous = issuer
        for hop in version.hops:
            edges.append((previous, hop.agent_id, f"{hop.seq}: {hop.action_summary}"))
            previous = hop.agent_id
    return {name: list(dict.fromkeys(edges)) for name, edges in sessions.items()}


def _graphs(log: AuditedLog, tokens: TokenIndex) -> list[str]:
    return [
        f"<h3>Session {_e(session)}</h3>" + _graph_svg(number, edges)
        for number, (session, edges) in enumerate(sorted(_sessions(log, tokens).items()))
    ]


def _graph_svg(number: int, edges: list[tuple[str, str, str]]) -> str:
    """A layered drawing: each node in the column of its first-reached depth."""
    depth: dict[str, int] = {edges[0][0]: 0}
    for _ in range(len(edges)):
        for source, target, _label in edges:
            if source in depth and target not in depth:
                depth[target] = depth[source] + 1
    for source, target, _label in edges:
        depth.setdefault(source, 0)
        depth.setdefault(target, depth[source] + 1)
    columns: dict[int, list[str]] = {}
    for node, level in depth.items():
        columns.setdefault(level, []).append(node)
    place = {
        node: (40 + level * 220, 40 + row * 70)
        for level, nodes in columns.items()
        for row, node in enumerate(nodes)
    }
    width = 40 + (max(columns) + 1) * 220
    height = 40 + max(len(nodes) for nodes in columns.values()) * 70
    marker = f"arrow-{number}"
    items = [
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>'
    ]
    for source, target, label in edges:
        (x1, y1), (x2, y2) = place[source], place[target]
        items.append(
            f'<line class="edge" x1="{x1 + 150}" y1="{y1 + 15}" x2="{x2}" y2="{y2 + 15}" '
            f'stroke="#555" marker-end="url(#{marker})"><title>{_e(label)}</title></line>'
            f'<text x="{(x1 + 150 + x2) / 2:.0f}" y="{(y1 + y2) / 2 + 10:.0f}" '
            f'text-anchor="middle" fill="#555">{_e(label[:24])}</text>'
        )
    for node, (x, y) in place.items():
        fill = "#fde9c8" if depth[node] == 0 else "#dbe9f6"
        items.append(
            f'<g class="node"><rect x="{x}" y="{y}" width="150" height="30" rx="6" '
            f'fill="{fill}" stroke="#333"/><text x="{x + 75}" y="{y + 19}" '
            f'text-anchor="middle">{_e(node[:22])}</text><title>{_e(node)}</title></g>'
        )
    return (
        f'<svg id="graph-{number}" class="graph" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"{''.join(items)}</svg>"
    )


# -- billing findings ----------------------------------------------------------------------------


def _findings(result: Reconciliation) -> str:
    verdict = (
        '<p class="ok">The bill matches the signed records.</p>'
        if result.matches
        else f'<p class="bad">{len(result.findings)} billing finding(s).</p>'
    )
    rows = [
        (
            finding.kind.value,
            "" if finding.day is None else finding.day.isoformat(),
            finding.model or "",
            finding.request_id or "",
            finding.field or "",
            finding.billed or "",
            finding.recorded or "",
            ", ".join(str(index) for index in finding.entries[:20]),
            finding.detail,
        )
        for finding in result.findings
    ]
    header = ("kind", "day", "model", "request", "field", "billed", "recorded", "entries", "detail")
    return (
        '<h2 id="billing">Billing findings</h2>'
        f"<p>{_e(result.invoice_format.value)} invoice, {result.billed_items} billed item(s), "
        f"{result.recorded_calls} recorded call(s), tolerance "
        f"{_e(result.tolerance.relative * 100)}% and {_e(result.tolerance.cost)} in cost. "
        "Each finding's entries carry inclusion proofs: "
        "<code>tallystick billing reconcile --json</code>.</p>"
        + verdict
        + (_table(header, rows) if rows else "")
    )
