"""deploy/: the systemd unit, the container image file and the Kubernetes manifest, checked with
the real tools and against tallystickd's own parser; each check has a twin that must fail.

The image cannot be built here (no registry for the base image), so the Containerfile is
checked instruction by instruction; its health probe runs against a real daemon.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tallystick.daemon.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "tallystickd.service"
UNIT_CONFIG = DEPLOY / "systemd" / "tallystickd.toml"
SYSUSERS = DEPLOY / "systemd" / "tallystick.sysusers.conf"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"
MANIFEST = DEPLOY / "kubernetes" / "tallystick-sidecar.yaml"
TALLYSTICKD = Path(sys.executable).parent / "tallystickd"
KUBERNETES_VERSION = "1.30"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without TALLYSTICK_* settings, which would override what is checked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYSTICK_")}
    env.update(extra)
    return env


def print_config(argv: Sequence[str]) -> dict[str, Any]:
    """What the real ``tallystickd`` makes of these arguments (``--print-config``)."""
    result = subprocess.run(
        [str(TALLYSTICKD), *argv, "--print-config"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"tallystickd {shlex.join(argv)}: {result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed, so this check cannot run (Debian package: systemd)")
    return path


# --- systemd ----------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's directives by section, in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def service_value(text: str, key: str) -> str:
    values = [value for name, value in unit_directives(text)["Service"] if name == key]
    assert len(values) == 1, f"{key}= appears {len(values)} times in [Service]"
    return values[0]


def exec_start(text: str) -> list[str]:
    return shlex.split(service_value(text, "ExecStart"))


def seconds(value: str) -> float:
    """A systemd time span such as ``30s``, ``1min 30s`` or ``90``, in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def runnable_unit(text: str, directory: Path) -> Path:
    """A copy of the unit whose ExecStart runs the tallystickd installed here, as verify needs."""
    installed = exec_start(text)[0]
    copy = directory / "tallystickd.service"
    copy.write_text(text.replace(f"ExecStart={installed} ", f"ExecStart={TALLYSTICKD} ", 1))
    assert exec_start(copy.read_text())[0] == str(TALLYSTICKD)
    return copy


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    result = systemd_verify(runnable_unit(UNIT.read_text(), tmp_path))
    # verify exits 0 on unknown or unparsable directives and only warns: any output is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(
    ("good", "bad", "complaint"),
    [
        pytest.param("NoNewPrivileges=yes", "NoNewPriviliges=yes", "Unknown key", id="typo"),
        pytest.param(
            "ProtectSystem=strict", "ProtectSystem=strictly", "Failed to parse", id="value"
        ),
        pytest.param("UMask=0077", "UMask=0999", "Failed to parse", id="umask"),
    ],
)
def test_systemd_verify_reports_a_broken_unit(
    tmp_path: Path, good: str, bad: str, complaint: str
) -> None:
    text = UNIT.read_text()
    assert f"\n{good}\n" in text
    result = systemd_verify(runnable_unit(text.replace(f"\n{good}\n", f"\n{bad}\n"), tmp_path))
    assert complaint in result.stderr


def test_systemd_verify_needs_the_binary(tmp_path: Path) -> None:
    text = UNIT.read_text()
    unit = tmp_path / "tallystickd.service"
    unit.write_text(text.replace(exec_start(text)[0], str(tmp_path / "missing" / "tallystickd")))
    result = systemd_verify(unit)
    assert result.returncode != 0
    assert "is not executable" in result.stderr


def exposure(text: str, directory: Path) -> tuple[int, float]:
    """``systemd-analyze security``'s exit code at threshold 1.0, and the exposure level."""
    unit = runnable_unit(text, directory)
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--threshold=10", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level is not None, result.stdout[-2000:] + result.stderr
    return result.returncode, float(level.group(1))


def test_systemd_unit_exposure_is_low(tmp_path: Path) -> None:
    code, level = exposure(UNIT.read_text(), tmp_path)
    assert code == 0
    assert level <= 1.0


def test_systemd_exposure_check_catches_a_weak_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    weak = text[: text.index("# Sandbox.")] + text[text.index("[Install]") :]
    code, level = exposure(weak, tmp_path)
    assert code != 0
    assert level > 5.0


HARDENING = {
    "User": "tallystick",
    "StateDirectory": "tallystick",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "UMask": "0077",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("key", "value"), HARDENING.items(), ids=list(HARDENING))
def test_systemd_unit_hardening(key: str, value: str) -> None:
    assert service_value(UNIT.read_text(), key) == value


