"""The deployment files (deploy/) agree with the services: every flag and
environment variable they set exists and its value is accepted, the ports
line up, and the container recipe copies every package. (No container engine
runs here, so the files are checked by parsing them.)"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from printernizer_stats.agent.__main__ import build_parser as agent_parser
from printernizer_stats.aggregation.__main__ import build_parser as aggregation_parser
from printernizer_stats.analytics.__main__ import build_parser as analytics_parser
from printernizer_stats.common.cli import EnvArgumentParser
from printernizer_stats.common.health import build_parser as health_parser
from printernizer_stats.gateway.__main__ import build_parser as gateway_parser

from ..conftest import ROOT

DEPLOY = ROOT / "deploy"
PARSERS: dict[str, Callable[[], EnvArgumentParser]] = {
    "printernizer_stats.agent": agent_parser,
    "printernizer_stats.aggregation": aggregation_parser,
    "printernizer_stats.analytics": analytics_parser,
    "printernizer_stats.gateway": gateway_parser,
}
IMAGE_ENVIRONMENT = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "XDG_DATA_HOME"}


def known_environment_variables() -> set[str]:
    return {name for build in PARSERS.values() for name in build().environment_variables.values()}


def accepts(
    module: str, arguments: list[str], environment: dict[str, str], monkeypatch: Any
) -> argparse.Namespace:
    """Parse as the service would, with `environment` set: its values must be accepted too."""
    parser = PARSERS[module]
    known = set(parser().environment_variables.values())
    unknown = set(environment) - known
    assert not unknown, f"{module} has no such environment variables: {unknown}"
    flags = {a.split("=", 1)[0] for a in arguments if a.startswith("--")}
    assert flags <= set(parser().environment_variables), f"{module} has no such flags: {flags}"
    with monkeypatch.context() as patch:
        for name in known:
            patch.delenv(name, raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        try:
            return parser().parse_args(arguments)
        except SystemExit as exc:
            raise AssertionError(f"{module} refuses {arguments} with {environment}") from exc


def interpolated(value: Any) -> str:
    """Compose's ${NAME...} with a stand-in value."""
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: f"example-{m.group(1).lower()}", str(value))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def stats_services() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("printernizer-stats"):
            yield name, service


def containerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                found[name] = value
    return found


def test_the_compose_services_run_real_commands_with_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = dict(stats_services())
    assert {"migrate", "aggregation", "analytics", "gateway"} <= set(services)
    image_env = {k: v for k, v in containerfile_env().items() if k not in IMAGE_ENVIRONMENT}
    for name, service in services.items():
        module, *arguments = service["command"]
        environment = {k: interpolated(v) for k, v in service.get("environment", {}).items()}
        own = {k: v for k, v in image_env.items() if k in PARSERS[module]().environment_variables.values()}
        args = accepts(module, [interpolated(a) for a in arguments], {**own, **environment}, monkeypatch)
        for container_port in [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]:
            assert args.listen.endswith(f":{container_port}"), (name, args.listen, container_port)
        check = service.get("healthcheck", {}).get("test")
        port = args.listen.rsplit(":", 1)[1]
        if check and module == "printernizer_stats.gateway":  # HTTP: GET /health on its own port
            assert check[:3] == ["CMD", "python", "-c"], name
            assert f"http://127.0.0.1:{port}/health" in check[3], name
        elif check:
            assert check[:4] == ["CMD", "python", "-m", "printernizer_stats.common.health"], name
            health = health_parser().parse_args([interpolated(a) for a in check[4:]])
            assert health.target.endswith(f":{port}"), (name, health.target)


