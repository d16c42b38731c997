"""The audit commands end to end through the real CLI: billing reconcile, provenance, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from audit_bundles import DAY1_MS, call, write_bundle
from tallystick.verifier._cli import main
from tallystick.verifier.invoice import CSV_COLUMNS

HEADER = ",".join(CSV_COLUMNS)


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A two-call bundle and the path of its log.pub."""
    path, _ = write_bundle(
        tmp_path,
        [
            (DAY1_MS + 1_000, "alice", call("req_1")),
            (DAY1_MS + 2_000, "<b>bob</b>", call("req_2")),
        ],
    )
    return path, tmp_path / "log" / "log.pub"


def invoice(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "bill.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


GOOD = "req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015"
OVERBILLED = "req_2,2026-01-01T00:00:02Z,gpt-4o,100,20,90,10,0.0015"


def run(*argv: str) -> tuple[int, str, str]:
    process = subprocess.run(
        [sys.executable, "-m", "tallystick.verifier", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return process.returncode, process.stdout, process.stderr


def test_reconcile_exit_codes_and_json(
    tmp_path: Path, bundle: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = bundle
    good = invoice(tmp_path, GOOD, "req_2,2026-01-01T00:00:02Z,gpt-4o,100,20,50,10,0.0015")
    args = ["billing", "reconcile", str(path), "--log-key", str(pub)]
    assert main([*args, "--invoice", str(good)]) == 0
    assert capsys.readouterr().out.startswith("matches: csv invoice")
    bad = invoice(tmp_path, GOOD, OVERBILLED)
    assert main([*args, "--invoice", str(bad), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["matches"] is False
    (finding,) = document["findings"]
    assert (finding["kind"], finding["field"], finding["entries"]) == (
        "token_count_differs",
        "output_tokens",
        [1],
    )
    assert finding["proofs"][0]["leaf_index"] == 1
    assert main([*args, "--invoice", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "token_count_differs" in out and "output_tokens" in out
    # Within a stated tolerance the bill matches.
    assert main([*args, "--invoice", str(bad), "--tolerance", "50%"]) == 0


def test_reconcile_refuses_bad_input_with_exit_2_and_damage_with_exit_1(
    tmp_path: Path, bundle: tuple[Path, Path]
) -> None:
    path, pub = bundle
    broken = tmp_path / "broken.csv"
    broken.write_text("not,an,invoice\n", encoding="utf-8")
    code, out, err = run(
        "billing", "reconcile", str(path), "--log-key", str(pub), "--invoice", str(broken)
    )
    assert (code, out) == (2, "") and "invoice.bad_header" in err
    code, _, err = run(
        "billing",
        "reconcile",
        str(path),
        "--log-key",
        str(pub),
        "--invoice",
        str(broken),
        "--tolerance",
        "lots",
    )
    assert code == 2 and "--tolerance" in err
    damaged = tmp_path / "damaged.bundle"
    raw = path.read_bytes().splitlines(keepends=True)
    raw[1], raw[2] = raw[2], raw[1]  # two entries swapped
    damaged.write_bytes(b"".join(raw))
    good = invoice(tmp_path, GOOD)
    code, out, err = run(
        "billing",
        "reconcile",
        str(damaged),
        "--log-key",
        str(pub),
        "--invoice",
        str(good),
        "--json",
    )
    assert code == 1
    document = json.loads(out)
    assert document["valid"] is False and "findings" not in document
    assert document["damage"]["kind"] in {"index_mismatch", "chain_broken"}
    assert err == ""  # --json: no progress, nothing on stderr


def test_provenance_cli(
    tmp_path: Path, bundle: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = bundle
    assert main(["provenance", str(path), "--entry", "0", "--log-key", str(pub), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert (document["status"], document["verified"]) == ("no_delegation", False)
    assert document["entries"][0]["proof"]["tree_size"] == 2
    assert main(["provenance", str(path), "--entry", "0", "--log-key", str(pub)]) == 1
    assert capsys.readouterr().out.startswith("NOT VERIFIED (no_delegation): entry 0")
    code, _, err = run("provenance", str(path), "--entry", "9", "--log-key", str(pub))
    assert code == 2 and "provenance.index_out_of_range" in err


def test_report_cli_writes_escaped_html(tmp_path: Path, bundle: tuple[Path, Path]) -> None:
    path, pub = bundle
    out = tmp_path / "report.html"
    bill = invoice(tmp_path, GOOD, OVERBILLED)
    code, stdout, _ = run(
        "report", str(path), "--log-key", str(pub), "--html", str(out), "--invoice", str(bill)
    )
    assert code == 0 and "1 finding(s)" in stdout
    page = out.read_text(encoding="utf-8")
    assert "&lt;b&gt;bob&lt;/b&gt;" in page and "<b>bob</b>" not in page
    assert 'id="billing"' in page
