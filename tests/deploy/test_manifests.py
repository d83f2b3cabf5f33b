"""The deployment files, checked offline: Docker cannot run here, so they are parsed.

Dockerfile, docker-compose.yml, deploy/kubernetes/*.yaml and deploy/nginx/: the fields
that make them hardened and routed by session, that they agree with each other and with
the policies, and that every hardening option carries a comment saying why.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from sandbox import load_policy
from tests.deploy.cluster import main_config, nginx_binary, render_template

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
ROUTER_TEMPLATE = ROOT / "deploy" / "nginx" / "codesherpa.conf.template"
COMPOSE_UPSTREAMS = ROOT / "deploy" / "nginx" / "compose-upstreams.conf.template"
CONTAINER_POLICY = ROOT / "policies" / "container.toml"

SERVICE_UID = 10001
# Layers a process without root and without capabilities can apply (sandbox/confine/).
UNPRIVILEGED_LAYERS = {"process", "identity", "rlimits", "landlock", "seccomp", "environment"}
# Layers that need CAP_SYS_ADMIN (namespaces) or a writable cgroup tree (cgroup).
PRIVILEGED_LAYERS = {"namespaces", "cgroup"}

# Keys that harden a container: each must carry a comment saying why (on its line, or
# above it, where a comment may cover a run of such keys).
COMPOSE_HARDENING = (
    "user",
    "read_only",
    "tmpfs",
    "cap_drop",
    "security_opt",
    "pids_limit",
    "mem_limit",
    "memswap_limit",
    "cpus",
    "init",
    "internal",
)
KUBERNETES_HARDENING = (
    "runAsNonRoot",
    "runAsUser",
    "allowPrivilegeEscalation",
    "privileged",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
    "automountServiceAccountToken",
    "resources",
    "fsGroup",
)


# --- Helpers ------------------------------------------------------------------------


def kubernetes_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc
        for doc in kubernetes_documents()
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [
        doc
        for doc in kubernetes_documents()
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])
    }


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", selector)
    return all(labels.get(key) == value for key, value in wanted.items())


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def volume_parts(entry: str) -> tuple[str, str, str]:
    source, target, *options = entry.split(":")
    return source, target, options[0] if options else "rw"


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def uncommented(path: Path, keys: tuple[str, ...]) -> list[str]:
    """Lines setting one of ``keys`` with no comment saying why.

    A comment counts on the key's own line, or above it at the same indentation with
    only other such keys (and their children) in between.
    """
    lines = path.read_text().splitlines()
    pattern = re.compile(r"^(\s*)(?:- )?(" + "|".join(keys) + r"):")
    missing = []
    for number, line in enumerate(lines):
        match = pattern.match(line)
        if not match or "#" in line:
            continue
        indent = len(match.group(1))
        explained = False
        for above in reversed(lines[:number]):
            stripped = above.strip()
            depth = len(above) - len(above.lstrip())
            if not stripped or depth > indent:
                continue
            if stripped.startswith("#") and depth == indent:
                explained = True
                break
            sibling = pattern.match(above)
            if depth == indent and sibling and len(sibling.group(1)) == indent:
                continue
            break
        if not explained:
            missing.append(f"{path.name}:{number + 1}: {line.strip()}")
    return missing


# --- The policy for containers ---------------------------------------------------------


def test_the_container_policy_requires_exactly_what_an_unprivileged_container_allows() -> None:
    policy = load_policy(CONTAINER_POLICY)
    assert set(policy.isolation.required) == UNPRIVILEGED_LAYERS
    assert set(policy.isolation.preferred) == PRIVILEGED_LAYERS
    assert policy.network.mode == "off"


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_image_is_built_in_stages_on_a_slim_python() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert any(re.search(r"\bAS build$", stage, re.IGNORECASE) for stage in stages[:-1])
    assert any(
        keyword == "COPY" and rest.startswith("--from=build") for keyword, rest in instructions
    )
    arguments = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], image)
        assert re.match(r"python:3\.11-slim", image), image


def test_the_image_runs_one_unprivileged_worker_with_a_liveness_check() -> None:
    instructions = dockerfile_instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == str(SERVICE_UID)
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/livez" in healthcheck
    (command,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert '"service", "serve"' in command
    workers = re.search(r"--workers\W+(\d+)", command)
    assert workers is None or workers.group(1) == "1"
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert "tini" in entrypoint, "an init reaps orphans where no `init: true` exists (pods)"
    installed = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "libseccomp2" in installed


def test_the_image_installs_the_toolbox_from_its_lock_with_hashes() -> None:
    instructions = dockerfile_instructions()
    arguments = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    assert arguments["LOCK"] == "toolbox.lock"
    installs = [
        rest for keyword, rest in instructions if keyword == "RUN" and "pip install" in rest
    ]
    assert any("--require-hashes" in rest and '"${LOCK}"' in rest for rest in installs)
    lock = (ROOT / "requirements" / "toolbox.lock").read_text()
    for name in ("scipy", "scikit-learn", "seaborn", "statsmodels", "openpyxl", "pyarrow"):
        assert re.search(rf"^{name}==\S+ \\\n\s+--hash=sha256:", lock, re.MULTILINE), name
    runtime = (ROOT / "requirements" / "runtime.lock").read_text()
    # The image's versions of what the service itself runs are the runtime lock's.
    for pin in re.findall(r"^\S+==\S+", runtime, re.MULTILINE):
        assert re.search(rf"^{re.escape(pin)} ", lock, re.MULTILINE), pin


def test_the_image_holds_no_secret() -> None:
    instructions = dockerfile_instructions()
    for keyword, rest in instructions:
        if keyword not in ("ENV", "ARG", "LABEL"):
            continue
        for name, _value in re.findall(r"(\w+)=(\S+)", rest):
            assert not re.search(
                r"TOKEN|SECRET|PASSWORD|API_?KEY", name, re.IGNORECASE
            ) or name.endswith("_FILE"), f"{keyword} {name} in the image"
    copied = " ".join(rest for keyword, rest in instructions if keyword in ("COPY", "ADD"))
    assert "secrets" not in copied
    # The build context is an allowlist that never lets secrets/ or .git in.
    ignore = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the first rule excludes everything"
    reincluded = [line[1:].strip("/") for line in ignore if line.startswith("!")]
    assert not any(name.startswith(("secrets", ".git", ".env", ".venv")) for name in reincluded)


# --- docker-compose.yml -----------------------------------------------------------------


def codesherpa_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").startswith("codesherpa")
    }


def test_every_compose_service_is_hardened() -> None:
    for name, service in compose()["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "privileged" not in service, name
        assert not service.get("cap_add"), f"{name} adds capabilities"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not any("unconfined" in opt for opt in service.get("security_opt", [])), name
        assert isinstance(service.get("pids_limit"), int), name
        assert service.get("mem_limit"), name
        assert service.get("init") is True, name
        assert any(str(entry).startswith("/tmp:") for entry in service.get("tmpfs", [])), name
    assert "SYS_ADMIN" not in without_comments(COMPOSE.read_text())


def test_compose_replicas_run_unprivileged_with_the_container_policy() -> None:
    top = compose()
    for name, service in codesherpa_services().items():
        assert str(service.get("user", "")).split(":")[0] == str(SERVICE_UID), name
        environment = compose_environment(service)
        # Tokens come from the secret file, never from a variable.
        assert "CODESHERPA_TOKENS" not in environment, name
        assert environment["CODESHERPA_TOKENS_FILE"] == "/run/secrets/codesherpa_tokens"
        assert "codesherpa_tokens" in [
            entry if isinstance(entry, str) else entry["source"] for entry in service["secrets"]
        ]
        assert "file" in top["secrets"]["codesherpa_tokens"]
        # The policy comes from policies/, read-only, and is the one for containers.
        volumes = [volume_parts(entry) for entry in service["volumes"]]
        assert ("./policies", "/app/policies", "ro") in volumes, name
        policy = PurePosixPath(environment["CODESHERPA_POLICY"])
        assert policy.parent == PurePosixPath("/app/policies")
        load_policy(ROOT / "policies" / policy.name)
        assert policy.name == CONTAINER_POLICY.name
        # Workspaces on a named volume of their own, bounded in size.
        state = environment["CODESHERPA_STATE_DIR"]
        (workspace,) = [source for source, target, _ in volumes if target == state]
        assert not workspace.startswith((".", "/")), f"{name}: {workspace} is no named volume"
        options = top["volumes"][workspace]["driver_opts"]
        assert options["type"] == "tmpfs"
        assert "size=" in options["o"]
    sources = [
        volume_parts(entry)[0]
        for service in codesherpa_services().values()
        for entry in service["volumes"]
    ]
    named = [source for source in sources if not source.startswith((".", "/"))]
    assert len(named) == len(set(named)), "two services share a state directory"


def test_the_scale_profile_runs_replicas_behind_nginx_hashing_the_session_key() -> None:
    services = compose()["services"]
    replicas = {
        name: s for name, s in codesherpa_services().items() if "scale" in s.get("profiles", [])
    }
    assert len(replicas) >= 2
    for name, service in replicas.items():
        # Each replica names itself in its links: /r/NAME reaches it through the router.
        assert compose_environment(service)["CODESHERPA_PUBLIC_URL"].endswith(f"/r/{name}")
        assert "ports" not in service, f"{name} must be reached through the router only"
    # The single-host service is not part of the profile.
    assert [name for name, s in codesherpa_services().items() if "profiles" not in s] == [
        "codesherpa"
    ]
    (router,) = [
        s
        for s in services.values()
        if "nginx" in s.get("image", "") and "scale" in s.get("profiles", [])
    ]
    assert set(router["depends_on"]) == set(replicas)
    mounts = {volume_parts(entry)[0]: volume_parts(entry)[1] for entry in router["volumes"]}
    assert mounts["./deploy/nginx/codesherpa.conf.template"].startswith("/etc/nginx/templates/")
    assert mounts["./deploy/nginx/compose-upstreams.conf.template"].startswith(
        "/etc/nginx/templates/"
    )
    upstreams = COMPOSE_UPSTREAMS.read_text()
    assert "hash $session_key consistent;" in upstreams
    ring = re.search(r"upstream codesherpa \{(.*?)\}", upstreams, re.DOTALL)
    assert ring is not None
    assert set(re.findall(r"server ([\w-]+):8000", ring.group(1))) == set(replicas)
    links = re.search(r"map \$link_replica \$replica_upstream \{(.*?)\}", upstreams, re.DOTALL)
    assert links is not None
    assert set(re.findall(r"^\s*([\w-]+)\s+\w+;", links.group(1), re.MULTILINE)) == set(replicas)
    # The replicas' network has no route out.
    for service in replicas.values():
        for network in service["networks"]:
            assert compose()["networks"][network]["internal"] is True


def test_every_compose_hardening_option_says_why() -> None:
    assert uncommented(COMPOSE, COMPOSE_HARDENING) == []


# --- The routing rules ----------------------------------------------------------------


def test_the_session_key_is_x_session_id_then_conversation_then_token_then_path() -> None:
    text = ROUTER_TEMPLATE.read_text()
    chain = re.findall(r"map \$(\w+) \$(\w+) \{\s*\"\"\s+\$(\w+);\s*default\s+\$(\w+);", text)
    assert chain == [
        (
            "http_x_session_id",
            "session_key_header",
            "http_openai_conversation_id",
            "http_x_session_id",
        ),
        ("session_key_header", "session_key_or_token", "http_authorization", "session_key_header"),
        ("session_key_or_token", "session_key", "session_from_uri", "session_key_or_token"),
    ]
    uri = re.search(r"map \$uri \$session_from_uri \{(.*?)\}", text, re.DOTALL)
    assert uri is not None
    assert "/sessions/" in uri.group(1)
    assert "/files/" in uri.group(1)
    # The key is hashed, never logged (it may be a bearer token); nor are query strings.
    log_format = re.search(r"log_format codesherpa (.*?);", text, re.DOTALL)
    assert log_format is not None
    assert not re.search(
        r"\$(session_key|http_|request\b|request_uri|args|query_string)", log_format.group(1)
    )


def test_every_router_configuration_passes_nginx_t(tmp_path: Path) -> None:
    """Debian's nginx (1.22) checks the shipped files; it predates `resolve` (1.27.3),
    so that parameter is dropped and the replicas' names point at loopback."""
    nginx = nginx_binary()
    routing = tmp_path / "codesherpa.conf"
    routing.write_text(
        render_template(
            ROUTER_TEMPLATE,
            {"CODESHERPA_LISTEN": "127.0.0.1:8080", "CODESHERPA_ACCESS_LOG": "/dev/null"},
        )
    )
    router = resource("ConfigMap", "codesherpa-router")
    upstream_files = {
        "compose": COMPOSE_UPSTREAMS.read_text(),
        "kubernetes": router["data"]["upstreams.conf.template"],
    }
    for name, text in upstream_files.items():
        text = text.replace(" resolve;", ";")
        text = re.sub(r"(?m)^resolver \S+", "resolver 127.0.0.1", text)
        text = re.sub(r"server [\w.-]+:8000", "server 127.0.0.1:8000", text)
        upstreams = tmp_path / f"{name}.conf"
        upstreams.write_text(text)
        directory = tmp_path / name
        directory.mkdir()
        config = directory / "nginx.conf"
        config.write_text(main_config(directory, [routing, upstreams]))
        checked = subprocess.run(
            [nginx, "-t", "-c", str(config), "-p", str(directory)], capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


# --- Kubernetes ----------------------------------------------------------------------


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    namespace = resource("Namespace", kustomization["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_pod_is_hardened() -> None:
    assert workloads()
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False, name
        for shared in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(shared), f"{name} shares the node's {shared}"
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security.get("privileged", False) is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), f"{where} adds capabilities"
            seccomp = security.get("seccompProfile", pod_security.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            limits = container["resources"]["limits"]
            assert limits.get("cpu"), where
            assert limits.get("memory"), where
    text = "".join(without_comments(p.read_text()) for p in KUBERNETES.glob("*.yaml"))
    assert "SYS_ADMIN" not in text
    assert "privileged: true" not in text


def test_the_replicas_probe_livez_and_readyz_and_read_the_policy_from_a_configmap() -> None:
    statefulset = resource("StatefulSet", "codesherpa")
    pod = statefulset["spec"]["template"]["spec"]
    (service,) = pod["containers"]
    assert service["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert service["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert service["startupProbe"]["httpGet"]["path"] == "/livez"
    assert pod["securityContext"]["runAsUser"] == SERVICE_UID
    environment = env_of(service)
    # Tokens come from a file, never from a variable or a secretKeyRef.
    assert "CODESHERPA_TOKENS" not in environment
    assert not any(
        isinstance(value, dict) and "secretKeyRef" in value for value in environment.values()
    )
    # The policy: a ConfigMap holding policies/container.toml, mounted where it is read.
    policy_path = PurePosixPath(environment["CODESHERPA_POLICY"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in service["volumeMounts"]}
    policy_volume = volumes[mounts[str(policy_path.parent)]]
    configmap = resource("ConfigMap", policy_volume["configMap"]["name"])
    assert configmap["data"][policy_path.name] == CONTAINER_POLICY.read_text()
    # Each pod names itself in its links, so the router can take a link back to it.
    assert environment["CODESHERPA_PUBLIC_URL"].endswith("/r/$(POD_NAME)")
    assert environment["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The tokens file the service reads is the init container's private copy.
    tokens = PurePosixPath(environment["CODESHERPA_TOKENS_FILE"])
    assert volumes[mounts[str(tokens.parent)]]["emptyDir"]["medium"] == "Memory"
    (copier,) = pod["initContainers"]
    assert copier["command"][:3] == ["install", "-m", "0600"]
    assert copier["command"][-1] == str(tokens)


def test_the_replicas_have_a_headless_service_and_a_disruption_budget() -> None:
    statefulset = resource("StatefulSet", "codesherpa")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    headless = resource("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], labels)
    budgets = [
        doc
        for doc in kubernetes_documents()
        if doc["kind"] == "PodDisruptionBudget" and selects(doc["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"].get("maxUnavailable") == 1


def test_the_router_hashes_the_session_key_over_every_replica() -> None:
    statefulset = resource("StatefulSet", "codesherpa")
    namespace = statefulset["metadata"]["namespace"]
    router = resource("ConfigMap", "codesherpa-router")
    # The routing rules are the shipped ones, byte for byte.
    assert router["data"]["codesherpa.conf.template"] == ROUTER_TEMPLATE.read_text()
    upstreams = router["data"]["upstreams.conf.template"]
    assert "hash $session_key consistent;" in upstreams
    pods = re.findall(r"server ([\w.-]+):8000 resolve;", upstreams)
    service = statefulset["spec"]["serviceName"]
    assert pods == [
        f"codesherpa-{index}.{service}.{namespace}.svc.cluster.local"
        for index in range(statefulset["spec"]["replicas"])
    ]
    deployment = resource("Deployment", "codesherpa-router")
    pod = deployment["spec"]["template"]["spec"]
    (nginx,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    templates = [m for m in nginx["volumeMounts"] if m["mountPath"] == "/etc/nginx/templates"]
    assert volumes[templates[0]["name"]]["configMap"]["name"] == "codesherpa-router"
    assert env_of(nginx)["NGINX_ENVSUBST_FILTER"] == "^CODESHERPA_"
    assert nginx["readinessProbe"]["httpGet"]["path"] == "/router/healthz"
    front = resource("Service", "codesherpa")
    assert selects(front["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert any(
        doc["kind"] == "PodDisruptionBudget"
        and selects(doc["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        for doc in kubernetes_documents()
    )


def test_every_kubernetes_hardening_option_says_why() -> None:
    missing = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            missing += uncommented(path, KUBERNETES_HARDENING)
    assert missing == []
