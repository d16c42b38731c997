"""The offline ``tallystick`` command line.

Exit codes: 0 valid or success; 1 the input was checked and rejected; 2 a
usage or input error (unreadable file, malformed key, bad option). Every
argument that names a token or file takes ``-`` for standard input.

Other installed packages add subcommands through the ``tallystick.cli`` entry-point
group: each entry point names a callable ``register(groups)``, which
:func:`build_parser` calls with ``{"": <top-level subparsers>, "log": <log subparsers>,
"audit": <audit subparsers>}`` (``argparse._SubParsersAction`` objects) so it can
``add_parser`` under any of them. A
subcommand sets ``handler=<callable(args) -> exit code>`` with ``set_defaults``; a
:class:`~tallystick.verifier.errors.TallystickError` it raises exits 2. An entry point
whose import fails (for instance the daemon's, in a verifier-only install without grpc)
is skipped, so the offline commands always work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import NoReturn

from . import __version__, aip, billing, coin, hdp, invoice, logbundle, provenance, report
from ._progress import Progress, progress_for
from .checkpoint import NoteVerifier
from .errors import KeyInvalid, TallystickError, UnsupportedVersion
from .keys import PrivateKey, PublicKey, load_private_key, load_public_key, save_private_key

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
#: 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe.
EXIT_BROKEN_PIPE = 141

#: Upper bound on what a command reads from a file or standard input.
MAX_INPUT_BYTES = 4 << 20

#: The entry-point group whose ``register(groups)`` callables add subcommands.
PLUGIN_GROUP = "tallystick.cli"

SubcommandGroups = dict[str, "argparse._SubParsersAction[argparse.ArgumentParser]"]
"""Subcommand groups by name: ``""`` is the top level, ``"log"`` and ``"audit"`` those commands'."""

#: What a ``tallystick.cli`` entry point names: it adds its subcommands to the groups.
Register = Callable[[SubcommandGroups], None]


class UsageError(Exception):
    """A problem with the command line or its files, reported with exit code 2."""


@dataclass(frozen=True)
class Verdict:
    """The result of a verify command, as ``--json`` prints it."""

    valid: bool
    format: str
    code: str | None
    step: int | None
    detail: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "valid": self.valid,
                "format": self.format,
                "code": self.code,
                "step": self.step,
                "detail": self.detail,
            },
            sort_keys=True,
        )

    @classmethod
    def rejected(cls, fmt: str, exc: TallystickError) -> Verdict:
        return cls(False, fmt, exc.code, exc.step, exc.detail)


# -- input helpers ------------------------------------------------------------------------------


def _read_input(spec: str, *, what: str, is_literal: Callable[[str], bool]) -> str:
    """Text from ``-`` (standard input), a literal token, or a file path."""
    if spec == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    elif is_literal(spec) and not _is_file(spec):
        return spec.strip()
    else:
        try:
            with Path(spec).open("rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {spec}: {exc.strerror}") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{what}: larger than {MAX_INPUT_BYTES} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what}: not UTF-8 text") from exc


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).is_file()
    except OSError:  # a long token is not a valid file name
        return False


def _is_json_literal(spec: str) -> bool:
    return spec.lstrip().startswith("{")


# One base64url Ed25519 public key in 64 begins with "-", which argparse reads as an option.
_DASH_LEADING_KEY = re.compile(r"-[A-Za-z0-9_-]{42}")
_PUBLIC_KEY_OPTIONS = frozenset({"--log-key", "--public-key"})
_AIP_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_\-.~=+/]{32,}")


def _is_aip_literal(spec: str) -> bool:
    return _AIP_TOKEN_TEXT.fullmatch(spec.strip()) is not None


def _private_key(path: str) -> PrivateKey:
    try:
        return load_private_key(Path(path))
    except KeyInvalid as exc:
        raise UsageError(str(exc)) from exc