def test_systemd_unit_has_no_dynamic_user() -> None:
    # Agents of other users must traverse the state directory; DynamicUser= puts it under
    # /var/lib/private (0700).
    keys = [key for key, _ in unit_directives(UNIT.read_text())["Service"]]
    assert "DynamicUser" not in keys


def sysusers_lines(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_systemd_config_matches_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    argv = exec_start(text)
    assert argv[1:] == ["--config", "/etc/tallystick/tallystickd.toml"]
    config = load_config(config_file=UNIT_CONFIG, environ={})
    assert config.data_dir == Path("/var/lib") / service_value(text, "StateDirectory")
    # The stop timeout covers the drain and the final checkpoint, with room to spare.
    assert seconds(service_value(text, "TimeoutStopSec")) >= 2 * config.grace_seconds + 5
    # TCP and metrics need Internet sockets; the unit allows them exactly when configured.
    families = service_value(text, "RestrictAddressFamilies").split()
    wants_inet = config.listen_tcp is not None or config.metrics_address is not None
    assert ("AF_INET" in families) == wants_inet
    assert (service_value(text, "PrivateNetwork") == "yes") == (not wants_inet)
    # Every group named in the config exists, and tallystickd belongs to it (to chgrp sockets).
    lines = sysusers_lines(SYSUSERS.read_text())
    user = service_value(text, "User")
    groups = {line[1] for line in lines if line[0] in "ug"}
    member_of = {line[2] for line in lines if line[0] == "m" and line[1] == user}
    assert user in groups
    named = {config.socket_group} | {agent.group for agent in config.agents.values()}
    for group in named - {None}:
        assert group in groups
        assert group == service_value(text, "Group") or group in member_of
    # And the real command line accepts it all.
    copy = tmp_path / "tallystickd.toml"
    copy.write_text(UNIT_CONFIG.read_text())
    printed = print_config([*argv[1:-1], str(copy)])
    assert printed["data_dir"] == str(config.data_dir)
    assert sorted(printed["agents"]) == sorted(config.agents)


def test_systemd_config_twin_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "tallystickd.toml"
    broken.write_text(
        UNIT_CONFIG.read_text().replace('socket_mode = "0660"', 'socket_mode = "0666"')
    )
    with pytest.raises(ConfigError, match="lets every local user connect") as exc:
        load_config(config_file=broken, environ={})
    assert exc.value.code == "config.invalid"


def test_sysusers_file_creates_the_user_and_groups(tmp_path: Path) -> None:
    result = subprocess.run(
        [_tool("systemd-sysusers"), "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Creating user 'tallystick'" in output
    assert "Creating group 'tallystick-planner'" in output
    assert str(SYSUSERS) not in output  # warnings name the file and line


# --- the container image file ------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    flags: tuple[str, ...]
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec (JSON) form"
        return [str(item) for item in value]


def parse_containerfile(text: str) -> list[Instruction]:
    """Instructions with their --flags; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside a continuation, as docker does
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the file ends in a continuation"
    instructions = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        instructions.append(Instruction(keyword.upper(), tuple(flags), rest))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"{len(found)} {keyword} instructions in the final stage"
    return found[0]


def user_problems(instructions: list[Instruction]) -> list[str]:
    """Why the final stage might run as root."""
    stage = final_stage(instructions)
    users = [i for i, ins in enumerate(stage) if ins.keyword == "USER"]
    if not users:
        return ["no USER in the final stage: it runs as root"]
    user = stage[users[-1]].args.split(":")[0]
    problems = []
    if user in ("root", "0") or not user.isdigit() or int(user) < 1000:
        problems.append(f"USER {user}: not a numeric non-root uid (runAsNonRoot needs one)")
    entry = next(i for i, ins in enumerate(stage) if ins.keyword == "ENTRYPOINT")
    if users[-1] > entry:
        problems.append("USER comes after ENTRYPOINT")
    return problems


SECRET_NAME = re.compile(r"(?i)secret|passw|token|api_?key|private_?key|credential")
SECRET_FILE = (".key", ".pem", ".crt", ".p12", ".pfx", ".env", ".sqlite3")
NOT_SOURCE = ("var", ".venv", ".git", "build", "dist", "tests", "bench")


def secret_problems(instructions: list[Instruction], repo: Path) -> list[str]:
    """What could bake a secret or the developer's data into the image."""
    problems = []
    for ins in instructions:
        if ins.keyword == "ADD":
            problems.append(f"ADD {ins.args}: use COPY (ADD fetches URLs and unpacks archives)")
        if ins.keyword in ("ENV", "ARG"):
            for word in shlex.split(ins.args):
                name = word.partition("=")[0]
                if SECRET_NAME.search(name):
                    problems.append(f"{ins.keyword} {name}: a secret in the image's metadata")
        if ins.keyword != "COPY" or any(flag.startswith("--from=") for flag in ins.flags):
            continue
        for source in shlex.split(ins.args)[:-1]:
            path = PurePosixPath(source)
            if str(path) in (".", "*") or path.parts[0] in NOT_SOURCE:
                problems.append(f"COPY {source}: copies more than the package sources")
            elif not (repo / path).exists():
                problems.append(f"COPY {source}: not in the repository")
            elif (repo / path).is_dir():
                found = [p for p in (repo / path).rglob("*") if p.name.endswith(SECRET_FILE)]
                problems.extend(f"COPY {source}: would copy {p}" for p in found)
            elif path.name.endswith(SECRET_FILE):
                problems.append(f"COPY {source}: a key or data file")
    return problems


def test_containerfile_stages_use_the_slim_base() -> None:
    instructions = parse_containerfile(CONTAINERFILE.read_text())
    bases = [ins.args.split()[0] for ins in instructions if ins.keyword == "FROM"]
    assert bases
    assert set(bases) == {"python:3.11-slim"}


def test_containerfile_runs_as_a_non_root_user() -> None:
    instructions = parse_containerfile(CONTAINERFILE.read_text())
    assert user_problems(instructions) == []
    # The uid is the one the image creates (the Kubernetes example's runAsUser).
    uid = one(final_stage(instructions), "USER").args.split(":")[0]
    assert any(f"--uid {uid} " in ins.args for ins in instructions if ins.keyword == "RUN")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("USER 10001:10001", "USER root", id="root"),
        pytest.param("USER 10001:10001", "USER tallystick", id="name-not-uid"),
        pytest.param("USER 10001:10001\n", "", id="no-user"),
    ],
)
def test_user_check_catches_root(old: str, new: str) -> None:
    text = CONTAINERFILE.read_text()
    assert old in text
    assert user_problems(parse_containerfile(text.replace(old, new))) != []


def test_containerfile_bakes_in_no_secret() -> None:
    assert secret_problems(parse_containerfile(CONTAINERFILE.read_text()), REPO) == []


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("COPY . /src", id="whole-context"),
        pytest.param("COPY var/log.key /var/lib/tallystick/", id="data-dir"),
        pytest.param("ADD https://example.com/x.tar.gz /", id="add"),
        pytest.param("ENV TALLYSTICK_API_TOKEN=abc", id="env-token"),
        pytest.param("ARG TLS_PRIVATE_KEY", id="arg-key"),
    ],
)
def test_secret_check_catches_a_leak(line: str, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "log.key").write_text("not really")
    text = CONTAINERFILE.read_text() + line + "\n"
    assert secret_problems(parse_containerfile(text), tmp_path) != []


