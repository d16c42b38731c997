"""The ``tallystick`` commands that talk to tallystickd, end to end over real Unix sockets.

A real daemon (agents alice and bob), a real SQLite log, the real CLI (``main`` in-process,
and once the installed entry point in a subprocess); nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from tallystick.daemon.remote_cli import delegation_id, parse_address
from tallystick.daemon.storage.sqlite import DB_FILENAME
from tallystick.proto import log_pb2
from tallystick.verifier import aip, hdp
from tallystick.verifier._cli import UsageError, main
from tallystick.verifier.checkpoint import NoteVerifier, verify_checkpoint
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey, load_public_key
from tallystick.verifier.logentry import LogEntry
from tallystick.verifier.merkle import hash_leaf, verify_consistency, verify_inclusion

from .conftest import RunningDaemon

StartDaemon = Callable[..., RunningDaemon]
HEX64 = re.compile(r"[0-9a-f]{64}")
USAGE = ["--model", "gpt-4o", "--input-tokens", "120", "--output-tokens", "30"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``tallystick ARGV`` in-process: exit code, standard output, standard error."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def entry(daemon: RunningDaemon, index: int) -> LogEntry:
    request = log_pb2.GetEntriesRequest(start=index, count=1)
    (raw,) = daemon.log().GetEntries(request).entries
    return LogEntry.from_bytes(raw)


@pytest.fixture(autouse=True)
def quiet_daemon() -> Iterator[None]:
    """The in-process daemon logs to standard output, where the CLI's output is checked."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    yield
    structlog.reset_defaults()