def test_the_compose_file_wires_the_services_together(monkeypatch: pytest.MonkeyPatch) -> None:
    services = dict(stats_services())
    migrate = services["migrate"]
    assert migrate["command"][1:] == ["--migrations", "only"]
    for name in ("aggregation", "analytics"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["aggregation"]["environment"]["AGGREGATION_SERVER_MIGRATIONS"] == "skip"
    urls = {
        interpolated(services[name]["environment"][variable])
        for name, variable in (
            ("migrate", "AGGREGATION_SERVER_DATABASE_URL"),
            ("aggregation", "AGGREGATION_SERVER_DATABASE_URL"),
            ("analytics", "ANALYTICS_SERVER_DATABASE_URL"),
        )
    }
    assert len(urls) == 1, urls  # one database
    assert urls.pop().startswith("postgresql://")
    # The gateway reaches the analytics server by its service name, and the
    # analytics server's self-made certificate is valid for that name.
    analytics_env = services["analytics"]["environment"]
    gateway_env = services["gateway"]["environment"]
    assert gateway_env["STATS_GATEWAY_ANALYTICS"] == "analytics:50444"
    assert "analytics" in analytics_env["ANALYTICS_SERVER_TLS_NAMES"].split(",")
    assert (
        gateway_env["STATS_GATEWAY_ANALYTICS_CA_FILE"]
        == analytics_env["ANALYTICS_SERVER_TLS_DIR"] + "/ca.crt"
    )
    tokens = {
        services["aggregation"]["environment"]["AGGREGATION_SERVER_ADMIN_TOKEN_FILE"],
        analytics_env["ANALYTICS_SERVER_ADMIN_TOKEN_FILE"],
        gateway_env["STATS_GATEWAY_ADMIN_TOKEN_FILE"],
    }
    assert len(tokens) == 1, tokens  # one admin token
    assert services["gateway"]["command"] == [
        "printernizer_stats.gateway",
        "--agent-socket",
        "",
    ]  # no local agent there
    secrets = set(compose()["secrets"])
    for name, service in services.items():
        assert set(service.get("secrets", [])) <= secrets, name
        for value in service.get("environment", {}).values():
            if str(value).startswith("/run/secrets/"):
                assert str(value).removeprefix("/run/secrets/") in service["secrets"], (name, value)


def test_the_container_recipe_installs_what_its_services_need_and_exposes_the_listen_ports() -> None:
    recipe = (DEPLOY / "Containerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", recipe, flags=re.MULTILINE))
    installed = {m.strip("'") for m in re.findall(r"'?\./(\w+)(?:\[[\w,]+\])?'?", recipe)}
    assert installed <= copied, "a distribution installed from a folder the image lacks"
    # Every distribution of this repository those need is installed from its folder too.
    names = {distribution_name(folder): folder for folder in DISTRIBUTION_FOLDERS}
    needed = {dep for folder in installed for dep in own_dependencies(folder)}
    assert {names[name] for name in needed} <= installed
    assert {"aggregation_server", "analytics_server", "gateway"} <= installed
    environment = containerfile_env()
    assert set(environment) - IMAGE_ENVIRONMENT <= known_environment_variables()
    listen_ports = {v.rsplit(":", 1)[1] for k, v in environment.items() if k.endswith("_LISTEN")}
    exposed = set(re.search(r"^EXPOSE (.+)$", recipe, flags=re.MULTILINE)[1].split())  # type: ignore[index]
    assert listen_ports == exposed
    assert 'ENTRYPOINT ["python", "-m"]' in recipe
    assert re.search(r'^CMD \["([\w.]+)"\]$', recipe, flags=re.MULTILINE)[1] in PARSERS  # type: ignore[index]


# Every folder that is a distribution of this repository.
DISTRIBUTION_FOLDERS = tuple(sorted(p.parent.name for p in ROOT.glob("*/pyproject.toml")))


def distribution_name(folder: str) -> str:
    return str(tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["name"])


def own_dependencies(folder: str) -> set[str]:
    """The distributions of this repository that the one in `folder` depends on."""
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    return {
        re.split(r"[\[=<>]", dep)[0]
        for dep in project["dependencies"]
        if dep.startswith("printernizer-stats-")
    }


