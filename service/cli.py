"""``codesherpa``: serve, check and show policies, and report the host's isolation layers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile

import tomli_w
from pydantic import ValidationError

from sandbox import (
    Policy,
    PolicyError,
    StateDirectoryInUse,
    ZygoteClient,
    load_policy,
    scheduling,
    state_lock,
    workspaces,
)
from sandbox.confine import cgroup
from sandbox.errors import SandboxError, StateDirectoryUnsafe
from sandbox.policy import ALL_LAYERS, policy_warnings
from sandbox.policy.review import service_address_refusals
from sandbox.policy_docs import render_reference, review_changes
from service import __version__
from service.connection_guard import guard_connections
from service.settings import Settings, is_loopback
from service.shipped import default_policy


def _fail(message: str) -> int:
    print(f"codesherpa: {message}", file=sys.stderr)
    return 1


async def _probe_worker(zygote: ZygoteClient) -> dict[str, str]:
    """Start one worker the way every session will and read which layers it holds."""
    handle = await zygote.spawn()
    try:
        assert handle.hello is not None
        return dict(handle.hello.layers)
    finally:
        await handle.cleanup()
        workspaces.remove(handle.workspace)


def start_sandbox(
    policy: Policy, state_dir: str, service_ports: tuple[int, ...] = ()
) -> tuple[ZygoteClient, dict[str, str]]:
    zygote = ZygoteClient(policy, state_dir, service_ports)
    zygote.start()
    try:
        isolation = asyncio.run(_probe_worker(zygote))
    except BaseException:
        zygote.stop()
        raise
    return zygote, isolation


def serve(args: argparse.Namespace) -> int:
    overrides = {"policy": args.policy} if args.policy else {}
    try:
        settings = Settings(**overrides).listening_on(args.host, args.port)
        tokens = settings.token_map()
    except (ValidationError, ValueError, OSError) as exc:
        return _fail(f"invalid settings: {exc}")
    if not tokens and not is_loopback(args.host):
        return _fail(
            f"refusing to listen on {args.host} without tokens: set CODESHERPA_TOKENS "
            "(tenant:token pairs) or listen on 127.0.0.1"
        )
    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        return _fail(f"invalid policy:\n{exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The zygote inherits it and drops it again before it forks a worker.
    logging.getLogger("codesherpa.scheduling").info("event loop: %s", scheduling.use_short_slice())
    try:
        # Held until this process exits: a second service, or anything else that
        # would clear this directory's leftovers, is refused while it runs.
        state_lock.acquire(settings.state_dir)
    except (StateDirectoryInUse, StateDirectoryUnsafe) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot use the state directory {settings.state_dir}: {exc.strerror}")
    try:
        zygote, isolation = start_sandbox(policy, settings.state_dir, (args.port,))
    except SandboxError as exc:
        return _fail(f"the sandbox cannot start: {exc}")
    for layer, status in isolation.items():
        logging.getLogger("codesherpa.isolation").info("%s: %s", layer, status)

    import uvicorn

    from service.app import create_app

    try:
        connection_options = guard_connections(settings, policy.sessions.max_total)
        app = create_app(settings, zygote, isolation)
    except ValueError as exc:
        zygote.stop()
        return _fail(str(exc))
    except OSError as exc:
        zygote.stop()
        return _fail(f"cannot open a file the service needs: {exc}")
    # One process: sessions live in this process's memory and workers are its children.
    # No access log by default: the audit log records every run, and a line per
    # request cost a measurable share of a trivial round trip.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level="info",
        access_log=args.access_log,
        **connection_options,
    )
    return 0


def policy_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    refusals = service_address_refusals(policy, args.listen)
    for refusal in refusals:
        print(f"{args.file}: {refusal.key}: {refusal.message}", file=sys.stderr)
    if refusals:
        return 1
    # Warnings go to stderr beside the errors; the exit code says only valid or not.
    warnings = policy_warnings(policy)
    for warning in warnings:
        print(f"{args.file}: {warning.key}: warning: {warning.message}", file=sys.stderr)
    noted = f" ({len(warnings)} warning{'s' * (len(warnings) != 1)})" if warnings else ""
    print(f"{args.file}: ok{noted}")
    return 0


def policy_show(args: argparse.Namespace) -> int:
    path = args.policy or os.environ.get("CODESHERPA_POLICY") or default_policy()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    data = policy.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    # TOML has no null: a key left unset is left out, and loading the output fills
    # in the same default again, so `policy check` accepts what this prints.
    present = {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in data.items()
    }
    print(f"# effective policy from {path} (hash {policy.digest()})\n")
    print(tomli_w.dumps(present), end="")
    return 0


def policy_diff(args: argparse.Namespace) -> int:
    policies = []
    for path in (args.before, args.after):
        try:
            policies.append(load_policy(path))
        except PolicyError as exc:
            print(exc, file=sys.stderr)
    if len(policies) < 2:
        return 1
    before, after = policies
    print(f"# {args.before} ({before.digest()}) → {args.after} ({after.digest()})")
    changes = review_changes(before, after)
    if not changes:
        print("no differences")
        return 0
    # Network changes first and marked: what a session can reach outside the host.
    network = [change for change in changes if change.key.startswith("network.")]
    for change in network:
        print(f"NETWORK {change}")
    if network:
        print()
    for change in changes:
        if change not in network:
            print(change)
    counts = dict.fromkeys(("tighter", "looser", "changed"), 0)
    for change in changes:
        counts[change.judgement] += 1
    print("\n" + ", ".join(f"{count} {judgement}" for judgement, count in counts.items()))
    return 0


def policy_docs(args: argparse.Namespace) -> int:
    print(render_reference(), end="")
    return 0


def doctor(args: argparse.Namespace) -> int:
    path = args.policy or os.environ.get("CODESHERPA_POLICY") or default_policy()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    # Try every layer, required or not, so the table is complete; then judge it
    # against what the policy requires.
    trial = policy.model_copy(
        update={
            "isolation": policy.isolation.model_copy(
                update={"required": [], "preferred": list(ALL_LAYERS)}
            )
        }
    )
    # A directory of its own: a service may own the configured one, and a zygote
    # starting there would clear its sessions away.
    with tempfile.TemporaryDirectory(prefix="codesherpa-doctor-") as state_dir:
        try:
            zygote, isolation = start_sandbox(trial, state_dir)
        except SandboxError as exc:
            print(f"a worker could not start: {exc}", file=sys.stderr)
            return 1
        zygote.stop()
        with contextlib.suppress(OSError, ValueError):
            cgroup.remove_all_sessions(zygote.cgroup_parent)
    required = set(policy.isolation.required)
    width = max(len(layer) for layer in isolation)
    missing = []
    print(f"isolation layers on this host, judged against {path}:")
    for layer, status in isolation.items():
        marker = "required" if layer in required else "preferred"
        print(f"  {layer:<{width}}  {marker:<9}  {status}")
        if layer in required and not status.startswith("active"):
            missing.append(layer)
    if missing:
        print(f"the policy requires layers this host lacks: {', '.join(missing)}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codesherpa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--policy", help="policy file (default: CODESHERPA_POLICY)")
    serve_parser.add_argument(
        "--access-log", action="store_true", help="log one line per HTTP request"
    )
    serve_parser.set_defaults(handler=serve)

    policy_parser = commands.add_parser("policy", help="check, show or compare policies")
    policy_commands = policy_parser.add_subparsers(dest="policy_command", required=True)
    check_parser = policy_commands.add_parser(
        "check", help="validate a policy file; warn about launchers it allows"
    )
    check_parser.add_argument("file")
    check_parser.add_argument(
        "--listen",
        default="127.0.0.1",
        help="the address the service listens on (serve --host): allow_private must not "
        "cover it (default 127.0.0.1)",
    )
    check_parser.set_defaults(handler=policy_check)
    show_parser = policy_commands.add_parser("show", help="the effective policy")
    show_parser.add_argument("--policy")
    show_parser.add_argument("--json", action="store_true")
    show_parser.set_defaults(handler=policy_show)
    diff_parser = policy_commands.add_parser(
        "diff", help="what changes, tighter or looser, from one policy to another"
    )
    diff_parser.add_argument("before", metavar="A")
    diff_parser.add_argument("after", metavar="B")
    diff_parser.set_defaults(handler=policy_diff)
    docs_parser = policy_commands.add_parser(
        "docs", help="the policy reference (docs/POLICY.md), generated from the model"
    )
    docs_parser.set_defaults(handler=policy_docs)

    doctor_parser = commands.add_parser("doctor", help="which isolation layers work here")
    doctor_parser.add_argument("--policy")
    doctor_parser.set_defaults(handler=doctor)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))