@pytest.fixture
def record(
    served: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """``tallystick record --daemon <shared socket> --agent-id alice <USAGE> ARGS``."""

    def record_call(
        *args: str, daemon: str | None = None, agent: str = "alice"
    ) -> tuple[int, str, str]:
        return run(
            capsys,
            "record",
            "--daemon",
            daemon or served.shared,
            "--agent-id",
            agent,
            *USAGE,
            *args,
        )

    return record_call


# --- record ------------------------------------------------------------------------------


def test_record_prints_only_the_index_and_the_shared_socket_leads_to_the_agents(
    served: RunningDaemon, record: Callable[..., tuple[int, str, str]]
) -> None:
    before = served.daemon.log.size
    code, out, err = record()
    assert (code, out, err) == (0, f"{before}\n", "")
    assert served.daemon.log.size == before + 1
    written = entry(served, before)
    assert written.agent == "alice"  # the agent socket decided, derived from --agent-id
    assert written.body["provider"] == "unknown"
    assert written.body["model"] == "gpt-4o"
    assert written.body["usage"] == {
        "input_tokens": 120,
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": None,
        "output_tokens": 30,
        "reasoning_output_tokens": None,
    }
    assert written.body["delegation_id"] is None


def test_record_on_an_agent_socket_and_every_option(
    served: RunningDaemon, record: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, _ = record(
        "--provider",
        "openai",
        "--reasoning-tokens",
        "12",
        "--cache-read-input-tokens",
        "100",
        "--cache-creation-input-tokens",
        "10",
        "--request-id",
        "req-1",
        "--session-id",
        "sess-1",
        "--latency-ms",
        "812",
        "--cost",
        "0.0042",
        "--currency",
        "EUR",
        daemon=served.agent("bob"),
        agent="bob",
    )
    assert code == 0
    written = entry(served, int(out))
    assert written.agent == "bob"
    body = written.body
    assert body["provider"] == "openai"
    assert body["usage"]["reasoning_output_tokens"] == 12
    assert body["usage"]["cache_read_input_tokens"] == 100
    assert body["usage"]["cache_creation_input_tokens"] == 10
    assert (body["request_id"], body["session_id"], body["latency_ms"]) == ("req-1", "sess-1", 812)
    assert body["cost"] == {"amount": "0.0042", "currency": "EUR"}


def _hdp_json(key: PrivateKey) -> tuple[str, str]:
    token = hdp.issue_root(
        key=key, principal_id="alice", session_id="s1", intent="summarise", issued_at_ms=1
    )
    return token.to_json(), token.token_id


def _hdp_header(key: PrivateKey) -> tuple[str, str]:
    token = hdp.issue_root(
        key=key, principal_id="alice", session_id="s1", intent="summarise", issued_at_ms=1
    )
    return token.to_header(), token.token_id


def _reference(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _aip_compact_jti(key: PrivateKey) -> tuple[str, str]:
    token = aip.issue_compact(
        key=key, subject="agent", scopes=["tool:search"], issued_at=int(time.time()), jti="j-42"
    )
    return token, "j-42"


def _aip_compact(key: PrivateKey) -> tuple[str, str]:
    token = aip.issue_compact(
        key=key, subject="agent", scopes=["tool:search"], issued_at=int(time.time())
    )
    return token, _reference(token)


def _aip_chained(key: PrivateKey) -> tuple[str, str]:
    token = aip.issue_chained(key=key, scopes=["tool:search"], issued_at=int(time.time()))
    return token, _reference(token)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(_hdp_json, id="hdp-json"),
        pytest.param(_hdp_header, id="hdp-header"),
        pytest.param(_aip_compact_jti, id="aip-compact-jti"),
        pytest.param(_aip_compact, id="aip-compact-no-jti"),
        pytest.param(_aip_chained, id="aip-chained"),
    ],
)
def test_record_with_a_token_records_its_delegation_id(
    served: RunningDaemon,
    record: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    make_token: Callable[[PrivateKey], tuple[str, str]],
) -> None:
    text, expected = make_token(PrivateKey.generate())
    token_file = tmp_path / "token"
    token_file.write_text(text + "\n")
    code, out, err = record("--token", str(token_file))
    assert (code, err) == (0, "")
    assert entry(served, int(out)).body["delegation_id"] == expected


@pytest.mark.parametrize(
    ("content", "code"),
    [
        pytest.param("{}", "hdp.schema_invalid", id="hdp-schema"),
        pytest.param('{"header": 1', "hdp.schema_invalid", id="hdp-json"),
        pytest.param("eyJhbGciOiJFZERTQSJ9.!!.x", "aip.token_malformed", id="aip-compact"),
        pytest.param("eyJ9.eyJqdGkiOjF9.x", "aip.token_malformed", id="aip-jti-not-string"),
        pytest.param("not-a-biscuit-at-all", "aip.token_malformed", id="aip-chained"),
        pytest.param("\n", "aip.token_missing", id="empty"),
    ],
)
def test_a_bad_token_exits_1_with_its_code_and_records_nothing(
    served: RunningDaemon,
    record: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    content: str,
    code: str,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    before = served.daemon.log.size
    exit_code, out, err = record("--token", str(token_file))
    assert (exit_code, out) == (1, "")
    assert code in err and len(err.splitlines()) == 1
    assert served.daemon.log.size == before


def test_an_unreadable_token_file_exits_2(
    served: RunningDaemon, record: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    before = served.daemon.log.size
    code, out, err = record("--token", str(tmp_path / "missing"))
    assert (code, out) == (2, "")
    assert "cannot read" in err
    assert served.daemon.log.size == before


def test_identity_errors_are_usage_errors_and_record_nothing(
    served: RunningDaemon, record: Callable[..., tuple[int, str, str]], short_dir: Path
) -> None:
    before = served.daemon.log.size
    code, _, err = record(daemon=served.agent("bob"), agent="alice")
    assert code == 2
    assert "--agent-id alice does not match" in err and "as agent bob" in err
    code, _, err = record(agent="carol")
    assert code == 2 and "agent carol has no socket" in err and "--agent carol" in err
    code, _, err = record(agent="../bob")
    assert code == 2 and "an agent id is" in err
    other = short_dir / "other.sock"
    code, _, err = record(daemon=f"unix:{other}")
    assert code == 2 and "neither DATA_DIR/tallystickd.sock nor an agent socket" in err
    assert served.daemon.log.size == before


def test_the_daemon_refusing_a_call_maps_to_an_exit_code_with_its_reason(
    served: RunningDaemon, record: Callable[..., tuple[int, str, str]]
) -> None:
    before = served.daemon.log.size
    code, out, err = record("--reasoning-tokens", "31")  # more than --output-tokens
    assert (code, out) == (2, "")
    assert "INVALID_ARGUMENT ledger.call_invalid" in err and len(err.splitlines()) == 1
    code, _, err = record("--cost", "-1")
    assert code == 2 and "ledger.call_invalid" in err
    code, _, err = record("--currency", "EUR")
    assert code == 2 and "--currency needs --cost" in err
    assert served.daemon.log.size == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--input-tokens", "-1"], id="negative"),
        pytest.param(["--input-tokens", str(2**53)], id="beyond-2^53"),
        pytest.param(["--timeout", "0"], id="timeout"),
    ],
)
def test_bad_numbers_are_usage_errors(
    record: Callable[..., tuple[int, str, str]], args: list[str]
) -> None:
    code, out, _ = record(*args)
    assert (code, out) == (2, "")


def test_an_unreachable_daemon_exits_2(capsys: pytest.CaptureFixture[str], short_dir: Path) -> None:
    missing = short_dir / "tallystickd.sock"
    code, out, err = run(capsys, "log", "checkpoint", "--daemon", f"unix:{missing}")
    assert (code, out) == (2, "")
    assert "cannot reach tallystickd" in err and "no such socket" in err
    # A socket file that nobody listens on (a daemon that died): gRPC's UNAVAILABLE.
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(missing))
        code, out, err = run(capsys, "log", "checkpoint", "--daemon", f"unix:{missing}")
    assert (code, out) == (2, "")
    assert "cannot reach tallystickd" in err and len(err.splitlines()) == 1
    (short_dir / "agents").mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(short_dir / "agents" / "a.sock"))
        argv = ["record", "--daemon", f"unix:{missing}", "--agent-id", "a", *USAGE]
        code, _, err = run(capsys, *argv)
    assert code == 2 and "cannot reach tallystickd" in err