def test_secret_check_catches_a_key_inside_a_copied_folder(tmp_path: Path) -> None:
    (tmp_path / "daemon").mkdir()
    (tmp_path / "daemon" / "server.key").write_text("not really")
    problems = secret_problems(parse_containerfile("FROM x\nCOPY daemon/ daemon/\n"), tmp_path)
    assert problems == [f"COPY daemon/: would copy {tmp_path / 'daemon' / 'server.key'}"]


def test_containerfile_copies_every_package_folder() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {
        PurePosixPath(source)
        for ins in parse_containerfile(CONTAINERFILE.read_text())
        if ins.keyword == "COPY" and not ins.flags
        for source in shlex.split(ins.args)[:-1]
    }
    needed = [PurePosixPath(p) for p in pyproject["tool"]["setuptools"]["package-dir"].values()]
    needed += [PurePosixPath("pyproject.toml"), PurePosixPath(pyproject["project"]["readme"])]
    for path in needed:
        assert any(path == c or c in path.parents for c in copied), f"{path} is not copied"


def test_containerfile_entrypoint_is_accepted_by_tallystickd() -> None:
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    argv = one(stage, "ENTRYPOINT").exec_form() + one(stage, "CMD").exec_form()
    assert argv[0] == "tallystickd"
    config = print_config(argv[1:])
    data_dir = config["data_dir"]
    assert one(stage, "VOLUME").exec_form() == [data_dir]
    assert one(stage, "WORKDIR").args == data_dir
    assert config["listen_tcp"] is None
    assert not [ins for ins in stage if ins.keyword == "EXPOSE"]  # Unix sockets only


