"""docker/: the compose stack, the Prometheus scrape configuration and the worker image.

No Docker engine runs the stack here, so docker-compose.yml is checked against the Compose
Specification's JSON schema (vendored by the ``check-jsonschema`` package as
``vendor.compose-spec``; the schema's strictness is checked too), and then for what matters
to this project: two workers configured through settings that really exist, every worker
scraped by Prometheus, Grafana provisioned from dashboards/, health checks everywhere,
``service_healthy`` dependencies, named volumes, and only the intended host ports.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from psycopg.conninfo import conninfo_to_dict

from app.settings import Settings, load_settings
from generator.cli import build_parser
from sinks import migrations
from sinks.timescale_settings import WORKER_PROCESSES, worker_setting_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
PROMETHEUS_FILE = DOCKER / "prometheus.yml"
PROVISIONING = REPO_ROOT / "dashboards" / "provisioning"

WEB_PORT = 6066
METRICS_PORT = 9091
#: the workers' RocksDB data directory: the image's --datadir and each worker's own volume
DATA_DIR = "/var/lib/analytics/data"
#: host port -> service: everything else stays inside the compose network
INTENDED_HOST_PORTS = {3000: "grafana", 9090: "prometheus", 6066: "worker-1", 6067: "worker-2"}


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_compose()["services"]
    return found


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with the defaults (the environment is not consulted)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def as_list(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def workers() -> dict[str, dict[str, Any]]:
    """Services that run the worker image with the ``worker`` command."""
    return {
        name: service
        for name, service in services().items()
        if service.get("build", {}).get("dockerfile") == "docker/Dockerfile"
        and as_list(service.get("command"))[:1] == ["worker"]
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every mount, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts.append((source, target))
    return mounts


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every published port."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            found.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            found.append(("", int(parts[0]), int(parts[1])))
        else:
            found.append(("", 0, int(parts[0])))  # a random host port
    return found


# --------------------------------------------------------------------------- the schema


def compose_validator() -> jsonschema.protocols.Validator:
    schema = get_builtin_schema("vendor.compose-spec")
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft7Validator
    )
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in compose_validator().iter_errors(document)
    )


def test_compose_file_matches_the_compose_specification() -> None:
    assert schema_errors(load_compose()) == []


def test_the_schema_rejects_what_compose_would_reject() -> None:
    document = load_compose()
    typo = copy.deepcopy(document)
    typo["services"]["kafka"]["healthcheck"]["intervall"] = "5s"
    assert any("intervall" in error for error in schema_errors(typo))
    condition = copy.deepcopy(document)
    condition["services"]["worker-1"]["depends_on"]["kafka"]["condition"] = "service_ready"
    assert schema_errors(condition)
    unknown = copy.deepcopy(document)
    unknown["services"]["grafana"]["helthcheck"] = {}
    assert schema_errors(unknown)


# --------------------------------------------------------------------------- the stack


def test_the_stack_has_its_services_and_images() -> None:
    found = services()
    assert set(found) == {
        "kafka",
        "timescaledb",
        "worker-1",
        "worker-2",
        "generator",
        "prometheus",
        "grafana",
    }
    assert found["kafka"]["image"] == "apache/kafka:3.9.1"
    assert found["timescaledb"]["image"] == "timescale/timescaledb:latest-pg15"
    assert found["prometheus"]["image"].startswith("prom/prometheus")
    assert found["grafana"]["image"].startswith("grafana/grafana")


def server_settings(service: dict[str, Any]) -> dict[str, str]:
    """The ``-c name=value`` settings of a PostgreSQL service's command."""
    command = as_list(service.get("command"))
    assert command[:1] == ["postgres"], command
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-c"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_timescaledb_has_the_workers_its_policy_jobs_need() -> None:
    settings = server_settings(services()["timescaledb"])
    # the migrations' policies (compression and retention per hypertable) and TimescaleDB's
    # own jobs (telemetry, job history retention), with one to spare
    jobs = 2 * len(migrations.HYPERTABLES) + 3
    assert worker_setting_problems(settings, jobs) == []
    # the same stack at PostgreSQL's default pool size is what failed (issue 9)
    assert worker_setting_problems({**settings, WORKER_PROCESSES: "8"}, jobs) != []


