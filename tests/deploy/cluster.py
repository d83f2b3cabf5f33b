"""Several real service processes behind Debian's nginx, configured from deploy/nginx/.

The routing rules are the shipped ``deploy/nginx/codesherpa.conf.template``, rendered the
way the nginx image renders it; only the list of replicas (the file each environment
writes for itself) and nginx's own process settings are made here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sandbox import workspaces
from sandbox.confine import cgroup
from sandbox.zygote_client import cgroup_parent_for
from tests.api.server import TEST_POLICY, Server, free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
ROUTER_TEMPLATE = ROOT / "deploy" / "nginx" / "codesherpa.conf.template"
START_TIMEOUT_S = 30

# Tenants of the replicas (tenant:token); every replica knows them all.
TOKENS = {
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef",
    "carol": "carol-token-0123456789abcdef",
}


def nginx_binary() -> str:
    """Debian's nginx, installed here if it is missing (CI installs it in .ci/run)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("nginx is not installed and there is no apt-get to install it")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "nginx"]
    if subprocess.run(install, env=environment, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=environment, capture_output=True)
        result = subprocess.run(install, env=environment, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"cannot install nginx: {result.stderr[-2000:]}")
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not found:
        pytest.fail("nginx was installed but is not on PATH")
    return found


def render_template(template: Path, values: dict[str, str]) -> str:
    """What envsubst does to an nginx image template, for the names given only."""
    text = template.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    leftover = re.findall(r"\$\{\w+\}", text)
    assert not leftover, f"{template.name}: no value for {leftover}"
    return text


def main_config(directory: Path, includes: list[Path]) -> str:
    """nginx.conf around the shipped http-context files: process settings, all in tmp."""
    lines = [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {directory}/nginx.pid;",
        f"error_log {directory}/error.log info;",
        "events { worker_connections 512; }",
        "http {",
        *(
            f"    {kind}_temp_path {directory}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        *(f"    include {path};" for path in includes),
        "}",
        "",
    ]
    return "\n".join(lines)


def upstreams_config(replicas: dict[str, int]) -> str:
    """The per-environment file: the hash ring and the replicas' link names."""
    ring = "\n".join(
        f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" for port in replicas.values()
    )
    names = "\n".join(f"    {name} link_{name.replace('-', '_')};" for name in replicas)
    groups = "\n".join(
        f"upstream link_{name.replace('-', '_')} {{ server 127.0.0.1:{port}; }}"
        for name, port in replicas.items()
    )
    return (
        "upstream codesherpa {\n"
        "    hash $session_key consistent;\n"
        f"{ring}\n"
        "    keepalive 16;\n"
        "}\n\n"
        "map $link_replica $replica_upstream {\n"
        f"{names}\n"
        '    default "";\n'
        "}\n\n"
        f"{groups}\n"
    )


def replica_policy(directory: Path) -> Path:
    """The test policy with room for the sessions these tests spread over replicas."""
    text = TEST_POLICY.read_text(encoding="utf-8")
    for key, value in (("max_per_tenant", 16), ("max_total", 32)):
        text, count = re.subn(rf"(?m)^{key}\s*=\s*\d+", f"{key} = {value}", text)
        assert count == 1, f"{TEST_POLICY} has no single {key}"
    path = directory / "replica-policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Router:
    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""


@dataclass
class Cluster:
    router: Router
    replicas: dict[str, Server]
    killed: set[str] = field(default_factory=set)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.router.url, headers=headers, timeout=60)

    def holder(
        self, tenant: str, session_id: str, conversation: dict[str, str] | None = None
    ) -> str | None:
        """Which live replica holds a session, asked of each replica directly.

        A session made for a conversation is listed only to that conversation.
        """
        found = [
            name
            for name, server in self.replicas.items()
            if name not in self.killed
            and session_id in _session_ids(server, TOKENS[tenant], conversation)
        ]
        assert len(found) <= 1, f"session {session_id} is on {found}"
        return found[0] if found else None

    def kill(self, name: str) -> None:
        """SIGKILL one replica: its zygote and workers die with it."""
        process = self.replicas[name].process
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.killed.add(name)


