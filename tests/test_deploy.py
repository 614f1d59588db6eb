"""The production compose stack: docker-compose.yml, the Dockerfile and what they refer to.

There is no Docker engine here, so the compose file is checked against the
Compose Specification's JSON schema (vendored: tests/schemas/README.md), and
every reference in it is resolved by hand: services, volumes, files mounted
from the repository, the env file, the build context, every `${VAR}` against
.env.example. The namespace script runs for real against the session's dev
server.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shutil
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment

from stepflow.runtime.devserver import SEARCH_ATTRIBUTES, temporal_binary
from stepflow.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
NAMESPACE_SCRIPT = ROOT / "deploy" / "temporal" / "setup-namespace.sh"
SCHEMA_SCRIPT = ROOT / "deploy" / "temporal" / "setup-postgres.sh"

VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
"""`${NAME}`, `${NAME:-default}`, `${NAME:?message}`; not `$${NAME}`, which reaches the container."""
SECRET_NAME = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|KEY$")
"""Names of variables that hold secrets (OPENAI_API_KEY, POSTGRES_PASSWORD...)."""
SECRETS = {"POSTGRES_PASSWORD", "STEPFLOW_ENCRYPTION_KEY", "STEPFLOW_CODEC_SERVER_TOKEN"}
"""What the stack can't start without: docker compose must refuse to start if one is unset."""


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def env_lines(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short syntax."""
    pairs = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"long volume syntax not expected here: {entry!r}"
        source, target, *_ = entry.split(":")
        pairs.append((source, target))
    return pairs


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file behind a path in a container, through the service's bind mounts."""
    for source, target in mounts(service):
        if source.startswith(".") and (
            container_path == target or container_path.startswith(target + "/")
        ):
            return ROOT / source / container_path[len(target) :].lstrip("/")
    return None


def image_tag(image: str) -> tuple[str, str]:
    name, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag, f"{image}: no tag"
    return name, tag


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose())
    ]
    assert errors == []
    # The schema does catch mistakes: a misspelt key is an error.
    broken = compose()
    broken["services"]["worker"]["enviroment"] = {"X": "1"}
    assert any("enviroment" in error.message for error in validator.iter_errors(broken))


def test_the_stack_has_every_part_on_current_images() -> None:
    found = services()
    assert set(found) == {
        "postgres",
        "temporal-schema",
        "temporal",
        "temporal-namespace",
        "temporal-admin-tools",
        "temporal-ui",
        "worker",
        "codec-server",
    }
    images = {name: s["image"] for name, s in found.items() if "build" not in s}
    for name, image in images.items():
        repository, tag = image_tag(image)
        assert repository != "temporalio/auto-setup", f"{name}: deprecated image {image}"
        assert tag != "latest", f"{name}: {image} is not pinned"
    assert image_tag(images["postgres"])[0] == "postgres"
    assert image_tag(images["temporal"])[0] == "temporalio/server"
    assert image_tag(images["temporal-ui"])[0] == "temporalio/ui"
    # The schema tool must be the server's version: it migrates to the schema that server needs.
    server_version = image_tag(images["temporal"])[1]
    for name in ("temporal-schema", "temporal-namespace", "temporal-admin-tools"):
        assert images[name] == f"temporalio/admin-tools:{server_version}", name
    assert found["temporal"]["environment"]["DB"] == "postgres12"


