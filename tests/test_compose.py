"""docker-compose.yml and the Dockerfile agree with the README and with what the Celery test runs.

Docker does not run on CI, so this reads the files: every service the README's "Scaling out"
section names exists, has an image or build context and a health check; the Airflow services
share the settings that tests/integration/test_celery.py gives its processes (CeleryExecutor,
PostgreSQL metadata DB and results, Redis broker, one JWT secret, the execution API URL).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import yaml

from interest_pipeline import airflow_local
from interest_pipeline.api import DEFAULT_PORT
from interest_pipeline.config import REPO_ROOT, airflow_env, get_settings

CORE_SERVICES = {
    "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
}
# Keys local_env() adds to the embedded default's settings so that tasks reach the api-server.
SHARED_SECRET_KEYS = {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _airflow_services(services: dict) -> dict:
    return {name: s for name, s in services.items() if name.startswith("airflow-")}


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def _scaling_out_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^## Scaling out\b(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    assert match, "README.md has no '## Scaling out' section"
    return match.group(1)


def test_every_service_the_readme_names_exists(compose, services):
    section = _scaling_out_section()
    named = set(re.findall(r"`((?:airflow-[a-z-]+|postgres|redis))`", section))
    named -= set(compose["volumes"])  # `airflow-logs` is a volume
    named |= set(re.findall(r"--scale ([a-z-]+)=", section))
    named |= set(re.findall(r"docker compose (?:run --rm|exec) ([a-z-]+)", section))
    assert CORE_SERVICES <= named, f"the README does not name {sorted(CORE_SERVICES - named)}"
    assert named <= set(services), f"not in docker-compose.yml: {sorted(named - set(services))}"
    assert "docker compose up" in section and "--scale airflow-worker=" in section
    assert "backfill create" in section


def test_the_core_services_exist_with_an_image_or_build_and_a_health_check(services):
    assert CORE_SERVICES <= set(services)
    for name in ("postgres", "redis"):
        assert services[name].get("image"), name
    for name, service in _airflow_services(services).items():
        assert service.get("build") == "." and service.get("image"), name
    for name in CORE_SERVICES - {"airflow-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert (REPO_ROOT / "Dockerfile").exists()


def test_each_airflow_component_of_the_local_start_has_a_service(services):
    commands = {_command(s) for s in _airflow_services(services).values()}
    for component in airflow_local.COMPONENTS:
        assert f"airflow {component}" in commands, component
    assert "airflow celery worker" in commands
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # so that it can scale
    assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    init = _command(services["airflow-init"])
    assert "interest-airflow prepare" in init  # migrate + the one-slot writer pool
    assert "passwords.json" in init  # the UI user
    for name in CORE_SERVICES - {"postgres", "redis", "airflow-init"}:
        condition = services[name]["depends_on"]["airflow-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_airflow_services_share_the_settings_the_celery_test_runs_with(services):
    expected = airflow_local.celery_env(
        "airflow", "airflow:airflow@postgres:5432", "redis://redis:6379/0"
    )
    embedded = airflow_env(get_settings())
    for name, service in _airflow_services(services).items():
        env = service["environment"]
        missing = (set(expected) | set(embedded) | SHARED_SECRET_KEYS) - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                    "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__BROKER_URL"):
            assert env[key] == expected[key], f"{name}: {key}"
        # the secret comes from .env, and compose refuses to start without it
        assert re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:\?.+\}", env["AIRFLOW__API_AUTH__JWT_SECRET"])
        execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
        assert any(p.endswith(f":{execution.port}") for p in services["airflow-apiserver"]["ports"])


def test_postgres_and_redis_match_the_urls(services):
    env = services["airflow-scheduler"]["environment"]
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    pg = services["postgres"]["environment"]
    assert (db.hostname, db.username, db.password, db.path) == (
        "postgres", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], f"/{pg['POSTGRES_DB']}"
    )
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"


def test_warehouse_and_landing_zone_live_on_volumes_every_airflow_service_shares(compose, services):
    for name, service in _airflow_services(services).items():
        env = service["environment"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts.get(env["INTEREST_DATA_DIR"]) == "interest-data", name
        assert mounts.get(env["INTEREST_LANDING_DIR"]) == "landing", name
        assert env["INTEREST_WAREHOUSE_PATH"].startswith(env["INTEREST_DATA_DIR"] + "/")
        assert mounts.get(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) == "airflow-logs", name
    assert {"interest-data", "landing", "postgres-db"} <= set(compose["volumes"])


def test_the_image_builds_the_project_in_where_the_compose_file_points(services):
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    (workdir,) = re.findall(r"^WORKDIR (\S+)", dockerfile, flags=re.M)
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{workdir}/dags"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{workdir}/plugins"
    assert "requirements.txt" in dockerfile and "pip install --no-deps -e ." in dockerfile
    assert "grep -E '^torch=='" in dockerfile  # torch first, the CPU build
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".local", ".env"} <= set(ignored)


def test_requirements_hold_what_the_celery_path_needs():
    pins = (REPO_ROOT / "requirements.txt").read_text()
    for package in ("apache-airflow-providers-celery", "celery", "redis", "psycopg2-binary",
                    "asyncpg"):
        assert re.search(rf"^{re.escape(package)}(\[[a-z,]+\])?==", pins, flags=re.M), package


def test_the_read_api_service_serves_the_warehouse_on_the_data_volume_read_only(services):
    api = services["interest-api"]
    scheduler = services["airflow-scheduler"]
    assert api.get("build") == "." and api["image"] == scheduler["image"]
    command = _command(api)
    assert command.startswith("interest serve") and "--host 0.0.0.0" in command
    (port,) = re.findall(r"--port (\d+)", command)
    (mapping,) = api["ports"]
    assert mapping == f"${{INTEREST_API_PORT:-{DEFAULT_PORT}}}:{port}"
    assert api["healthcheck"]["test"][-1] == f"http://localhost:{port}/health"
    env = api["environment"]
    assert env["INTEREST_WAREHOUSE_PATH"] == scheduler["environment"]["INTEREST_WAREHOUSE_PATH"]
    assert f"interest-data:{env['INTEREST_DATA_DIR']}:ro" in api["volumes"]
    assert not any(key.startswith("AIRFLOW") for key in env)  # no Airflow secret needed
    assert "`interest-api`" in _scaling_out_section()
