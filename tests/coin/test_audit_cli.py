"""``tallystick audit judge``: the documented JSON lines, exit codes and typed input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tallystick.verifier._cli import EXIT_OK, EXIT_USAGE, main

LINE_KEYS = {"id", "verdict", "score", "opened_leaves", "reported_tokens"}


def _write(path: Path, traces: list[dict[str, Any]]) -> Path:
    fields = ("id", "prompt", "reasoning", "answer")
    path.write_text("".join(json.dumps({k: t[k] for k in fields}) + "\n" for t in traces))
    return path


@pytest.fixture
def isolated_cache(monkeypatch: pytest.MonkeyPatch, coin_cache_dir: Path) -> None:
    """The CLI's engine uses the session's token cache, never ``~/.cache``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(coin_cache_dir.parent / "xdg"))


@pytest.mark.usefixtures("isolated_cache")
def test_judge_prints_one_json_line_per_honest_trace(
    tmp_path: Path, short_traces: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    traces = [short_traces[0], short_traces[3]]  # one math, one safety
    path = _write(tmp_path / "traces.jsonl", traces)

    code = main(["audit", "judge", str(path), "--json", "--seed", "3"])

    out = capsys.readouterr().out.splitlines()
    assert code == EXIT_OK
    assert len(out) == 2
    for line, trace in zip(out, traces, strict=True):
        row = json.loads(line)
        assert set(row) == LINE_KEYS
        assert row["id"] == trace["id"]
        assert row["verdict"] == "pass"
        assert isinstance(row["score"], float)
        assert row["opened_leaves"] >= 1
        assert row["reported_tokens"] >= row["opened_leaves"]
    # Nothing of the hidden reasoning reaches standard output.
    assert traces[0]["reasoning"][:40] not in "\n".join(out)


@pytest.mark.usefixtures("isolated_cache")
def test_judge_is_reproducible_with_a_seed(
    tmp_path: Path, short_traces: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "traces.jsonl", short_traces[:1])
    main(["audit", "judge", str(path), "--json", "--seed", "9"])
    first = capsys.readouterr().out
    main(["audit", "judge", str(path), "--json", "--seed", "9"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    ("content", "where"),
    [
        pytest.param('{"id": "a", "prompt": "p", "reasoning": "r"}\n', "line 1", id="missing"),
        pytest.param(
            '{"id": "a", "prompt": "p", "reasoning": 3, "answer": "x"}\n', "line 1", id="type"
        ),
        pytest.param("not json\n", "line 1", id="not-json"),
        pytest.param('["a"]\n', "line 1", id="not-object"),
        pytest.param(
            '{"id": "a", "prompt": "p", "reasoning": "r", "answer": "x"}\n\n{"id": ""}\n',
            "line 3",
            id="second-bad",
        ),
    ],
)
def test_bad_lines_are_typed_usage_errors_before_any_work(
    tmp_path: Path, content: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)

    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "judge", str(path), "--json"])

    captured = capsys.readouterr()
    assert exit_info.value.code == EXIT_USAGE
    assert "coin.trace_malformed" in captured.err
    assert where in captured.err
    assert captured.out == ""


def test_non_utf8_and_missing_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "judge", str(binary)])
    assert exit_info.value.code == EXIT_USAGE
    assert "coin.trace_malformed" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "judge", str(tmp_path / "absent.jsonl")])
    assert exit_info.value.code == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