def test_every_reference_resolves() -> None:
    document = compose()
    found = services()
    declared_volumes = set(document.get("volumes", {}))
    used_volumes = set()
    for name, service in found.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in found, f"{name} depends on unknown service {dependency}"
            assert dependency != name
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in found[dependency], f"{dependency} has no healthcheck"
            if condition["condition"] == "service_completed_successfully":
                assert found[dependency].get("restart", "no") == "no", f"{dependency} restarts"
        for source, target in mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert not source.startswith("/"), f"{name}: absolute host path {source}"
                assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
        for env_file in service.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (ROOT / path).is_file(), f"{name}: env file {path} is missing"
        if "build" in service:
            build = service["build"]
            context = build if isinstance(build, str) else build["context"]
            assert (ROOT / context / "Dockerfile").is_file(), f"{name}: no Dockerfile in {context}"
        # A script or config file named inside the container is a file of this repository.
        entrypoint = service.get("entrypoint", [])
        for word in entrypoint if isinstance(entrypoint, list) else entrypoint.split():
            behind = host_path(service, word)
            if behind is not None:
                assert behind.is_file(), f"{name}: {word} is {behind}, which is missing"
    assert used_volumes == declared_volumes, "declared volumes that no service uses"

    temporal = found["temporal"]
    config = host_path(temporal, temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"])
    assert config is not None and config.is_file()
    dynamic_config = yaml.safe_load(config.read_text())
    for key, constraints in dynamic_config.items():
        assert isinstance(constraints, list) and all("value" in c for c in constraints), key
    assert dynamic_config["frontend.enableUpdateWorkflowExecution"] == [{"value": True}]


def test_every_variable_is_documented_in_env_example_and_secrets_stay_out() -> None:
    text = COMPOSE_FILE.read_text()
    used = {match.group(1): match for match in VARIABLE.finditer(text)}
    example = env_lines(ENV_EXAMPLE)
    assert sorted(set(used) - set(example)) == [], "used in docker-compose.yml, not in .env.example"
    assert sorted(set(example) - set(used)) == [], "in .env.example, unused by docker-compose.yml"
    for name in SECRETS:
        # Required: `docker compose` stops with the message rather than start without it.
        required = [m for m in VARIABLE.finditer(text) if m.group(1) == name]
        assert required and all(m.group(2) == ":?" for m in required), name
        assert example[name] == "", f".env.example must not carry a value for {name}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example has a value for {name}"

    for service_name, service in services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{service_name}: environment as a mapping"
        for name, value in environment.items():
            if SECRET_NAME.search(name):
                assert isinstance(value, str) and VARIABLE.fullmatch(value), (
                    f"{service_name}: {name} must come from .env as ${{...}}, not be written here"
                )
    for name in env_lines(ROOT / "deploy" / "stepflow.env"):
        assert not SECRET_NAME.search(name), f"deploy/stepflow.env holds {name}"

    ignored = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert ".env" in ignored
    assert not any(fnmatch.fnmatch(".env.example", pattern) for pattern in ignored if pattern)


def test_workers_scale_and_the_codec_server_serves_the_ui() -> None:
    found = services()
    worker = found["worker"]
    assert "container_name" not in worker, "--scale needs generated container names"
    assert "ports" not in worker, "replicas would fight over a host port"
    assert worker["command"] == ["python", "worker.py"]
    assert worker["depends_on"]["temporal-namespace"]["condition"] == (
        "service_completed_successfully"
    )
    assert worker["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    # Every replica and the codec server share one payload store.
    assert ("payloads", "/data/payloads") in mounts(worker)
    assert ("payloads", "/data/payloads") in mounts(found["codec-server"])
    assert env_lines(ROOT / "deploy" / "stepflow.env")["STEPFLOW_PAYLOAD_DIR"] == "/data/payloads"
    assert not any("container_name" in s for s in found.values())

    codec = found["codec-server"]
    assert codec["command"][:2] == ["stepflow", "codec-server"]
    port = codec["command"][codec["command"].index("--port") + 1]
    assert any(p.endswith(f":{port}:{port}") for p in codec["ports"])
    ui = found["temporal-ui"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"].endswith(f":{port}}}")
    assert found["temporal-ui"]["depends_on"]["temporal"]["condition"] == "service_healthy"

    assert "pg_isready" in " ".join(found["postgres"]["healthcheck"]["test"])
    assert found["temporal"]["healthcheck"]["test"][-1] == "7233"
    assert found["temporal"]["depends_on"]["temporal-schema"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("temporal", "temporal-ui", "codec-server"):
        for published in found[name]["ports"]:
            assert published.startswith("${STEPFLOW_PUBLISH_ADDRESS:-127.0.0.1}:"), published


def test_the_stacks_stepflow_settings_exist_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt STEPFLOW_ name would be ignored silently, so each must name a setting."""
    settings_file = env_lines(ROOT / "deploy" / "stepflow.env")
    names = set(settings_file)
    for name in ("worker", "codec-server"):
        names |= set(services()[name]["environment"])
    for name in sorted(names):
        if name.startswith("STEPFLOW_"):
            assert name.removeprefix("STEPFLOW_").lower() in Settings.model_fields, name
    for name, value in settings_file.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.payload_store == "local"
    assert str(settings.payload_dir) == "/data/payloads"
    assert settings.tool_modules == ["examples.tools"]


def test_dockerfile_installs_the_project_and_runs_the_worker_unprivileged() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(line.split()[0].upper(), line.partition(" ")[2]) for line in lines]
    base = next(args for op, args in instructions if op == "FROM")
    assert base.startswith("python:3.11") and not base.endswith(":latest")
    copied = {
        source.rstrip("/")
        for op, args in instructions
        if op == "COPY"
        for source in args.split()[:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The one package, `stepflow`, and the root folders its subpackages link to.
    packages = {
        p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    linked = {p.name for p in (ROOT / "stepflow").iterdir() if p.is_symlink()}
    assert packages == {"stepflow"} and {"workflows", "worker.py"} <= linked
    needed = packages | linked | {"pyproject.toml", project["project"]["readme"]}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "pip install --no-deps ." in runs and "-e " not in runs
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert instructions[-1] == ("CMD", '["python", "worker.py"]')
    image_env = dict(
        re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in instructions if op == "ENV"))
    )
    for name in image_env:
        if name.startswith("STEPFLOW_"):
            assert name.removeprefix("STEPFLOW_").lower() in Settings.model_fields, name
    # The stack's tool module (examples.tools) imports in the worker and in `stepflow` alike.
    assert image_env["STEPFLOW_IMPORT_PATH"] == "/app"

    # The build context keeps out secrets and local state, and keeps what the Dockerfile copies.
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for private in (".env", ".venv", ".git", ".stepflow"):
        assert private in ignore, private
    for name in needed | {"examples"}:
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in ignore), name


def test_setup_scripts_are_valid_shell_and_register_stepflows_search_attributes() -> None:
    for script in (NAMESPACE_SCRIPT, SCHEMA_SCRIPT):
        checked = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    declared = re.search(r'^SEARCH_ATTRIBUTES="([^"]*)"$', NAMESPACE_SCRIPT.read_text(), re.M)
    assert declared is not None
    pairs = dict(pair.split("=") for pair in declared.group(1).split())
    assert pairs == SEARCH_ATTRIBUTES
    schema_setup = SCHEMA_SCRIPT.read_text()
    for database in ("temporal", "temporal_visibility"):
        assert f"setup {database} " in schema_setup


async def run_namespace_script(address: str, namespace: str) -> str:
    environment = {
        **os.environ,
        "PATH": f"{Path(temporal_binary()).parent}{os.pathsep}{os.environ['PATH']}",
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_NAMESPACE_RETENTION": "48h",
    }
    process = await asyncio.create_subprocess_exec(
        "sh",
        str(NAMESPACE_SCRIPT),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    return text


@pytest.mark.skipif(shutil.which("getent") is None, reason="needs getent, as in the image")
async def test_namespace_script_creates_the_namespace_and_search_attributes_once(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = temporal_env.client
    address = client.service_client.config.target_host
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"

    first = await run_namespace_script(address, namespace)
    assert f"creating namespace {namespace} (retention 48h)" in first
    for name in SEARCH_ATTRIBUTES:
        assert f"registering search attribute {name} (Keyword)" in first

    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=namespace)
    )
    assert described.config.workflow_execution_retention_ttl.ToSeconds() == 48 * 3600
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    for name in SEARCH_ATTRIBUTES:
        assert listed.custom_attributes[name] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD

    again = await run_namespace_script(address, namespace)
    assert f"namespace {namespace} exists" in again
    assert "registering" not in again
    assert f"namespace {namespace} is ready for Stepflow" in again