def test_kafka_runs_in_kraft_mode_advertised_inside_the_network() -> None:
    env = environment(services()["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # a single broker


def test_two_workers_with_their_own_data_and_web_host() -> None:
    found = workers()
    assert set(found) == {"worker-1", "worker-2"}
    data_volumes = set()
    for name, service in found.items():
        command = as_list(service["command"])
        assert command[command.index("--web-host") + 1] == name  # Faust routes requests here
        (data,) = [source for source, target in volume_mounts(service) if target == DATA_DIR]
        data_volumes.add(data)
    assert len(data_volumes) == 2  # one RocksDB directory each


def test_worker_environment_sets_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    db = environment(services()["timescaledb"])
    for name, service in workers().items():
        env = environment(service)
        for key in env:
            if key.startswith("ANALYTICS__"):
                assert_setting_exists(key)
        for key in [*env, "KAFKA_BOOTSTRAP", "DATABASE_URL"]:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.brokers == ["kafka:9092"], name
        assert settings.sources.http.host == "0.0.0.0"
        assert settings.sources.http.port == WEB_PORT
        assert settings.metrics.enabled and settings.metrics.port == METRICS_PORT
        url = conninfo_to_dict(settings.database_url)
        assert url["host"] == "timescaledb"
        assert (url["user"], url["password"], url["dbname"]) == (
            db["POSTGRES_USER"],
            db["POSTGRES_PASSWORD"],
            db["POSTGRES_DB"],
        )


def assert_setting_exists(variable: str) -> None:
    """ANALYTICS__SECTION__KEY names a field of Settings (a typo would be ignored silently)."""
    model: Any = Settings
    for part in variable.removeprefix("ANALYTICS__").lower().split("__"):
        assert part in model.model_fields, f"{variable}: no setting {part!r}"
        model = model.model_fields[part].annotation


def test_the_generator_sends_to_a_worker_with_valid_options() -> None:
    generator = services()["generator"]
    assert as_list(generator["entrypoint"]) == ["analytics-generate"]
    args = build_parser().parse_args([interpolate(a) for a in as_list(generator["command"])])
    assert args.target == "http"
    assert re.fullmatch(rf"http://(worker-1|worker-2):{WEB_PORT}", args.url)
    assert args.rate > 0
    target = args.url.split("//")[1].split(":")[0]
    assert generator["depends_on"][target]["condition"] == "service_healthy"


def test_every_service_has_a_health_check() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert not check.get("disable")
        test = as_list(check["test"])
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    worker_check = " ".join(as_list(services()["worker-1"]["healthcheck"]["test"]))
    assert f"127.0.0.1:{WEB_PORT}/health" in worker_check
    assert "pg_isready" in " ".join(as_list(services()["timescaledb"]["healthcheck"]["test"]))


def test_dependencies_wait_for_healthy_services() -> None:
    found = services()
    expected = {
        "worker-1": {"kafka", "timescaledb"},
        "worker-2": {"kafka", "timescaledb"},
        "prometheus": {"worker-1", "worker-2"},
        "grafana": {"prometheus", "timescaledb"},
    }
    for name, needs in expected.items():
        assert needs <= set(found[name]["depends_on"]), name
    for name, service in found.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for other, rule in depends.items():
            assert rule["condition"] == "service_healthy", f"{name} -> {other}"
            assert found[other].get("healthcheck"), f"{name} waits for {other}, never healthy"


def test_named_volumes_for_all_state() -> None:
    document = load_compose()
    declared = set(document["volumes"])
    used = set()
    for name, service in document["services"].items():
        for source, _target in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
                continue
            assert source in declared, f"{name}: volume {source} is not declared"
            used.add(source)
    assert used == declared
    stateful = {
        "kafka": "/var/lib/kafka/data",
        "timescaledb": "/var/lib/postgresql/data",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
        "worker-1": DATA_DIR,
        "worker-2": DATA_DIR,
    }
    for name, target in stateful.items():
        sources = [s for s, t in volume_mounts(document["services"][name]) if t == target]
        assert sources and sources[0] in declared, f"{name}: {target} is not a named volume"


def test_only_the_intended_host_ports_are_published() -> None:
    published: dict[int, str] = {}
    for name, service in services().items():
        for address, host_port, _container in published_ports(service):
            assert address == "127.0.0.1", f"{name} publishes on {address or 'every address'}"
            assert host_port not in published
            published[host_port] = name
    assert published == INTENDED_HOST_PORTS
    for address, host_port, container in published_ports(services()["worker-2"]):
        assert (address, host_port, container) == ("127.0.0.1", 6067, WEB_PORT)


# --------------------------------------------------------------------------- Prometheus, Grafana


def test_prometheus_scrapes_every_worker() -> None:
    prometheus = services()["prometheus"]
    mounts = dict((t, s) for s, t in volume_mounts(prometheus))
    assert (DOCKER / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_FILE
    assert "--config.file=/etc/prometheus/prometheus.yml" in as_list(prometheus["command"])
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    scraped = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name in workers():
        assert f"{name}:{METRICS_PORT}" in scraped, f"{name} is not scraped"
    assert not {t for t in scraped if t.startswith("worker-")} - {
        f"{name}:{METRICS_PORT}" for name in workers()
    }


def test_grafana_is_provisioned_from_the_dashboards_folder() -> None:
    grafana = services()["grafana"]
    mounts = {target: (DOCKER / source).resolve() for source, target in volume_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    providers = [
        provider
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    for provider in providers:
        folder = mounts[provider["options"]["path"]]
        assert list(folder.glob("*.json")), f"no dashboard in {folder}"
    env = environment(grafana)
    assert (env["GF_SECURITY_ADMIN_USER"], env["GF_SECURITY_ADMIN_PASSWORD"]) == ("admin", "admin")
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount = next(target for target in mounts if home.startswith(target + "/"))
    assert (mounts[mount] / home.removeprefix(mount + "/")).is_file()


def test_grafana_data_sources_point_at_the_stack() -> None:
    found = services()
    db = environment(found["timescaledb"])
    sources = [
        source
        for path in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    by_type = {source["type"]: source for source in sources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    postgres = by_type["grafana-postgresql-datasource"]
    assert postgres["url"] == "timescaledb:5432"
    assert postgres["user"] == db["POSTGRES_USER"]
    assert postgres["secureJsonData"]["password"] == db["POSTGRES_PASSWORD"]
    assert postgres["jsonData"]["database"] == db["POSTGRES_DB"]


# --------------------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def test_the_image_is_slim_and_runs_as_a_user() -> None:
    bases = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_the_image_runs_the_faust_worker_with_its_data_in_the_volume() -> None:
    stage = dict(final_stage())
    entrypoint = yaml.safe_load(stage["ENTRYPOINT"])  # JSON form
    assert entrypoint[:3] == ["faust", "-A", "app"]
    assert entrypoint[entrypoint.index("--datadir") + 1] == DATA_DIR
    assert DATA_DIR in stage["VOLUME"]
    assert yaml.safe_load(stage["CMD"])[0] == "worker"
    exposed = {int(port) for port in stage["EXPOSE"].split()}
    assert exposed == {WEB_PORT, METRICS_PORT}


def test_the_image_gets_every_package_and_the_configuration() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # top-level folders: a subpackage (web.static) comes with its parent's folder
    packages = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    copied = {
        args.split()[0].rstrip("/")
        for keyword, args in dockerfile_instructions()
        if keyword == "COPY" and not args.startswith("--from")
    }
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # an allow-list: nothing else reaches the build context
    for package in sorted(packages):
        assert package in copied, f"the Dockerfile does not copy {package}/"
        assert package in allowed, f".dockerignore leaves out {package}/"
    assert "pyproject.toml" in copied and "pyproject.toml" in allowed
    config = "configs/analytics-dashboard.yaml"
    assert config in copied and config in allowed
    (destination,) = [
        args.split()[1] for keyword, args in final_stage() if keyword == "COPY" and config in args
    ]
    env = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    assert f"ANALYTICS_CONFIG={destination}" in env