def test_containerfile_healthcheck_is_the_probe_script() -> None:
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    check = one(stage, "HEALTHCHECK")
    assert check.args.startswith("CMD ")
    command = json.loads(check.args.removeprefix("CMD "))
    copies = {
        shlex.split(ins.args)[-1]: shlex.split(ins.args)[0]
        for ins in stage
        if ins.keyword == "COPY"
    }
    assert copies[f"/usr/local/bin/{command[0]}"] == str(HEALTHCHECK.relative_to(REPO))
    timeout = re.search(r"--timeout=(\d+)s", " ".join(check.flags))
    assert timeout is not None
    assert int(timeout.group(1)) > 3  # the probe's own default deadline


# --- the health probe, against a real daemon ---------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        yield Path(name)


def healthcheck(
    *argv: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *argv],
        capture_output=True,
        text=True,
        env=_clean_env(**(env or {})),
        timeout=60,
        check=False,
    )


def wait_ready(daemon: subprocess.Popen[str], timeout: float = 30.0) -> list[str]:
    """The daemon's standard output up to its "ready" line (or EOF, or the timeout)."""
    assert daemon.stdout is not None
    stdout = daemon.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (line := _next(lines, deadline)) is not None:
        seen.append(line)
        if line == "ready\n":
            break
    return seen


def _next(lines: queue.Queue[str | None], deadline: float) -> str | None:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return None


def test_healthcheck_against_a_real_daemon(short_dir: Path) -> None:
    data = short_dir / "data"
    log = short_dir / "stderr.log"
    with log.open("w") as stderr:
        daemon = subprocess.Popen(
            [str(TALLYSTICKD), "--data-dir", str(data), "--agent", "planner"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_clean_env(),
        )
    try:
        lines = wait_ready(daemon)
        assert lines[-1:] == ["ready\n"], (lines, log.read_text()[-2000:])
        shared = f"unix:{data / 'tallystickd.sock'}"

        ok = healthcheck("--address", shared)
        assert (ok.returncode, ok.stdout) == (0, f"tallystickd at {shared}: SERVING\n")
        # An agent's socket serves health too; TALLYSTICK_SOCKET (the daemon's setting) is the
        # default address.
        agent = healthcheck(env={"TALLYSTICK_SOCKET": str(data / "agents" / "planner.sock")})
        assert agent.returncode == 0, agent.stderr
        unknown = healthcheck("--address", shared, "--service", "no.such.Service")
        assert unknown.returncode == 1
        assert "NOT_FOUND" in unknown.stderr

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        gone = healthcheck("--address", shared)
        assert gone.returncode == 1
        assert "UNAVAILABLE" in gone.stderr
        assert gone.stdout == ""
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()


def test_healthcheck_default_is_the_images_shared_socket() -> None:
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    data_dir = print_config(one(stage, "ENTRYPOINT").exec_form()[1:])["data_dir"]
    usage = healthcheck("--help")
    assert f"unix:{data_dir}/tallystickd.sock" in usage.stdout.replace("\n", " ")


def test_healthcheck_rejects_a_bad_timeout() -> None:
    result = healthcheck("--timeout", "0")
    assert result.returncode == 2
    assert "--timeout must be positive" in result.stderr


# --- Kubernetes ---------------------------------------------------------------------------


def manifest() -> list[dict[str, Any]]:
    with MANIFEST.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def document(kind: str) -> dict[str, Any]:
    found = [doc for doc in manifest() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = document("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


@pytest.mark.parametrize(
    "index", range(3), ids=["ConfigMap", "PersistentVolumeClaim", "Deployment"]
)
def test_manifest_matches_the_kubernetes_schema(index: int) -> None:
    doc = manifest()[index]
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("securityContext", "readOnlyRootFS"), True, id="unknown-field"),
        pytest.param(("securityContext", "runAsUser"), "10001", id="wrong-type"),
        pytest.param(("restartPolicy",), 7, id="wrong-type-sidecar"),
    ],
)
def test_schema_check_rejects_a_broken_manifest(path: tuple[str, ...], value: object) -> None:
    deployment = document("Deployment")
    target = deployment["spec"]["template"]["spec"]["initContainers"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_manifest_has_the_three_documents() -> None:
    assert [doc["kind"] for doc in manifest()] == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
    ]


def sidecar_config(tmp_path: Path) -> tuple[dict[str, Any], Config]:
    """The sidecar's effective settings: the image's ENTRYPOINT, the manifest's args and the
    ConfigMap's TOML, as tallystickd parses them."""
    sidecar = container("tallystickd")
    assert "command" not in sidecar  # the image's ENTRYPOINT runs
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    argv = one(stage, "ENTRYPOINT").exec_form()[1:] + list(sidecar["args"])
    config_path = PurePosixPath(argv[argv.index("--config") + 1])
    volume = {v["name"]: v for v in pod_spec()["volumes"]}
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    config_map = document("ConfigMap")
    assert volume[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name])
    argv[argv.index("--config") + 1] = str(local)
    printed = print_config(argv)
    return printed, load_config(
        flags={"data_dir": printed["data_dir"]}, config_file=local, environ={}
    )