@pytest.mark.parametrize(
    ("address", "message"),
    [
        pytest.param("localhost:7443", "TCP needs mutual TLS", id="tcp"),
        pytest.param("[::1]:7443", "TCP needs mutual TLS", id="tcp6"),
        pytest.param("var/tallystickd.sock", "expected unix:PATH or HOST:PORT", id="bare-path"),
        pytest.param("unix:", "needs a socket path", id="empty-unix"),
    ],
)
def test_addresses_that_are_not_served_are_usage_errors(
    capsys: pytest.CaptureFixture[str], address: str, message: str
) -> None:
    code, out, err = run(capsys, "log", "checkpoint", "--daemon", address)
    assert (code, out) == (2, "")
    assert message in err
    with pytest.raises(UsageError):
        parse_address(address)


def test_unix_addresses_parse_to_socket_paths() -> None:
    assert parse_address("unix:var/x.sock").path == Path("var/x.sock")
    assert parse_address("unix:///run/x.sock").path == Path("/run/x.sock")
    assert parse_address("unix:/run/x.sock").target == "unix:/run/x.sock"


def test_delegation_id_rejects_what_is_not_a_token() -> None:
    with pytest.raises(MalformedInput) as exc:
        delegation_id("eyJhbGciOiJFZERTQSJ9")  # base64url JSON, but not an HDP token
    assert exc.value.code == "hdp.schema_invalid"


# --- checkpoint, proofs -------------------------------------------------------------------


@pytest.fixture
def filled(served: RunningDaemon, record: Callable[..., tuple[int, str, str]]) -> int:
    """At least 7 entries in the served log; returns its size."""
    while served.daemon.log.size < 7:
        assert record()[0] == 0
    return served.daemon.log.size


