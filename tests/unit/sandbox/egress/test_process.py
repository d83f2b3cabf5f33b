"""The proxy process's reports to the service: what it cannot send is counted, and the
operator hears of it on stderr."""

from __future__ import annotations

import socket

import pytest

from sandbox.egress.process import ProxyProcess, ProxyStartOrder
from sandbox.policy import Network

pytestmark = pytest.mark.anyio


async def test_reports_lost_to_a_broken_control_socket_are_counted_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours, service = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    order = ProxyStartOrder(
        network=Network(mode="allowlist", allow=["h.example"]),
        service_ports=[],
        control_fd=ours.detach(),
        uid=None,
        open_files=64,
    )
    process = ProxyProcess(order)
    try:
        process.pending.extend([b"{}", b"{}"])  # waiting for the socket to take them
        service.close()  # the service is gone: sending fails (EPIPE)
        process.report({"verdict": "allowed"})
    finally:
        process.control.close()
    assert not process.pending
    warning = capsys.readouterr().err
    assert "3 connection reports dropped (the control socket failed" in warning
