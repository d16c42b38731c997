"""The HTML report: self-contained, escaped, and loading cleanly in a REAL headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_bundles import DAY1_MS, DAY_MS, audited, call
from tallystick.verifier.billing import reconcile
from tallystick.verifier.invoice import CSV_COLUMNS, parse_invoice
from tallystick.verifier.logentry import CallBody
from tallystick.verifier.provenance import AuditedLog
from tallystick.verifier.report import render

CHROMIUM = Path("/usr/bin/chromium")
EVIL_MODEL = "<script>document.title='pwned'</script>"


def _calls() -> list[tuple[int, str, CallBody]]:
    return [
        (DAY1_MS + 1_000, "orchestrator", call("r1", model="gpt-4o")),
        (
            DAY1_MS + 2_000,
            "researcher",
            call("r2", model="o3-mini", output_tokens=900, reasoning=700),
        ),
        (DAY1_MS + DAY_MS, "researcher", call("r3", model=EVIL_MODEL, cost=None)),
        (DAY1_MS + DAY_MS + 5, "writer", call("r4", input_tokens=None, cached=None)),
    ]


@pytest.fixture
def log(tmp_path: Path) -> AuditedLog:
    return audited(tmp_path, _calls())


def test_report_is_self_contained_and_escapes_log_strings(log: AuditedLog) -> None:
    page = render(log)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()  # none of ours, and the model name is inert
    assert html_escaped(EVIL_MODEL) in page
    # Nothing is fetched: no external URL except the SVG namespace identifier.
    urls = set(re.findall(r"(?:src|href)=\"([^\"]+)\"", page))
    assert urls == set()
    assert set(re.findall(r"https?://[^\"' )]+", page)) <= {"http://www.w3.org/2000/svg"}
    for chart in ("chart-agent", "chart-model", "chart-day", "chart-agent-cost"):
        assert f'id="{chart}"' in page
    # o3-mini: 700 of 900 output tokens are hidden reasoning.
    assert "<td>o3-mini</td><td>900</td><td>700</td><td>77.8%</td>" in page
    assert "reported no input or output count" in page  # unknown is not zero


def html_escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;")
    )


def test_report_lists_billing_findings(log: AuditedLog) -> None:
    header = ",".join(CSV_COLUMNS)
    bill = parse_invoice(f"{header}\nr1,2026-01-01T00:00:01Z,gpt-4o,100,20,75,10,0.0015\n")
    page = render(log, reconciliation=reconcile(log, bill))
    assert 'id="billing"' in page and "token_count_differs" in page and "output_tokens" in page


@pytest.fixture(scope="module")
def chromium() -> Iterator[Path]:
    """Debian's chromium, installed by the test set-up when missing."""
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        if apt is None:
            pytest.skip("chromium is missing and apt-get is not available to install it")
        result = subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", "chromium"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(f"cannot install chromium: {result.stderr.strip()[-300:]}")
    yield CHROMIUM


def _chromium(binary: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(binary),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_loads_in_headless_chromium_and_renders_charts(
    tmp_path: Path, log: AuditedLog, chromium: Path
) -> None:
    page_path = tmp_path / "report.html"
    page_path.write_text(render(log), encoding="utf-8")
    url = page_path.as_uri()
    shot = tmp_path / "shot.png"
    result = _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # charts and text, not a blank page
    dom = _chromium(chromium, tmp_path / "profile2", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>Tallystick report:" in dom.stdout  # the injected script never ran
    assert "pwned" not in dom.stdout.split("</title>")[0]
    assert dom.stdout.count("<svg") >= 6 and 'class="bar"' in dom.stdout
    # The console reports no page error (uncaught exceptions log as CONSOLE ... ERROR).
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