def _checkpoint_lines(text: str) -> list[str]:
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_checkpoint_prints_the_signed_note_exactly(
    served: RunningDaemon, filled: int, capsys: pytest.CaptureFixture[str]
) -> None:
    log_pub = str(served.data_dir / "log.pub")
    code, out, err = run(
        capsys, "log", "checkpoint", "--daemon", served.shared, "--refresh", "--log-key", log_pub
    )
    assert (code, err) == (0, "")
    assert out == served.daemon.log.latest_checkpoint()  # exactly, with nothing added
    origin, size, root, blank, *signatures = _checkpoint_lines(out)
    assert origin == served.daemon.log.origin
    assert size == str(filled)
    assert base64.b64decode(root, validate=True) == served.daemon.log.root()
    assert blank == ""
    assert signatures and all(line.startswith("\u2014 " + origin + " ") for line in signatures)
    verifier = NoteVerifier.from_public_key(origin, load_public_key(log_pub))
    assert verify_checkpoint(out, verifiers=[verifier], origin=origin).size == filled

    code, out, _ = run(capsys, "log", "checkpoint", "--daemon", served.shared, "--json")
    assert code == 0
    shown = json.loads(out)
    assert list(shown) == ["origin", "tree_size", "root_hash", "checkpoint"]
    assert shown["tree_size"] == filled and HEX64.fullmatch(shown["root_hash"])
    assert shown["checkpoint"] == served.daemon.log.latest_checkpoint()


def _public_key_text(*, dash_leading: bool) -> str:
    """A new key's base64url text; one in 64 begins with "-", which argparse reads as an option."""
    while True:
        text = PrivateKey.generate().public_key.to_b64url()
        if text.startswith("-") == dash_leading:
            return text


@pytest.mark.parametrize("dash_leading", [False, True], ids=["plain", "dash-leading"])
def test_a_checkpoint_signed_by_another_key_is_rejected(
    served: RunningDaemon, filled: int, capsys: pytest.CaptureFixture[str], dash_leading: bool
) -> None:
    other = _public_key_text(dash_leading=dash_leading)
    for command in (
        ["checkpoint"],
        ["proof", "--index", "0", "--size", "1"],
        ["consistency", "--from", "1", "--to", "2"],
    ):
        argv = ["log", *command, "--daemon", served.shared, "--log-key", other]
        code, out, err = run(capsys, *argv)
        assert (code, out) == (1, ""), (command, err)
        assert "rejected: checkpoint: checkpoint.no_known_signature" in err


def test_proof_json_verifies_against_the_signed_checkpoint(
    served: RunningDaemon, filled: int, capsys: pytest.CaptureFixture[str]
) -> None:
    log_pub = str(served.data_dir / "log.pub")
    for index, size in ((0, 1), (3, 5), (filled - 1, filled), (2, filled)):
        argv = ["--index", str(index), "--size", str(size), "--log-key", log_pub, "--json"]
        code, out, err = run(capsys, "log", "proof", "--daemon", served.shared, *argv)
        assert (code, err) == (0, "")
        proof = json.loads(out)
        assert list(proof) == ["leaf_index", "tree_size", "leaf_hash", "hashes", "root_hash"]
        assert (proof["leaf_index"], proof["tree_size"]) == (index, size)
        for value in (proof["leaf_hash"], proof["root_hash"], *proof["hashes"]):
            assert HEX64.fullmatch(value)
        raw = served.log().GetEntries(log_pb2.GetEntriesRequest(start=index, count=1)).entries[0]
        assert proof["leaf_hash"] == hash_leaf(raw).hex()
        assert proof["root_hash"] == served.daemon.log.root(size).hex()
        verify_inclusion(
            leaf_index=index,
            tree_size=size,
            leaf_hash=bytes.fromhex(proof["leaf_hash"]),
            proof=[bytes.fromhex(value) for value in proof["hashes"]],
            root_hash=bytes.fromhex(proof["root_hash"]),
        )
    code, out, _ = run(
        capsys, "log", "proof", "--daemon", served.shared, "--index", "1", "--size", "2"
    )
    assert code == 0 and out.startswith("valid: entry 1 is in the tree of size 2")


