"""Project files that users run directly: compose file, CI script, README commands, lint cleanliness."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def test_compose_file_is_valid_and_complete() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "web", "worker", "oidc", "capi-sandbox"} <= set(services)
    assert "healthcheck" in services["postgres"]
    assert services["web"]["command"][0] == "gunicorn"
    assert services["worker"]["command"] == ["hub", "worker"]
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["HUB_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["HUB_GRAPH_URL"] == "http://capi-sandbox:8765"
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), "services must not listen on every interface by default"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    run_command, test_command = _readme_commands()
    assert "hub serve" in run_command
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci
    assert "HUB_TEST_POSTGRES_URL" in ci


def test_ruff_lint_and_format_are_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    lint = subprocess.run([str(ruff), "check", "--quiet", str(ROOT)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(ruff), "format", "--check", "--quiet", str(ROOT)], capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
