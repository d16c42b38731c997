"""Terminal progress: shown on a TTY's stderr, quiet when not a terminal or with --json."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from audit_bundles import DAY1_MS, call, write_bundle
from tallystick.verifier._progress import Progress, progress_for


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_throttled_and_erased_on_a_terminal() -> None:
    stream = _Terminal()
    now = [0.0]
    with Progress(stream, enabled=True, interval=0.5, clock=lambda: now[0]) as progress:
        progress.stage("verifying")
        progress.update(1, 10)  # within the interval of the stage line: not shown
        now[0] = 1.0
        progress.update(5, 10)
        progress.update(10, 10)  # the last one always shows
    text = stream.getvalue()
    assert "verifying ..." in text and "verifying: 5/10 (50%)" in text and "10/10 (100%)" in text
    assert "1/10" not in text
    assert text.endswith("\r")  # the line is erased: nothing is left on the terminal


def test_progress_is_quiet_off_a_terminal_and_for_json() -> None:
    assert not progress_for(as_json=False, stream=io.StringIO()).enabled
    assert not progress_for(as_json=True, stream=_Terminal()).enabled
    assert progress_for(as_json=False, stream=_Terminal()).enabled
    stream = io.StringIO()
    with Progress(stream, enabled=False) as progress:
        progress.stage("x")
        progress.update(1, 1)
    assert stream.getvalue() == ""


def _verify_with_tty_stderr(bundle: Path, pub: Path, *extra: str) -> tuple[int, str, str]:
    """Run ``log verify`` with stderr on a pseudo-terminal and stdout on a pipe."""
    return _cli_with_tty_stderr("log", "verify", str(bundle), "--log-key", str(pub), *extra)


def _cli_with_tty_stderr(*argv: str) -> tuple[int, str, str]:
    """Run ``tallystick ARGV`` with stderr on a pseudo-terminal and stdout on a pipe."""
    leader, follower = os.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "tallystick.verifier", *argv],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO once the terminal has no writer left
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    return process.returncode, process.stdout, b"".join(chunks).decode()


def test_log_verify_shows_progress_only_on_a_terminal_without_json(tmp_path: Path) -> None:
    bundle, _ = write_bundle(tmp_path, [(DAY1_MS, "alice", call("r1"))])
    pub = tmp_path / "log" / "log.pub"
    code, out, err = _verify_with_tty_stderr(bundle, pub)
    assert code == 0 and out.startswith("valid: log")
    assert "verifying 1 entries" in err
    code, out, err = _verify_with_tty_stderr(bundle, pub, "--json")
    assert code == 0 and '"valid": true' in out and err == ""
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "tallystick.verifier",
            "log",
            "verify",
            str(bundle),
            "--log-key",
            str(pub),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == ""


def test_log_export_shows_progress_only_on_a_terminal_without_json(tmp_path: Path) -> None:
    write_bundle(tmp_path, [(DAY1_MS + n, "alice", call(f"r{n}")) for n in range(3)])
    out = tmp_path / "again.bundle"
    code, stdout, err = _cli_with_tty_stderr(
        "log", "export", "--data-dir", str(tmp_path / "log"), "--out", str(out)
    )
    assert code == 0 and stdout.startswith("exported 3 entries")
    assert "export: entries: 3/3 (100%)" in err
    code, stdout, err = _cli_with_tty_stderr(
        "log", "export", "--data-dir", str(tmp_path / "log"), "--out", str(out), "--json"
    )
    assert code == 0 and '"size": 3' in stdout and err == ""