def test_consistency_json_verifies(
    served: RunningDaemon, filled: int, capsys: pytest.CaptureFixture[str]
) -> None:
    for first, second in ((1, 2), (3, 7), (4, filled), (filled, filled)):
        argv = ["--from", str(first), "--to", str(second), "--json"]
        code, out, err = run(capsys, "log", "consistency", "--daemon", served.shared, *argv)
        assert (code, err) == (0, "")
        proof = json.loads(out)
        assert list(proof) == ["first", "second", "hashes", "first_root", "second_root"]
        assert (proof["first"], proof["second"]) == (first, second)
        for value in (proof["first_root"], proof["second_root"], *proof["hashes"]):
            assert HEX64.fullmatch(value)
        assert proof["first_root"] == served.daemon.log.root(first).hex()
        assert proof["second_root"] == served.daemon.log.root(second).hex()
        verify_consistency(
            first_size=first,
            second_size=second,
            first_root=bytes.fromhex(proof["first_root"]),
            second_root=bytes.fromhex(proof["second_root"]),
            proof=[bytes.fromhex(value) for value in proof["hashes"]],
        )
    argv = ["--from", "2", "--to", "4"]
    code, out, _ = run(capsys, "log", "consistency", "--daemon", served.shared, *argv)
    assert code == 0 and out.startswith("valid: the tree of size 2 is a prefix")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["proof", "--index", "3", "--size", "3"], "must be below", id="index>=size"),
        pytest.param(
            ["proof", "--index", "0", "--size", "100000"], "log.size_out_of_range", id="size"
        ),
        pytest.param(["consistency", "--from", "3", "--to", "2"], "must not exceed", id="order"),
        pytest.param(["consistency", "--from", "0", "--to", "2"], "log.bad_range", id="from-0"),
        pytest.param(
            ["consistency", "--from", "1", "--to", "100000"], "log.size_out_of_range", id="to"
        ),
    ],
)
def test_proof_range_errors_exit_2(
    served: RunningDaemon,
    filled: int,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code, out, err = run(capsys, "log", *argv, "--daemon", served.shared)
    assert (code, out) == (2, "")
    assert message in err and len(err.splitlines()) == 1


@pytest.fixture
def small_log(start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]) -> RunningDaemon:
    """A daemon of its own with four entries by alice."""
    daemon = start_daemon()
    for _ in range(4):
        argv = ["record", "--daemon", daemon.shared, "--agent-id", "alice", *USAGE]
        assert run(capsys, *argv)[0] == 0
    return daemon


@pytest.mark.parametrize(
    ("node", "argv", "message"),
    [
        pytest.param(
            (0, 1),
            ["proof", "--index", "0", "--size", "4"],
            "rejected: inclusion of entry 0: merkle.root_mismatch",
            id="inclusion",
        ),
        pytest.param(
            (1, 1),
            ["consistency", "--from", "2", "--to", "4"],
            "rejected: consistency of sizes 2 and 4: merkle.root_mismatch",
            id="consistency",
        ),
        pytest.param(
            (1, 1),
            ["proof", "--index", "0", "--size", "2"],
            "rejected: consistency with the checkpoint of size 4: merkle.root_mismatch",
            id="tree-to-checkpoint",
        ),
    ],
)
def test_a_proof_that_does_not_verify_is_not_printed(
    small_log: RunningDaemon,
    capsys: pytest.CaptureFixture[str],
    node: tuple[int, int],
    argv: list[str],
    message: str,
) -> None:
    # Damage the running daemon's stored tree under it: it then serves a bad proof.
    with sqlite3.connect(small_log.data_dir / DB_FILENAME) as conn:
        sql = 'UPDATE nodes SET hash = ? WHERE level = ? AND "index" = ?'
        assert conn.execute(sql, (bytes(32), *node)).rowcount == 1
    code, out, err = run(capsys, "log", *argv, "--daemon", small_log.shared, "--json")
    assert (code, out) == (1, "")
    assert message in err