def systemd_unit(name: str) -> dict[str, list[str]]:
    """Section.Key -> values (a key may repeat, as Environment= does)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def unit_command(unit: dict[str, list[str]]) -> tuple[str, list[str], dict[str, str]]:
    command = shlex.split(unit["Service.ExecStart"][0])
    assert command[0].endswith("/python")
    assert command[1] == "-m"
    environment = dict(v.split("=", 1) for v in unit.get("Service.Environment", []))
    return command[2], command[3:], environment


@pytest.mark.parametrize("name", ["printernizer-stats-agent.service", "printernizer-stats-gateway.service"])
def test_the_systemd_units_run_real_commands_with_real_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = systemd_unit(name)
    module, arguments, environment = unit_command(unit)
    accepts(module, arguments, environment, monkeypatch)
    assert unit["Service.KillSignal"] == ["SIGTERM"]  # the services stop cleanly on it
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_the_local_units_share_one_socket_and_keep_it_private(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = systemd_unit("printernizer-stats-agent.service")
    gateway = systemd_unit("printernizer-stats-gateway.service")
    _, _, agent_env = unit_command(agent)
    _, gateway_args, gateway_env = unit_command(gateway)
    socket = Path(agent_env["STATS_AGENT_SOCKET"])
    assert gateway_env["STATS_GATEWAY_AGENT_SOCKET"] == str(socket)
    assert socket.parent == Path("/run") / agent["Service.RuntimeDirectory"][0]
    assert int(agent["Service.RuntimeDirectoryMode"][0], 8) & 0o007 == 0  # no access for others
    # The database's directory is the one the unit makes writable (beside Printernizer's data).
    assert f"-{Path(agent_env['STATS_AGENT_DB']).parent}" in agent["Service.ReadWritePaths"]
    parsed = accepts("printernizer_stats.gateway", gateway_args, gateway_env, monkeypatch)
    assert parsed.admin_token_file == ""  # the statistics side is off beside one installation
    assert parsed.listen.startswith("127.0.0.1:")  # this machine only


AGENT_UNIT = "printernizer-stats-agent.service"
VENV_PYTHON = "/opt/printernizer-stats/bin/python"  # as in every recipe: a venv of its own


def test_the_systemd_units_run_a_real_installation() -> None:
    """What `python3 -m venv /opt/printernizer-stats && .../pip install ...` gives:
    the interpreter the units name, and no placeholder server to send to."""
    for name in (AGENT_UNIT, "printernizer-stats-gateway.service"):
        unit = systemd_unit(name)
        assert shlex.split(unit["Service.ExecStart"][0])[0] == VENV_PYTHON, name
        assert not any("file://" in value for value in unit.get("Unit.Documentation", [])), name
    _, _, environment = unit_command(systemd_unit(AGENT_UNIT))
    assert "STATS_AGENT_SERVER" not in environment  # nothing is sent unless configured


def test_the_agent_unit_keeps_its_data_beside_printernizers_and_takes_its_settings() -> None:
    unit = systemd_unit(AGENT_UNIT)
    _, arguments, environment = unit_command(unit)
    # Printernizer's time zone (its TIMEZONE) from the environment file; empty: the system's.
    assert arguments == ["--timezone", "${TIMEZONE}"]
    files = unit["Service.EnvironmentFile"]
    assert all(f.startswith("-") for f in files)  # optional
    example = DEPLOY / "systemd" / "printernizer-stats-agent.env.example"
    settings = {
        line.split("=", 1)[0].lstrip("#")
        for line in example.read_text().splitlines()
        if "=" in line and not line.startswith("# ")
    }
    assert settings <= known_environment_variables() | {"TIMEZONE", "DO_NOT_TRACK"}, settings
    assert {"TIMEZONE", "DO_NOT_TRACK"} <= settings
    # The database: in Printernizer's data directory, made private for the agent's user.
    database = Path(environment["STATS_AGENT_DB"]).parent
    assert database.parent == Path("/data/printernizer")  # Printernizer's DATABASE_PATH default
    user, group = unit["Service.User"][0], unit["Service.Group"][0]
    assert unit["Service.ExecStartPre"] == [f"+/usr/bin/install -d -o {user} -g {group} -m 0700 {database}"]
    assert unit["Service.ReadWritePaths"] == [f"-{database}"]
    assert unit["Service.ProtectSystem"] == ["strict"]
    # Crashes: restarted, within a bound.
    assert unit["Service.Restart"] == ["on-failure"]
    assert int(unit["Unit.StartLimitBurst"][0]) > 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text().replace(VENV_PYTHON, sys.executable)
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stderr
