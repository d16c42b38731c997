"""tallystickd settings: flags > environment > TOML file > defaults, validated with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tallystick.daemon.cli import build_parser, main
from tallystick.daemon.config import (
    MAX_SOCKET_PATH_BYTES,
    AgentConfig,
    Config,
    ConfigError,
    env_name,
    flag_name,
    load_config,
)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tallystickd.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert config.data_dir == Path("var").absolute()
    assert config.shared_socket == Path("var").absolute() / "tallystickd.sock"
    assert (config.socket_mode, config.agents, config.listen_tcp) == (0o600, {}, None)
    assert (config.checkpoint_every_entries, config.checkpoint_every_ms) == (1000, 1000)
    assert config.max_message_bytes == 1024 * 1024
    assert config.metrics_address is None


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    file = _toml(tmp_path, 'data_dir = "/srv/file"\nmax_batch = 11\nworkers = 3\n')
    env = {"TALLYSTICK_DATA_DIR": "/srv/env", "TALLYSTICK_MAX_BATCH": "22"}
    flags = {"data_dir": "/srv/flag"}
    config = load_config(flags=flags, environ=env, config_file=file)
    assert config.data_dir == Path("/srv/flag")
    assert config.max_batch == 22  # env beats the file
    assert config.workers == 3  # the file beats the default
    assert config.grace_seconds == 10.0  # the default
    assert load_config(environ=env, config_file=file).data_dir == Path("/srv/env")
    assert load_config(config_file=file, environ={}).data_dir == Path("/srv/file")


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    file = _toml(tmp_path, "checkpoint_every_ms = 250\n")
    config = load_config(environ={"TALLYSTICK_CONFIG": str(file)})
    assert config.checkpoint_every_ms == 250


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    file = _toml(tmp_path, "workers = 4\n")
    assert load_config(environ={"TALLYSTICK_WORKERS": ""}, config_file=file).workers == 4


def test_agents_from_toml_env_and_flags(tmp_path: Path) -> None:
    file = _toml(
        tmp_path,
        'data_dir = "/srv/t"\n'
        "[agents.planner]\n"
        "socket_mode = 0o600\n"
        "[agents.coder]\n"
        'group = "coder"\n'
        "[agents.tool-runner]\n"
        "uid = 1001\n"
        'socket_mode = "0640"\n',
    )
    config = load_config(config_file=file, environ={})
    assert config.agents == {
        "planner": AgentConfig(socket_mode=0o600),
        "coder": AgentConfig(group="coder"),
        "tool-runner": AgentConfig(uid=1001, socket_mode=0o640),
    }
    assert config.agents["coder"].mode == 0o660  # group access by default with a group
    assert config.agents["planner"].mode == 0o600
    assert config.agent_socket("coder") == Path("/srv/t/agents/coder.sock")
    from_env = load_config(config_file=file, environ={"TALLYSTICK_AGENTS": "a1, b2"})
    assert sorted(from_env.agents) == ["a1", "b2"]  # a setting is replaced whole, not merged
    from_flags = load_config(
        flags={"agents": {"solo": {}}}, environ={"TALLYSTICK_AGENTS": "a1"}, config_file=file
    )
    assert list(from_flags.agents) == ["solo"]


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "expected"),
    [
        pytest.param(
            {"listen_tcp": "7000"},
            {},
            "",
            "listen_tcp (flag --listen-tcp): '7000' is not HOST:PORT",
            id="tcp-flag-without-host",
        ),
        pytest.param(
            {},
            {},
            'listen_tcp = "::1:7000"\n',
            "an IPv6 host as [ADDR]:PORT",
            id="tcp-toml-unbracketed-ipv6",
        ),
        pytest.param(
            {},
            {"TALLYSTICK_CHECKPOINT_EVERY_ENTRIES": "0"},
            "",
            "checkpoint_every_entries (environment TALLYSTICK_CHECKPOINT_EVERY_ENTRIES): "
            "Input should be greater than or equal to 1",
            id="env-zero-interval",
        ),
        pytest.param(
            {},
            {"TALLYSTICK_WORKERS": "many"},
            "",
            "workers (environment TALLYSTICK_WORKERS): Input should be a valid integer",
            id="env-not-an-integer",
        ),
        pytest.param(
            {"socket_mode": "0666"},
            {},
            "",
            "lets every local user connect",
            id="shared-socket-for-everyone",
        ),
        pytest.param({}, {}, "socket_mode = 600\n", "in TOML write 0o600", id="decimal-mode"),
        pytest.param({"socket_mode": "rw"}, {}, "", "not an octal file mode", id="mode-not-octal"),
        pytest.param(
            {},
            {},
            "[agents.bob]\nsocket_mode = 0o606\n",
            "lets every local user",
            id="agent-o-bits",
        ),
        pytest.param(
            {}, {}, "[agents.bob]\nsocket_mode = 0o400\n", "read and write", id="agent-no-owner-rw"
        ),
        pytest.param({"agents": {"../etc": {}}}, {}, "", "agents.../etc", id="agent-id-path"),
        pytest.param({}, {}, "[agents.bob]\nuser = 3\n", "agents.bob.user", id="agent-unknown-key"),
        pytest.param({}, {}, "data_dri = 'x'\n", "data_dri (config file", id="unknown-key"),
        pytest.param(
            {"metrics_address": "9464"}, {}, "", "is not HOST:PORT", id="metrics-without-host"
        ),
        pytest.param(
            {"log_level": "verbose"}, {}, "", "log_level (flag --log-level)", id="log-level"
        ),
        pytest.param(
            {"data_dir": "/" + "d" * MAX_SOCKET_PATH_BYTES},
            {},
            "",
            "longer than 107 bytes, the Unix limit",
            id="socket-path-too-long",
        ),
    ],
)
def test_invalid_settings_are_explained(
    tmp_path: Path, flags: dict[str, object], environ: dict[str, str], toml: str, expected: str
) -> None:
    file = _toml(tmp_path, toml) if toml else None
    with pytest.raises(ConfigError) as caught:
        load_config(flags=flags, environ=environ, config_file=file)
    assert caught.value.code == "config.invalid"
    assert expected in str(caught.value)
    assert str(caught.value).startswith("invalid configuration: ")


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(config_file=tmp_path / "absent.toml", environ={})
    assert missing.value.code == "config.unreadable"
    with pytest.raises(ConfigError) as broken:
        load_config(config_file=_toml(tmp_path, "data_dir = \n"), environ={})
    assert broken.value.code == "config.invalid"
    assert "not TOML" in str(broken.value)


def test_octal_modes_in_every_spelling() -> None:
    for text in ("0600", "600", "0o600", 0o600):
        assert load_config(flags={"socket_mode": text}, environ={}).socket_mode == 0o600
    assert load_config(flags={"socket_mode": "0660"}, environ={}).socket_mode == 0o660


def test_config_is_frozen() -> None:
    config = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.workers = 2  # type: ignore[misc]


def test_help_documents_every_setting() -> None:
    text = " ".join(build_parser().format_help().split())
    for name, field in Config.model_fields.items():
        flag = "--agent" if name == "agents" else flag_name(name)
        assert flag in text, name
        assert env_name(name) in text, name
        assert " ".join(str(field.description).split()) in text, name
    assert "--config" in text
    assert "TALLYSTICK_CONFIG" in text
    assert "highest precedence first" in text


def test_cli_print_config_applies_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _toml(tmp_path, "max_batch = 5\nworkers = 2\n[agents.file-agent]\n")
    monkeypatch.setenv("TALLYSTICK_MAX_BATCH", "6")
    monkeypatch.setenv("TALLYSTICK_WORKERS", "7")
    argv = ["--config", str(file), "--workers", "8", "--agent", "a", "--agent", "b"]
    assert main([*argv, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["max_batch"], printed["workers"]) == (6, 8)
    assert sorted(printed["agents"]) == ["a", "b"]


def test_cli_refuses_tcp_without_tls_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen-tcp", "127.0.0.1:7000"]) == 2
    err = capsys.readouterr().err
    assert "tallystickd: config.tls_incomplete:" in err
    assert "listen_tcp needs mutual TLS: set tls_cert, tls_key, tls_client_ca" in err