def test_an_entry_edited_under_the_daemon_is_not_proven(
    small_log: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(small_log.data_dir / DB_FILENAME) as conn:
        (raw,) = conn.execute('SELECT entry FROM entries WHERE "index" = 3').fetchone()
        edited = bytes(raw).replace(b'"input_tokens":120', b'"input_tokens":121')
        assert edited != raw
        conn.execute('UPDATE entries SET entry = ? WHERE "index" = 3', (edited,))
    argv = ["--daemon", small_log.shared, "--index", "3", "--size", "4", "--json"]
    code, out, err = run(capsys, "log", "proof", *argv)
    assert (code, out) == (1, "")
    assert "rejected: inclusion of entry 3: merkle.root_mismatch" in err


# --- export and offline verification ------------------------------------------------------


def _verify(capsys: pytest.CaptureFixture[str], bundle: Path, log_pub: Path) -> dict:
    code, out, _ = run(capsys, "log", "verify", str(bundle), "--log-key", str(log_pub), "--json")
    report = json.loads(out)
    assert code == (0 if report["valid"] else 1)
    return report


def test_export_via_the_daemon_verifies_offline(
    served: RunningDaemon, filled: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.jsonl"
    code, out, err = run(
        capsys, "log", "export", "--daemon", served.shared, "--out", str(bundle), "--json"
    )
    assert (code, err) == (0, "")
    size = served.daemon.log.size
    assert json.loads(out) == {"out": str(bundle), "size": size}
    assert not (tmp_path / "bundle.jsonl.partial").exists()
    header = json.loads(bundle.read_text().splitlines()[0])
    assert header["size"] == size and header["origin"] == served.daemon.log.origin
    report = _verify(capsys, bundle, served.data_dir / "log.pub")
    assert report == {
        "valid": True,
        "size": size,
        "origin": served.daemon.log.origin,
        "checkpoints": report["checkpoints"],
        "damage": None,
    }
    assert report["checkpoints"] >= 2


def test_export_from_the_data_dir_verifies_offline(
    small_log: RunningDaemon,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_log.close()  # stopping signs the final checkpoint
    monkeypatch.chdir(small_log.data_dir.parent)  # a relative --data-dir, as in `make run`
    bundle = tmp_path / "bundle.jsonl"
    argv = ["--data-dir", small_log.data_dir.name, "--out", str(bundle)]
    code, out, err = run(capsys, "log", "export", *argv)
    assert (code, out, err) == (0, f"exported 4 entries to {bundle}\n", "")
    report = _verify(capsys, bundle, small_log.data_dir / "log.pub")
    assert report["valid"] and report["size"] == 4


def test_export_errors_exit_2(
    served: RunningDaemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "log", "export", "--data-dir", str(tmp_path), "--out", "b")
    assert code == 2 and "log.not_found" in err
    out = tmp_path / "missing-dir" / "b.jsonl"
    code, _, err = run(capsys, "log", "export", "--daemon", served.shared, "--out", str(out))
    assert code == 2 and "cannot write" in err
    code, _, err = run(
        capsys, "log", "export", "--daemon", served.shared, "--data-dir", "x", "--out", "b"
    )
    assert code == 2 and "not allowed with argument" in err


# --- the installed command ----------------------------------------------------------------


def console(*argv: str) -> subprocess.CompletedProcess[str]:
    """``tallystick ARGV`` in a subprocess, through the installed entry points."""
    return subprocess.run(
        [sys.executable, "-m", "tallystick.verifier", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_installed_cli_has_the_daemon_commands(served: RunningDaemon) -> None:
    help_text = console("record", "--help").stdout
    assert "decides who is calling by the socket" in help_text
    assert "DATA_DIR/agents/ID.sock" in help_text
    done = console("record", "--daemon", served.shared, "--agent-id", "alice", *USAGE)
    assert done.returncode == 0 and re.fullmatch(r"[0-9]+\n", done.stdout), done.stderr
    missing = console(
        "log", "proof", "--daemon", "unix:/nonexistent/s.sock", "--index", "0", "--size", "1"
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