def _session_ids(server: Server, token: str, headers: dict[str, str] | None) -> set[str]:
    with server.client(token) as direct:
        reply = direct.get("/sessions", headers=headers)
        reply.raise_for_status()
        return {entry["session_id"] for entry in reply.json()}


def _start_router(directory: Path, port: int, replicas: dict[str, int]) -> Router:
    nginx = nginx_binary()
    directory.mkdir(parents=True, exist_ok=True)
    routing = directory / "codesherpa.conf"
    routing.write_text(
        render_template(
            ROUTER_TEMPLATE,
            {
                "CODESHERPA_LISTEN": f"127.0.0.1:{port}",
                "CODESHERPA_ACCESS_LOG": str(directory / "access.log"),
            },
        ),
        encoding="utf-8",
    )
    upstreams = directory / "upstreams.conf"
    upstreams.write_text(upstreams_config(replicas), encoding="utf-8")
    config = directory / "nginx.conf"
    config.write_text(main_config(directory, [routing, upstreams]), encoding="utf-8")
    command = [nginx, "-c", str(config), "-p", str(directory)]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    with open(directory / "nginx.out", "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((directory / "nginx.out").read_text() + _error_log(directory))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/router/healthz", timeout=1).status_code == 200:
                return Router(url, process, directory)
        time.sleep(0.05)
    _stop_router(process)
    raise RuntimeError("nginx did not answer:\n" + _error_log(directory))


def _error_log(directory: Path) -> str:
    path = directory / "error.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _stop_router(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_replica(server: Server, killed: bool) -> None:
    if not killed:
        stop_server(server)
        return
    # A replica killed by the test left its workspaces mounted and its cgroups behind,
    # as a crash would; the next start would clean them, there is none.
    state_dir = str(server.state_dir)
    workspaces.remove_all(state_dir)
    with contextlib.suppress(OSError, ValueError):
        cgroup.remove_all_sessions(cgroup_parent_for(state_dir))


@contextlib.contextmanager
def running_cluster(directory: Path, count: int = 3) -> Iterator[Cluster]:
    """``count`` replicas named codesherpa-1... behind one nginx, all stopped on exit."""
    policy = replica_policy(directory)
    router_port = free_port()
    router_url = f"http://127.0.0.1:{router_port}"
    names = [f"codesherpa-{index}" for index in range(1, count + 1)]
    tokens = ",".join(f"{tenant}:{token}" for tenant, token in TOKENS.items())

    def start(name: str) -> Server:
        replica_dir = directory / name
        replica_dir.mkdir()
        # The replica names itself in its links, as in docker-compose.yml.
        environment = {
            "CODESHERPA_TOKENS": tokens,
            "CODESHERPA_PUBLIC_URL": f"{router_url}/r/{name}",
        }
        return start_server(replica_dir, env=environment, policy=policy)

    replicas: dict[str, Server] = {}
    router: Router | None = None
    cluster: Cluster | None = None
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = {name: pool.submit(start, name) for name in names}
            # Every replica that started is collected before raising: none is left running.
            failures = []
            for name, future in futures.items():
                try:
                    replicas[name] = future.result()
                except Exception as exc:
                    failures.append(f"{name}: {exc}")
        if failures:
            raise RuntimeError("replicas did not start:\n" + "\n".join(failures))
        ports = {name: int(server.url.rsplit(":", 1)[1]) for name, server in replicas.items()}
        router = _start_router(directory / "router", router_port, ports)
        cluster = Cluster(router, replicas)
        yield cluster
    finally:
        if router is not None:
            _stop_router(router.process)
        killed = cluster.killed if cluster is not None else set()
        for name, server in replicas.items():
            _stop_replica(server, name in killed)