def _public_key(spec: str) -> PublicKey:
    try:
        return load_public_key(spec)
    except KeyInvalid as exc:
        raise UsageError(str(exc)) from exc


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _usd(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite amount of zero or more")
    return value


def _report(verdict: Verdict, *, as_json: bool, summary: str) -> int:
    if as_json:
        print(verdict.to_json())
    elif verdict.valid:
        print(f"valid: {summary}")
    else:
        step = "" if verdict.step is None else f" (step {verdict.step})"
        print(f"invalid: {verdict.code}{step}: {verdict.detail}")
    return EXIT_OK if verdict.valid else EXIT_REJECTED


# -- commands -----------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise UsageError(f"keygen: {path} exists; refusing to overwrite a key")
    key = PrivateKey.generate()
    try:
        save_private_key(out, key)
        pub_path.write_text(key.public_key.to_b64url() + "\n", encoding="ascii")
    except OSError as exc:
        raise UsageError(f"keygen: cannot write {exc.filename}: {exc.strerror}") from exc
    print(key.public_key.to_b64url())
    return EXIT_OK


def cmd_hdp_issue(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    token = hdp.issue_root(
        key=key,
        principal_id=args.principal,
        principal_id_type=args.principal_type,
        session_id=args.session,
        intent=args.intent,
        data_classification=args.data_classification,
        authorized_tools=args.tool or None,
        max_hops=args.max_hops,
        issued_at_ms=_now_ms(),
        ttl_ms=args.ttl * 1000,
        profile=_profile(args.bind_agent),
    )
    print(token.to_json())
    return EXIT_OK


def _profile(bindings: list[str] | None) -> hdp.TallystickProfile | None:
    """The Tallystick profile binding ``AGENT_ID=KEY`` pairs, or None without any."""
    if not bindings:
        return None
    agents: dict[str, PublicKey] = {}
    for binding in bindings:
        agent_id, sep, key = binding.partition("=")
        if not sep or not agent_id or agent_id in agents:
            raise UsageError(f"--bind-agent: expected a distinct AGENT_ID=KEY, got {binding!r}")
        agents[agent_id] = _public_key(key)
    return hdp.TallystickProfile.for_agents(agents)


def cmd_hdp_extend(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    agent_key = _private_key(args.agent_key) if args.agent_key else None
    raw = _read_input(args.token, what="token", is_literal=_is_json_literal)
    try:
        token = hdp.HdpToken.from_json(raw)
        extended = hdp.extend(
            token,
            key=key,
            agent_id=args.agent_id,
            agent_type=args.agent_type,
            action_summary=args.action,
            timestamp_ms=_now_ms(),
            agent_key=agent_key,
        )
    except TallystickError as exc:
        print(f"tallystick: hdp extend: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_REJECTED
    print(extended.to_json())
    return EXIT_OK


def cmd_hdp_verify(args: argparse.Namespace) -> int:
    public_key = _public_key(args.public_key)
    raw = _read_input(args.token, what="token", is_literal=_is_json_literal)
    try:
        verified = hdp.verify(
            raw,
            public_key=public_key,
            accept_legacy_hdp01=args.accept_legacy_hdp01,
            profile=args.profile,
        )
    except TallystickError as exc:
        return _report(Verdict.rejected("hdp", exc), as_json=args.json, summary="")
    if args.session is not None and verified.token.session_id != args.session:
        verdict = Verdict(
            False, "hdp", "hdp.session_mismatch", None, "session: token belongs to another session"
        )
        return _report(verdict, as_json=args.json, summary="")
    findings = "; ".join(verified.findings)
    detail = f"{verified.hop_count} hop(s), {verified.generation}"
    if verified.profile_verified:
        detail += ", tallystick profile verified"
    if findings:
        detail += f"; {findings}"
    verdict = Verdict(True, "hdp", None, None, detail)
    return _report(
        verdict, as_json=args.json, summary=f"hdp token {verified.token.token_id}: {detail}"
    )


def cmd_aip_issue(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    now = int(time.time())
    if args.chained:
        if args.audience is not None:
            raise UsageError("aip issue: --audience applies to compact tokens only")
        token = aip.issue_chained(
            key=key,
            scopes=args.scope,
            max_depth=3 if args.max_depth is None else args.max_depth,
            budget_cents=None if args.budget_usd is None else round(args.budget_usd * 100),
            issued_at=now,
            ttl_s=args.ttl,
            principal=args.subject,
        )
    else:
        token = aip.issue_compact(
            key=key,
            subject=args.subject,
            scopes=args.scope,
            max_depth=0 if args.max_depth is None else args.max_depth,
            budget_usd=args.budget_usd,
            issued_at=now,
            ttl_s=args.ttl,
            audience=args.audience,
        )
    print(token)
    return EXIT_OK


def cmd_aip_delegate(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    raw = _read_input(args.token, what="token", is_literal=_is_aip_literal)
    try:
        root_key = _public_key(args.public_key) if args.public_key else aip.unverified_root_key(raw)
        token = aip.delegate_chained(
            raw,
            root_public_key=root_key,
            delegator_key=key,
            delegate=args.delegate,
            scopes=args.scope,
            context=args.context,
            budget_cents=None if args.budget_usd is None else round(args.budget_usd * 100),
        )
    except TallystickError as exc:
        print(f"tallystick: aip delegate: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_REJECTED
    print(token)
    return EXIT_OK


def cmd_aip_verify(args: argparse.Namespace) -> int:
    public_key = _public_key(args.public_key)
    raw = _read_input(args.token, what="token", is_literal=_is_aip_literal)
    fmt = "aip-compact" if raw.startswith("eyJ") else "aip-chained"
    try:
        verified = aip.verify(
            raw,
            public_key=public_key,
            now=int(time.time()),
            tool=args.tool,
            audience=args.audience,
        )
    except TallystickError as exc:
        return _report(Verdict.rejected(fmt, exc), as_json=args.json, summary="")
    detail = (
        f"issuer {verified.issuer}, depth {verified.depth}, scopes {', '.join(verified.scopes)}"
    )
    if args.tool:
        detail += f"; tool {args.tool} authorised"
    verdict = Verdict(True, verified.format, None, None, detail)
    return _report(verdict, as_json=args.json, summary=f"{verified.format} token: {detail}")


def _load_bundle(spec: str) -> logbundle.Bundle:
    """The bundle at path ``spec``, or on standard input for ``-``."""
    if spec == "-":
        return logbundle.Bundle.from_text(sys.stdin.buffer.read(logbundle.MAX_BUNDLE_BYTES + 1))
    return logbundle.Bundle.from_path(spec)


def cmd_log_verify(args: argparse.Namespace) -> int:
    log_key = _public_key(args.log_key)
    with progress_for(as_json=args.json) as progress:
        progress.stage("reading bundle")
        bundle = _load_bundle(args.bundle)
        progress.stage(f"verifying {bundle.size} entries")
        report = logbundle.verify_bundle(bundle, log_key=log_key, origin=args.origin)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    elif report.damage is None:
        print(
            f"valid: log {report.origin}: {report.size} entries, "
            f"{report.checkpoints} checkpoint(s) verified"
        )
    else:
        print(f"invalid: {report.damage}")
    return EXIT_OK if report.valid else EXIT_REJECTED


# -- audit verify: CoIn reasoning-token audit evidence ---------------------------------------------


def _note_verifier(spec: str | None, what: str) -> NoteVerifier | None:
    if spec is None:
        return None
    try:
        return NoteVerifier.from_vkey(spec.strip())
    except KeyInvalid as exc:
        raise UsageError(f"{what}: {exc}") from exc


def _evidence_unreadable(exc: TallystickError) -> bool:
    return isinstance(exc, UnsupportedVersion) or exc.code == "coin.evidence_unreadable"


def cmd_audit_verify(args: argparse.Namespace) -> int:
    log_key = _note_verifier(args.log_key, "--log-key")
    provider_key = _note_verifier(args.provider_key, "--provider-key")
    text = _read_input(args.evidence, what="evidence", is_literal=_is_json_literal)
    try:
        verdict: coin.Verdict | None = coin.verify_evidence(
            text, log_key=log_key, provider_key=provider_key
        )
        error: TallystickError | None = None
    except TallystickError as exc:
        if _evidence_unreadable(exc):
            raise
        verdict, error = None, exc
    consistent = verdict is not None and verdict.consistent
    if error is not None:
        code, detail = error.code, error.detail
    elif verdict is not None and not verdict.consistent:
        code, detail = "coin.flagged", f"flagged: {', '.join(verdict.flagged)}"
    else:
        code, detail = None, "consistent"
    if args.json:
        result = {
            "valid": error is None,
            "consistent": consistent,
            "format": coin.EVIDENCE_FORMAT,
            "code": code,
            "step": None,
            "detail": detail,
            "verdict": None if verdict is None else verdict.to_dict(),
        }
        print(json.dumps(result, sort_keys=True))
    elif verdict is not None and consistent:
        print(
            f"consistent: {verdict.reasoning_tokens} reasoning tokens committed, "
            f"{verdict.k} leaves opened, detection probability "
            f"{verdict.detection_probability:.4f} at p={verdict.p_assumed}"
        )
    else:
        print(f"not consistent: {code}: {detail}")
    return EXIT_OK if consistent else EXIT_REJECTED


def cmd_audit_verify_log(args: argparse.Namespace) -> int:
    out = None if args.out is None else Path(args.out)

    def then(log: provenance.AuditedLog, progress: Progress) -> int:
        progress.stage("re-checking CoIn audits")
        audits = coin.verify_log_audits(log, progress=progress.update)
        if out is not None:
            _write_evidence(out, audits)
        progress.close()
        passed = all(audit.passed for audit in audits)
        if args.json:
            result = {
                "valid": True,
                "origin": log.bundle.origin,
                "log_size": log.size,
                "consistent": passed,
                "counts": _audit_counts(audits),
                "audits": [audit.to_dict() for audit in audits],
            }
            print(json.dumps(result, sort_keys=True))
        else:
            _print_logged_audits(log, audits)
        return EXIT_OK if passed else EXIT_REJECTED

    return _with_audited_log(args, as_json=args.json, then=then)


def _audit_counts(audits: Sequence[coin.LoggedAudit]) -> dict[str, int]:
    return {
        status.value: sum(audit.status is status for audit in audits) for status in coin.AuditStatus
    }


def _write_evidence(out: Path, audits: Sequence[coin.LoggedAudit]) -> None:
    """Each audit's joined evidence as ``out/audit-<verdict entry>.json``; never overwrites."""
    files = [
        (out / f"audit-{audit.verdict_entry}.json", audit.evidence)
        for audit in audits
        if audit.evidence is not None
    ]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, _ in files:
            if path.exists():
                raise UsageError(f"--out: {path} exists; refusing to overwrite it")
        for path, raw in files:
            with path.open("xb") as handle:
                handle.write(raw)
    except FileExistsError as exc:
        raise UsageError(f"--out: {exc.filename} exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise UsageError(f"--out: cannot write {exc.filename or out}: {exc.strerror}") from exc


def _print_logged_audits(log: provenance.AuditedLog, audits: Sequence[coin.LoggedAudit]) -> None:
    where = f"log {log.bundle.origin} ({log.size} entries)"
    if not audits:
        print(f"valid: no CoIn audits in this log: {where}")
        return
    for audit in audits:
        if audit.passed and audit.verdict is not None:
            result = f"detection probability {audit.verdict.detection_probability:.4f}"
        else:
            result = f"{audit.code}: {audit.detail}"
        request = audit.call_request_id or "-"
        if audit.attestation is not None:  # recorded, not verified: say which document
            result += (
                f" (attestation {audit.attestation['format']} "
                f"sha256:{audit.attestation['sha256']}, not verified)"
            )
        print(f"entry {audit.verdict_entry} request {request}: {audit.status.value}: {result}")
    counts = ", ".join(f"{count} {status}" for status, count in _audit_counts(audits).items())
    summary = "valid" if all(audit.passed for audit in audits) else "NOT ALL CONSISTENT"
    print(f"{summary}: {len(audits)} CoIn audit(s) in {where}: {counts}")


# -- audit commands: billing, provenance, report -------------------------------------------------


def _audited_log(args: argparse.Namespace, progress: Progress) -> provenance.AuditedLog:
    """The bundle ``args.bundle``, verified against ``args.log_key`` (fails closed).

    :raises LogDamaged: the bundle does not verify.
    """
    log_key = _public_key(args.log_key)
    progress.stage("reading bundle")
    bundle = _load_bundle(args.bundle)
    progress.stage(f"verifying {bundle.size} entries")
    return provenance.AuditedLog.open(
        bundle, log_key=log_key, origin=args.origin, progress=progress.update
    )


def _damaged(exc: logbundle.LogDamaged, *, as_json: bool) -> int:
    """Report a bundle that failed verification: nothing else is reported from it."""
    if as_json:
        print(json.dumps({"valid": False, "damage": exc.damage.to_dict()}, sort_keys=True))
    else:
        print(f"invalid: the bundle does not verify, nothing checked: {exc.damage}")
    return EXIT_REJECTED


def _tolerance(text: str) -> Decimal:
    """``1%`` or ``0.01``: a fraction of zero or more."""
    percent = text.endswith("%")
    try:
        value = Decimal(text[:-1] if percent else text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError("must be a fraction (0.01) or a percentage (1%)") from exc
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value / 100 if percent else value


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError("must be a decimal amount") from exc
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError("must be a finite amount of zero or more")
    return value


def _load_invoice(spec: str, fmt: str) -> invoice.Invoice:
    if spec == "-":
        data = sys.stdin.buffer.read(invoice.MAX_INVOICE_BYTES + 1)
        return invoice.parse_invoice(data, format=fmt)
    return invoice.Invoice.from_path(spec, format=fmt)


def _reconcile(
    args: argparse.Namespace, log: provenance.AuditedLog, progress: Progress
) -> billing.Reconciliation:
    billed = _load_invoice(args.invoice, args.format)
    progress.stage("reconciling")
    return billing.reconcile(
        log,
        billed,
        tolerance=billing.Tolerance(relative=args.tolerance, cost=args.cost_tolerance),
        provider=args.provider,
        progress=progress.update,
    )


def _with_audited_log(
    args: argparse.Namespace,
    *,
    as_json: bool,
    then: Callable[[provenance.AuditedLog, Progress], int],
) -> int:
    """Verify the bundle, then run ``then``; a damaged bundle is reported and exits 1."""
    with progress_for(as_json=as_json) as progress:
        try:
            log = _audited_log(args, progress)
        except logbundle.LogDamaged as exc:
            progress.close()
            return _damaged(exc, as_json=as_json)
        return then(log, progress)


def cmd_billing_reconcile(args: argparse.Namespace) -> int:
    if args.bundle == "-" and args.invoice == "-":
        raise UsageError("billing reconcile: only one of BUNDLE and --invoice may be -")

    def then(log: provenance.AuditedLog, progress: Progress) -> int:
        result = _reconcile(args, log, progress)
        progress.close()
        if args.json:
            print(json.dumps(result.to_dict(), sort_keys=True))
        else:
            _print_reconciliation(result)
        return EXIT_OK if result.matches else EXIT_REJECTED

    return _with_audited_log(args, as_json=args.json, then=then)


def _print_reconciliation(result: billing.Reconciliation) -> None:
    days = f"{result.days[0]} to {result.days[-1]}" if result.days else "no days"
    tolerance = result.tolerance
    print(
        f"{'matches' if result.matches else 'DIFFERS'}: {result.invoice_format.value} invoice, "
        f"{days}: {result.billed_items} billed item(s), {result.recorded_calls} recorded call(s)"
    )
    print(
        f"log: {result.log_size} entries, verified against its signed checkpoint; tolerance "
        f"{tolerance.relative * 100}% and {tolerance.cost} in cost"
    )
    if result.unpriced:
        print(f"unpriced (no recorded cost, not compared): entries {_indexes(result.unpriced)}")
    if not result.findings:
        return
    print(f"{len(result.findings)} finding(s); proofs with --json:")
    rows = [("kind", "day", "model", "request", "field", "billed", "recorded", "entries")]
    for finding in result.findings:
        rows.append(
            (
                finding.kind.value,
                "" if finding.day is None else finding.day.isoformat(),
                finding.model or "",
                finding.request_id or "",
                finding.field or "",
                finding.billed or "",
                finding.recorded or "",
                _indexes(finding.entries),
            )
        )
    _print_table(rows)


def _indexes(indexes: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(index) for index in indexes[:limit])
    return shown + (f", ... ({len(indexes)})" if len(indexes) > limit else "")


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [min(40, max(len(row[column]) for row in rows)) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell[:width].ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def cmd_provenance(args: argparse.Namespace) -> int:
    def then(log: provenance.AuditedLog, progress: Progress) -> int:
        progress.close()
        found = provenance.provenance(log, args.entry)
        if args.json:
            print(json.dumps(found.to_dict(), sort_keys=True))
        else:
            _print_provenance(found)
        return EXIT_OK if found.verified else EXIT_REJECTED

    return _with_audited_log(args, as_json=args.json, then=then)


def _print_provenance(found: provenance.Provenance) -> None:
    verdict = "verified" if found.verified else f"NOT VERIFIED ({found.status.value})"
    print(f"{verdict}: entry {found.index} ({found.kind}) by agent {found.agent}: {found.detail}")
    if found.principal:
        print(f"principal: {found.principal}")
    if found.token_id:
        print(f"token: {found.token_id} ({found.format or 'not in the log'})")
    if found.intent:
        print(f"intent: {found.intent}")
    if found.scopes:
        print(f"scope: {', '.join(found.scopes)}")
    for hop in found.hops:
        print(
            f"  hop {hop.seq}: {hop.agent_id} ({hop.agent_type}): {hop.action_summary} "
            f"[{hop.status}]"
        )
    for item in found.entries:
        proof = item.proof
        print(
            f"  entry {item.index} {item.role} by {item.agent} [{item.status}]: included in the "
            f"tree of size {proof.tree_size}, root {proof.root_hash.hex()[:16]}..."
        )


def cmd_report(args: argparse.Namespace) -> int:
    def then(log: provenance.AuditedLog, progress: Progress) -> int:
        result = _reconcile(args, log, progress) if args.invoice else None
        progress.stage("writing report")
        page = report.render(log, reconciliation=result)
        try:
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"report: cannot write {args.html}: {exc.strerror}") from exc
        progress.close()
        billed = "" if result is None else f", billing: {len(result.findings)} finding(s)"
        print(f"wrote {args.html}: {log.size} entries{billed}")
        return EXIT_OK

    return _with_audited_log(args, as_json=False, then=then)


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every offline command, plus the installed plugins' commands."""
    return _build_parser(_load_plugins(entry_points(group=PLUGIN_GROUP)))


def _load_plugins(points: Iterable[EntryPoint]) -> list[Register]:
    """The ``register`` callables of ``points``, skipping those whose import fails."""
    registers: list[Register] = []
    for point in points:
        try:
            registers.append(point.load())
        except ImportError:  # an optional part that is not installed here
            continue
    return registers


def _build_parser(plugins: Iterable[Register]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallystick",
        description="Offline audit tools: keys, HDP and AIP delegation tokens, log bundles.",
        epilog="Exit codes: 0 valid/success, 1 checked and rejected, 2 usage or input error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="create an Ed25519 key pair")
    keygen.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="private key (PEM, mode 0600); PATH.pub gets the public key",
    )
    keygen.set_defaults(handler=cmd_keygen)

    key_help = "64 hex or 43 base64url characters, or a .pub / PEM file"
    token_help = "the token, a file holding it, or - for standard input"

    hdp_parser = commands.add_parser("hdp", help="HDP delegation tokens")
    hdp_commands = hdp_parser.add_subparsers(dest="hdp_command", required=True, metavar="COMMAND")

    issue = hdp_commands.add_parser("issue", help="issue a root token (prints JSON)")
    issue.add_argument("--key", required=True, metavar="PATH", help="issuer private key (PEM)")
    issue.add_argument("--principal", required=True, metavar="ID", help="the human principal's id")
    issue.add_argument(
        "--principal-type",
        default="opaque",
        metavar="TYPE",
        help="email, uuid, did, poh, opaque or x-... (default opaque)",
    )
    issue.add_argument("--session", required=True, metavar="SID", help="session id")
    issue.add_argument(
        "--intent", required=True, metavar="TEXT", help="what the principal asked for"
    )
    issue.add_argument(
        "--tool", action="append", metavar="NAME", help="an authorised tool (repeatable)"
    )
    issue.add_argument("--max-hops", type=_positive, metavar="N", help="maximum chain length")
    issue.add_argument(
        "--data-classification",
        default="internal",
        choices=["public", "internal", "confidential", "restricted"],
    )
    issue.add_argument(
        "--ttl", type=_positive, default=86_400, metavar="SECONDS", help="lifetime (default 86400)"
    )
    issue.add_argument(
        "--bind-agent",
        action="append",
        metavar="AGENT_ID=KEY",
        help="issue a Tallystick-profile token whose hops AGENT_ID must co-sign with KEY "
        "(repeatable; plain HDP verifiers still accept the token)",
    )
    issue.set_defaults(handler=cmd_hdp_issue)

    extend = hdp_commands.add_parser("extend", help="append a signed hop (prints JSON)")
    extend.add_argument("token", metavar="TOKEN", help=token_help)
    extend.add_argument("--key", required=True, metavar="PATH", help="issuer private key (PEM)")
    extend.add_argument("--agent-id", required=True, metavar="ID")
    extend.add_argument(
        "--agent-type",
        default="sub-agent",
        choices=["orchestrator", "sub-agent", "tool-executor", "custom"],
    )
    extend.add_argument("--action", required=True, metavar="TEXT", help="action summary")
    extend.add_argument(
        "--agent-key", metavar="PATH", help="the agent's own key (Tallystick profile tokens)"
    )
    extend.set_defaults(handler=cmd_hdp_extend)

    verify = hdp_commands.add_parser("verify", help="verify a token (draft-03 steps 0-5)")
    verify.add_argument("token", metavar="TOKEN", help=token_help)
    verify.add_argument("--public-key", required=True, metavar="KEY", help=key_help)
    verify.add_argument("--session", metavar="SID", help="also require this session id")
    verify.add_argument(
        "--profile",
        default="auto",
        choices=["auto", "require", "off"],
        help="Tallystick profile checks (default auto)",
    )
    verify.add_argument(
        "--accept-legacy-hdp01",
        action="store_true",
        help="also accept the SDK 0.1.x signing payload",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=cmd_hdp_verify)

    aip_parser = commands.add_parser("aip", help="AIP capability tokens")
    aip_commands = aip_parser.add_subparsers(dest="aip_command", required=True, metavar="COMMAND")

    aissue = aip_commands.add_parser(
        "issue", help="issue a compact (JWT) or chained (Biscuit) token"
    )
    aissue.add_argument("--key", required=True, metavar="PATH", help="issuer private key (PEM)")
    aissue.add_argument(
        "--subject",
        required=True,
        metavar="ID",
        help="compact: the sub claim; chained: the principal fact",
    )
    aissue.add_argument(
        "--scope", required=True, action="append", metavar="S", help="e.g. tool:search (repeatable)"
    )
    aissue.add_argument(
        "--max-depth",
        type=_non_negative,
        metavar="N",
        help="further delegations allowed (default 0 compact, 3 chained)",
    )
    aissue.add_argument("--budget-usd", type=_usd, metavar="X")
    aissue.add_argument(
        "--ttl", type=_positive, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )
    aissue.add_argument(
        "--audience", metavar="AUD", help="bind a compact token to one verifier (aud)"
    )
    aissue.add_argument("--chained", action="store_true", help="issue a Biscuit chained token")
    aissue.set_defaults(handler=cmd_aip_issue)

    delegate = aip_commands.add_parser(
        "delegate", help="append an attenuated delegation (chained mode)"
    )
    delegate.add_argument("token", metavar="TOKEN", help=token_help)
    delegate.add_argument(
        "--key", required=True, metavar="PATH", help="the delegator's private key (PEM)"
    )
    delegate.add_argument("--delegate", required=True, metavar="ID")
    delegate.add_argument("--scope", required=True, action="append", metavar="S")
    delegate.add_argument(
        "--context", required=True, metavar="TEXT", help="why (must not be empty)"
    )
    delegate.add_argument("--budget-usd", type=_usd, metavar="X")
    delegate.add_argument(
        "--public-key",
        metavar="KEY",
        help=f"root key ({key_help}); default: the issuer's aip:key identity",
    )
    delegate.set_defaults(handler=cmd_aip_delegate)

    averify = aip_commands.add_parser("verify", help="verify a compact or chained token (V1-V7)")
    averify.add_argument("token", metavar="TOKEN", help=token_help)
    averify.add_argument("--public-key", required=True, metavar="KEY", help=key_help)
    averify.add_argument("--tool", metavar="NAME", help="authorise this tool invocation")
    averify.add_argument("--audience", metavar="AUD", help="this verifier's audience name")
    averify.add_argument("--json", action="store_true", help="print one JSON object")
    averify.set_defaults(handler=cmd_aip_verify)

    log_parser = commands.add_parser("log", help="the transparency log")
    log_commands = log_parser.add_subparsers(dest="log_command", required=True, metavar="COMMAND")
    lverify = log_commands.add_parser(
        "verify",
        help="verify an exported log bundle: entries, hash chain, tree, checkpoints, tokens",
        epilog="Exit codes: 0 valid, 1 damage found (the first bad entry is named), "
        "2 unreadable bundle or key.",
    )
    lverify.add_argument(
        "bundle", metavar="BUNDLE", help="the bundle file, or - for standard input"
    )
    lverify.add_argument(
        "--log-key",
        required=True,
        metavar="KEY",
        help=f"the log key ({key_help}); for a rotated log, pin its original key (or any key "
        "in the bundle's signed key history)",
    )
    lverify.add_argument("--origin", metavar="O", help="also require this checkpoint origin")
    lverify.add_argument("--json", action="store_true", help="print one JSON object")
    lverify.set_defaults(handler=cmd_log_verify)

    _add_audit_commands(commands, key_help)
    audit_commands = _add_coin_commands(commands, key_help)

    groups: SubcommandGroups = {"": commands, "log": log_commands, "audit": audit_commands}
    for register in plugins:
        register(groups)
    return parser


def _add_bundle_arguments(parser: argparse.ArgumentParser, key_help: str) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="the bundle file, or - for standard input")
    parser.add_argument("--log-key", required=True, metavar="KEY", help=f"the log key ({key_help})")
    parser.add_argument("--origin", metavar="O", help="also require this checkpoint origin")


def _add_invoice_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--invoice",
        required=required,
        metavar="FILE",
        help="the provider's usage export (OpenAI usage/costs JSON or per-request CSV), or -",
    )
    parser.add_argument(
        "--format", default="auto", choices=["auto", "openai", "csv"], help="default auto"
    )
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=Decimal(0),
        metavar="PCT",
        help="relative tolerance for counts and costs: 1%% or 0.01 (default 0, exact)",
    )
    parser.add_argument(
        "--cost-tolerance",
        type=_amount,
        default=Decimal(0),
        metavar="AMOUNT",
        help="absolute tolerance for costs, e.g. 0.000001 (default 0)",
    )
    parser.add_argument(
        "--provider", metavar="P", help="compare only calls of this provider (default: all)"
    )


def _add_audit_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], key_help: str
) -> None:
    billing_parser = commands.add_parser("billing", help="check a provider's bill offline")
    billing_commands = billing_parser.add_subparsers(
        dest="billing_command", required=True, metavar="COMMAND"
    )
    breconcile = billing_commands.add_parser(
        "reconcile",
        help="compare a provider's usage export with the signed call records of a bundle",
        epilog="Exit codes: 0 the bill matches, 1 findings (or a damaged bundle), "
        "2 unreadable input.",
    )
    _add_bundle_arguments(breconcile, key_help)
    _add_invoice_arguments(breconcile, required=True)
    breconcile.add_argument("--json", action="store_true", help="print one JSON object")
    breconcile.set_defaults(handler=cmd_billing_reconcile)

    prov = commands.add_parser(
        "provenance",
        help="the chain from an entry back to the human principal, with proofs",
        epilog="Exit codes: 0 the chain verified, 1 it did not (or a damaged bundle), "
        "2 unreadable input or no such entry.",
    )
    _add_bundle_arguments(prov, key_help)
    prov.add_argument("--entry", required=True, type=_non_negative, metavar="I")
    prov.add_argument("--json", action="store_true", help="print one JSON object")
    prov.set_defaults(handler=cmd_provenance)

    rep = commands.add_parser(
        "report",
        help="write a self-contained HTML report of a bundle",
        epilog="Exit codes: 0 written, 1 a damaged bundle, 2 unreadable input.",
    )
    _add_bundle_arguments(rep, key_help)
    rep.add_argument("--html", required=True, metavar="OUT", help="the HTML file to write")
    _add_invoice_arguments(rep, required=False)
    rep.set_defaults(handler=cmd_report)


def _add_coin_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], key_help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    audit = commands.add_parser("audit", help="hidden reasoning-token audits (CoIn)")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    averify = audit_commands.add_parser(
        "verify",
        help="re-check a logged audit's evidence offline: head signature, challenge, openings, "
        "flags and verdict",
        epilog="Exit codes: 0 consistent, 1 not consistent (flagged) or tampered, "
        "2 unreadable evidence or key.",
    )
    averify.add_argument("evidence", metavar="EVIDENCE", help="the evidence JSON file, or -")
    averify.add_argument(
        "--provider-key", metavar="VKEY", help="pin the provider's note key (C2SP vkey text)"
    )
    averify.add_argument(
        "--log-key", metavar="VKEY", help="require the log's countersignature on the head (vkey)"
    )
    averify.add_argument("--json", action="store_true", help="print one JSON object")
    averify.set_defaults(handler=cmd_audit_verify)
    vlog = audit_commands.add_parser(
        "verify-log",
        help="re-check every audit logged in an exported bundle: evidence parts, evidence, "
        "the log's countersignature, head and challenge entries, logged verdict",
        epilog="Exit codes: 0 every audit consistent (or none logged), 1 any flagged, failed "
        "or invalid audit (or a damaged bundle), 2 unreadable input.",
    )
    _add_bundle_arguments(vlog, key_help)
    vlog.add_argument(
        "--out",
        metavar="DIR",
        help="write each audit's evidence as DIR/audit-<verdict entry>.json (never overwrites)",
    )
    vlog.add_argument("--json", action="store_true", help="print one JSON object")
    vlog.set_defaults(handler=cmd_audit_verify_log)
    return audit_commands


def _fail(message: str) -> NoReturn:
    print(f"tallystick: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _attach_dash_leading_keys(argv: Sequence[str]) -> list[str]:
    """Write ``--log-key -Abc…`` as ``--log-key=-Abc…``, so that a key pastes as it prints."""
    words: list[str] = []
    for word in argv:
        if words and words[-1] in _PUBLIC_KEY_OPTIONS and _DASH_LEADING_KEY.fullmatch(word):
            words[-1] += "=" + word
        else:
            words.append(word)
    return words


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(_attach_dash_leading_keys(sys.argv[1:] if argv is None else argv))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        _fail(str(exc))
    except TallystickError as exc:
        _fail(f"{exc.code}: {exc.detail}")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as a program killed by SIGPIPE would,
        # and keep the interpreter from reporting the failed flush of stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