def mount_of(spec: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` (the longest mount path that is a prefix)."""
    candidates = [
        m
        for m in spec["volumeMounts"]
        if PurePosixPath(path) == PurePosixPath(m["mountPath"])
        or PurePosixPath(m["mountPath"]) in PurePosixPath(path).parents
    ]
    assert candidates, f"nothing mounted at {path}"
    found: dict[str, Any] = max(candidates, key=lambda m: len(m["mountPath"]))
    return found


def test_agent_socket_is_shared_through_one_volume(tmp_path: Path) -> None:
    printed, config = sidecar_config(tmp_path)
    agent = container("agent")
    env = {item["name"]: item["value"] for item in agent["env"]}
    address = env["TALLYSTICK_DAEMON"]
    assert address.startswith("unix:/run/tallystick/agents/")
    agent_path = PurePosixPath(address.removeprefix("unix:"))
    agent_id = agent_path.stem
    assert agent_id == env["TALLYSTICK_AGENT_ID"]
    assert agent_id in printed["agents"]

    sidecar_path = PurePosixPath(config.agent_socket(agent_id))
    theirs = mount_of(agent, str(agent_path))
    ours = mount_of(container("tallystickd"), str(sidecar_path))
    assert theirs["name"] == ours["name"]  # the same volume
    # The same file: the path inside the volume is the same from both sides.
    inside_theirs = PurePosixPath(theirs.get("subPath", "")) / agent_path.relative_to(
        theirs["mountPath"]
    )
    inside_ours = PurePosixPath(ours.get("subPath", "")) / sidecar_path.relative_to(
        ours["mountPath"]
    )
    assert inside_theirs == inside_ours
    # The agent sees the sockets' folder only, read-only: not log.key, not the database.
    assert theirs["readOnly"] is True
    assert theirs["subPath"] == "agents"
    assert [m["name"] for m in agent["volumeMounts"]] == [theirs["name"]]


def test_agent_can_connect_and_only_through_the_group(tmp_path: Path) -> None:
    printed, config = sidecar_config(tmp_path)
    pod = pod_spec()
    env = {item["name"]: item["value"] for item in container("agent")["env"]}
    agent_id = env["TALLYSTICK_AGENT_ID"]
    settings = config.agents[agent_id]
    assert settings.group == pod["securityContext"]["fsGroup"]
    assert settings.mode == 0o660
    assert printed["agents"][agent_id]["socket_mode"] == 0o660
    sidecar_user = container("tallystickd")["securityContext"]["runAsUser"]
    assert container("agent")["securityContext"]["runAsUser"] != sidecar_user


def test_sidecar_runs_as_the_images_user() -> None:
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    uid, _, gid = one(stage, "USER").args.partition(":")
    context = container("tallystickd")["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert pod_spec()["securityContext"]["fsGroup"] == int(gid)


@pytest.mark.parametrize("name", ["tallystickd", "agent"])
def test_containers_are_locked_down(name: str) -> None:
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    spec = container(name)
    context = spec["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert context["runAsUser"] >= 1000
    assert spec["resources"]["requests"]
    assert spec["resources"]["limits"]["memory"]


def test_sidecar_probes_use_the_health_check(tmp_path: Path) -> None:
    stage = final_stage(parse_containerfile(CONTAINERFILE.read_text()))
    probe = json.loads(one(stage, "HEALTHCHECK").args.removeprefix("CMD "))
    sidecar = container("tallystickd")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[kind]["exec"]["command"] == probe, kind
    # The probe's default address is the shared socket, which lives on the data volume.
    _, config = sidecar_config(tmp_path)
    assert mount_of(sidecar, str(config.shared_socket))["name"] == "data"


def test_pod_outlives_the_drain(tmp_path: Path) -> None:
    _, config = sidecar_config(tmp_path)
    pod = pod_spec()
    assert pod["terminationGracePeriodSeconds"] >= 2 * config.grace_seconds + 5
    sidecar = container("tallystickd")
    # A native sidecar: it starts before the agent and is stopped after it.
    assert sidecar in pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    deployment = document("Deployment")["spec"]
    assert deployment["replicas"] == 1  # one writer per data directory
    assert deployment["strategy"]["type"] == "Recreate"
    claim = document("PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mount_of(sidecar, str(config.data_dir))["name"] == "data"
