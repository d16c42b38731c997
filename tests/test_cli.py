"""The offline CLI, in-process through ``main`` and through the installed console script."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tallystick.verifier._cli import main
from tallystick.verifier.keys import load_public_key

CONSOLE_SCRIPT = Path(sys.executable).parent / "tallystick"
VERDICT_KEYS = {"valid", "format", "code", "step", "detail"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(capsys, "keygen", "--out", str(tmp_path / "issuer.pem"))
    assert code == 0
    assert out.strip() == (tmp_path / "issuer.pem.pub").read_text().strip()
    return tmp_path


def test_keygen_writes_0600_key_and_public_line(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE((keys / "issuer.pem").stat().st_mode) == 0o600
    pub = (keys / "issuer.pem.pub").read_text()
    assert pub.endswith("\n") and len(pub.strip()) == 43
    assert load_public_key(str(keys / "issuer.pem")) == load_public_key(pub)
    code, _, err = run(capsys, "keygen", "--out", str(keys / "issuer.pem"))
    assert code == 2 and "refusing to overwrite" in err


def _hdp_chain(keys: Path, capsys: pytest.CaptureFixture[str], hops: int = 2) -> Path:
    code, out, _ = run(
        capsys,
        "hdp",
        "issue",
        "--key",
        str(keys / "issuer.pem"),
        "--principal",
        "alice@example.com",
        "--principal-type",
        "email",
        "--session",
        "s1",
        "--intent",
        "Summarise the report",
        "--tool",
        "web_search",
        "--max-hops",
        "3",
    )
    assert code == 0
    path = keys / "token.json"
    path.write_text(out)
    for i in range(hops):
        code, out, _ = run(
            capsys,
            "hdp",
            "extend",
            str(path),
            "--key",
            str(keys / "issuer.pem"),
            "--agent-id",
            f"agent-{i}",
            "--action",
            f"step {i}",
        )
        assert code == 0
        path.write_text(out)
    return path


def test_hdp_issue_extend_verify(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = _hdp_chain(keys, capsys)
    code, out, _ = run(
        capsys, "hdp", "verify", str(token), "--public-key", str(keys / "issuer.pem.pub"), "--json"
    )
    verdict = json.loads(out)
    assert code == 0 and set(verdict) == VERDICT_KEYS
    assert verdict["valid"] is True and verdict["format"] == "hdp" and verdict["code"] is None
    code, out, _ = run(
        capsys, "hdp", "verify", str(token), "--public-key", str(keys / "issuer.pem.pub")
    )
    assert code == 0 and out.startswith("valid:")


def test_hdp_verify_rejects_tampering_with_step(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _hdp_chain(keys, capsys)
    tampered = keys / "tampered.json"
    tampered.write_text(token.read_text().replace("Summarise", "Summarize"))
    code, out, _ = run(
        capsys,
        "hdp",
        "verify",
        str(tampered),
        "--public-key",
        str(keys / "issuer.pem.pub"),
        "--json",
    )
    verdict = json.loads(out)
    assert code == 1
    assert verdict == {**verdict, "valid": False, "code": "hdp.signature_invalid", "step": 2}


def test_hdp_verify_session_and_wrong_key(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = _hdp_chain(keys, capsys, hops=0)
    pub = str(keys / "issuer.pem.pub")
    code, out, _ = run(
        capsys, "hdp", "verify", str(token), "--public-key", pub, "--session", "other", "--json"
    )
    assert code == 1 and json.loads(out)["code"] == "hdp.session_mismatch"
    run(capsys, "keygen", "--out", str(keys / "other.pem"))
    code, out, _ = run(
        capsys, "hdp", "verify", str(token), "--public-key", str(keys / "other.pem.pub"), "--json"
    )
    assert code == 1 and json.loads(out)["step"] == 2


def test_hdp_max_hops_refused_at_extend(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = _hdp_chain(keys, capsys, hops=3)
    code, _, err = run(
        capsys,
        "hdp",
        "extend",
        str(token),
        "--key",
        str(keys / "issuer.pem"),
        "--agent-id",
        "x",
        "--action",
        "y",
    )
    assert code == 1 and "hdp.max_hops_exceeded" in err


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("not json", 2, id="missing-file"),
        pytest.param('{"hdp": "0.1"}', 1, id="schema-invalid"),
        pytest.param('{"hdp":"0.1","hdp":"0.1"}', 1, id="duplicate-member"),
    ],
)
def test_hdp_verify_bad_input(
    keys: Path, capsys: pytest.CaptureFixture[str], text: str, code: int
) -> None:
    got, out, err = run(
        capsys, "hdp", "verify", text, "--public-key", str(keys / "issuer.pem.pub"), "--json"
    )
    assert got == code
    if code == 1:
        assert json.loads(out)["step"] == 0 and json.loads(out)["code"] == "hdp.schema_invalid"
    else:
        assert "cannot read" in err


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("abc", id="short"),
        pytest.param("g" * 64, id="not-hex"),
        pytest.param("A" * 44, id="44-chars"),
    ],
)
def test_malformed_public_key_is_a_usage_error(
    keys: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    token = _hdp_chain(keys, capsys, hops=0)
    code, out, err = run(capsys, "hdp", "verify", str(token), "--public-key", key)
    assert code == 2 and out == "" and "public key" in err


def test_aip_compact_round_trip(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "aip",
        "issue",
        "--key",
        str(keys / "issuer.pem"),
        "--subject",
        "aip:web:example.com/a",
        "--scope",
        "tool:search",
        "--budget-usd",
        "2.5",
    )
    assert code == 0 and out.startswith("eyJ")
    token = out.strip()
    pub = str(keys / "issuer.pem.pub")
    code, out, _ = run(
        capsys, "aip", "verify", token, "--public-key", pub, "--tool", "tool:search", "--json"
    )
    assert code == 0 and json.loads(out) == {
        **json.loads(out),
        "valid": True,
        "format": "aip-compact",
    }
    code, out, _ = run(
        capsys, "aip", "verify", token, "--public-key", pub, "--tool", "tool:email", "--json"
    )
    assert code == 1 and json.loads(out)["code"] == "aip.scope_insufficient"
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    code, out, _ = run(capsys, "aip", "verify", flipped, "--public-key", pub, "--json")
    assert code == 1 and json.loads(out)["code"] == "aip.signature_invalid"


def test_aip_chained_delegate_and_verify(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "aip",
        "issue",
        "--key",
        str(keys / "issuer.pem"),
        "--subject",
        "alice",
        "--scope",
        "tool:search",
        "--scope",
        "tool:email",
        "--max-depth",
        "1",
        "--chained",
    )
    assert code == 0
    (keys / "root.b64").write_text(out)
    code, out, err = run(
        capsys,
        "aip",
        "delegate",
        str(keys / "root.b64"),
        "--key",
        str(keys / "issuer.pem"),
        "--delegate",
        "agent-1",
        "--scope",
        "tool:search",
        "--context",
        "search for figures",
    )
    assert code == 0, err
    (keys / "one.b64").write_text(out)
    pub = str(keys / "issuer.pem.pub")
    code, out, _ = run(
        capsys,
        "aip",
        "verify",
        str(keys / "one.b64"),
        "--public-key",
        pub,
        "--tool",
        "tool:search",
        "--json",
    )
    verdict = json.loads(out)
    assert code == 0 and verdict["format"] == "aip-chained" and verdict["valid"] is True
    code, out, _ = run(
        capsys,
        "aip",
        "verify",
        str(keys / "one.b64"),
        "--public-key",
        pub,
        "--tool",
        "tool:email",
        "--json",
    )
    assert code == 1 and json.loads(out)["code"] == "aip.scope_insufficient"
    # Widening at delegation time is refused, and so is going past max-depth.
    code, _, err = run(
        capsys,
        "aip",
        "delegate",
        str(keys / "one.b64"),
        "--key",
        str(keys / "issuer.pem"),
        "--delegate",
        "agent-2",
        "--scope",
        "tool:search",
        "--context",
        "again",
    )
    assert code == 1 and "depth" in err
    code, _, err = run(
        capsys,
        "aip",
        "delegate",
        str(keys / "root.b64"),
        "--key",
        str(keys / "issuer.pem"),
        "--delegate",
        "agent-1",
        "--scope",
        "tool:shell",
        "--context",
        "widen",
    )
    assert code == 1 and "aip.scope_insufficient" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["keygen", "--help"],
        ["hdp", "issue", "--help"],
        ["hdp", "extend", "--help"],
        ["hdp", "verify", "--help"],
        ["aip", "issue", "--help"],
        ["aip", "delegate", "--help"],
        ["aip", "verify", "--help"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "usage: tallystick" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "hdp", "issue", "--key", "k")[0] == 2
    assert (
        run(capsys, "aip", "issue", "--key", "/nonexistent", "--subject", "s", "--scope", "x")[0]
        == 2
    )


def test_console_script_reads_standard_input(keys: Path) -> None:
    issued = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "hdp",
            "issue",
            "--key",
            str(keys / "issuer.pem"),
            "--principal",
            "bob",
            "--session",
            "s",
            "--intent",
            "i",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "hdp",
            "verify",
            "-",
            "--public-key",
            str(keys / "issuer.pem.pub"),
            "--json",
        ],
        input=issued.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] is True
    bad = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "hdp",
            "verify",
            "-",
            "--public-key",
            str(keys / "issuer.pem.pub"),
            "--json",
        ],
        input="{ not json",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert json.loads(bad.stdout)["code"] == "hdp.schema_invalid"


def test_hdp_profile_binds_agents(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "keygen", "--out", str(keys / "agent.pem"))
    code, out, _ = run(
        capsys, "hdp", "issue", "--key", str(keys / "issuer.pem"), "--principal", "alice",
        "--session", "s", "--intent", "i", "--bind-agent", f"searcher={keys / 'agent.pem.pub'}",
    )  # fmt: skip
    assert code == 0
    root = keys / "root.json"
    root.write_text(out)
    pub = str(keys / "issuer.pem.pub")
    code, out, _ = run(
        capsys, "hdp", "extend", str(root), "--key", str(keys / "issuer.pem"),
        "--agent-id", "searcher", "--agent-key", str(keys / "agent.pem"), "--action", "search",
    )  # fmt: skip
    assert code == 0
    (keys / "hop.json").write_text(out)
    code, out, _ = run(capsys, "hdp", "verify", str(keys / "hop.json"), "--public-key", pub,
                       "--profile", "require", "--json")  # fmt: skip
    assert code == 0 and "profile verified" in json.loads(out)["detail"]
    # An agent that is not bound cannot sign a hop in a profile token.
    code, _, err = run(
        capsys, "hdp", "extend", str(root), "--key", str(keys / "issuer.pem"),
        "--agent-id", "intruder", "--agent-key", str(keys / "agent.pem"), "--action", "x",
    )  # fmt: skip
    assert code == 1 and "hdp.agent_not_bound" in err
    # A plain token fails when the profile is required.
    code, out, _ = run(capsys, "hdp", "issue", "--key", str(keys / "issuer.pem"), "--principal",
                       "a", "--session", "s", "--intent", "i")  # fmt: skip
    (keys / "plain.json").write_text(out)
    code, out, _ = run(capsys, "hdp", "verify", str(keys / "plain.json"), "--public-key", pub,
                       "--profile", "require", "--json")  # fmt: skip
    assert code == 1 and json.loads(out)["code"] == "hdp.profile_missing"
    code, _, err = run(capsys, "hdp", "issue", "--key", str(keys / "issuer.pem"), "--principal",
                       "a", "--session", "s", "--intent", "i", "--bind-agent", "nokey")  # fmt: skip
    assert code == 2 and "AGENT_ID=KEY" in err


def test_audience_is_for_compact_tokens(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = str(keys / "issuer.pem")
    code, _, err = run(capsys, "aip", "issue", "--key", key, "--subject", "s", "--scope", "x",
                       "--chained", "--audience", "api.example.com")  # fmt: skip
    assert code == 2 and "compact tokens only" in err
    code, out, _ = run(capsys, "aip", "issue", "--key", key, "--subject", "s", "--scope",
                       "tool:x", "--audience", "api.example.com")  # fmt: skip
    assert code == 0
    token, pub = out.strip(), str(keys / "issuer.pem.pub")
    code, out, _ = run(capsys, "aip", "verify", token, "--public-key", pub, "--json")
    assert code == 1 and json.loads(out)["code"] == "aip.audience_mismatch"
    code, out, _ = run(capsys, "aip", "verify", token, "--public-key", pub, "--audience",
                       "api.example.com", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["valid"] is True


def test_a_closed_pipe_ends_quietly(keys: Path) -> None:
    # ~100 KB of output, more than a pipe holds, to a reader that stops after 10 bytes.
    script = (
        f"{CONSOLE_SCRIPT} hdp issue --key {keys / 'issuer.pem'} --principal a --session s "
        '--intent "$(head -c 100000 /dev/zero | tr "\\0" x)" | head -c 10 >/dev/null; '
        "echo ${PIPESTATUS[0]}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stdout.strip() in {"0", "141"}
