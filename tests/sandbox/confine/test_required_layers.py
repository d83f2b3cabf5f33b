"""A layer the policy requires that cannot be applied stops the worker, naming the layer."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from sandbox.confine import LayerStatus, WorkerSpec, confine_worker
from sandbox.errors import ConfinementError
from sandbox.policy import Policy


def _confine_in_child(
    policy: Policy, cgroup_status: LayerStatus | None = None
) -> dict[str, object]:
    """Confine a forked child (as root, but with no uid to drop to) and report."""
    read_fd, write_fd = os.pipe()
    workspace = tempfile.mkdtemp()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        spec = WorkerSpec(
            policy=policy, workspace=workspace, uid=None, channel_fd=write_fd, session_key="req"
        )
        try:
            report: dict[str, object] = {
                "layers": confine_worker(spec, "not wanted", cgroup_status)
            }
        except ConfinementError as refusal:
            report = {"refused": str(refusal), "layers": refusal.report}
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    os.rmdir(workspace)
    return dict(json.loads(data))


@pytest.mark.skipif(os.geteuid() != 0, reason="a root worker with no uid is what fails here")
def test_required_identity_without_a_uid_refuses_and_names_the_layer() -> None:
    policy = Policy.model_validate(
        {"isolation": {"required": ["identity"], "preferred": []}, "python": {"preload": []}}
    )
    report = _confine_in_child(policy)
    assert "required isolation layer 'identity'" in str(report["refused"])
    layers = report["layers"]
    assert isinstance(layers, dict)
    assert layers["identity"].startswith("inactive: still root")


@pytest.mark.skipif(os.geteuid() != 0, reason="a root worker with no uid is what fails here")
def test_the_same_failure_in_a_preferred_layer_is_reported_not_fatal() -> None:
    policy = Policy.model_validate(
        {"isolation": {"required": [], "preferred": ["identity"]}, "python": {"preload": []}}
    )
    report = _confine_in_child(policy)
    assert "refused" not in report
    layers = report["layers"]
    assert isinstance(layers, dict)
    assert layers["identity"].startswith("inactive")
    assert layers["seccomp"] == "inactive: not wanted by the policy"


def test_a_required_cgroup_the_intermediate_could_not_make_refuses_the_worker() -> None:
    # The intermediate process applies the cgroup layer before the worker starts; the
    # worker refuses to serve on what it reports, like any other required layer.
    policy = Policy.model_validate(
        {"isolation": {"required": ["cgroup"], "preferred": []}, "python": {"preload": []}}
    )
    failed = LayerStatus("cgroup", False, "v1: writing to memory.max: Permission denied")
    report = _confine_in_child(policy, failed)
    assert "required isolation layer 'cgroup'" in str(report["refused"])
    assert "Permission denied" in str(report["refused"])


def test_a_required_cgroup_the_intermediate_never_reported_refuses_the_worker() -> None:
    policy = Policy.model_validate(
        {"isolation": {"required": ["cgroup"], "preferred": []}, "python": {"preload": []}}
    )
    report = _confine_in_child(policy, None)
    assert "required isolation layer 'cgroup'" in str(report["refused"])
