"""The proxy's request-head parser: one reading of each head, or a refusal naming the
rule it broke (heads two servers could frame differently are never forwarded)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.egress.http_head import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_RESPONSE_HEAD_BYTES,
    BadRequest,
    ResponseHeadRewriter,
    head_complete,
    parse_head,
)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_connect_names_host_and_port() -> None:
    parsed = parse_head(head("CONNECT data.example.org:443 HTTP/1.1", "Host: x"))
    assert (parsed.method, parsed.host, parsed.port, parsed.is_connect) == (
        "CONNECT",
        "data.example.org",
        443,
        True,
    )


def test_connect_to_an_ipv6_literal() -> None:
    parsed = parse_head(head("CONNECT [2001:db8::1]:8443 HTTP/1.1"))
    assert (parsed.host, parsed.port) == ("2001:db8::1", 8443)


def test_a_forwarded_request_goes_upstream_in_origin_form_with_its_own_host() -> None:
    parsed = parse_head(
        head(
            "GET http://data.example.org:8080/a/b?c=d HTTP/1.1",
            "Host: elsewhere.example",  # the target decides, not this
            "Accept: */*",
            "Proxy-Authorization: Basic eA==",
            "Connection: keep-alive, X-Private",
            "X-Private: for the proxy only",
            "Keep-Alive: timeout=5",
        )
    )
    assert (parsed.host, parsed.port, parsed.path) == ("data.example.org", 8080, "/a/b?c=d")
    assert parsed.forwarded() == (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: data.example.org:8080\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_a_url_without_a_path_or_port_is_slash_on_port_80() -> None:
    parsed = parse_head(head("GET http://data.example.org HTTP/1.0"))
    assert (parsed.port, parsed.path) == (80, "/")
    assert b"Host: data.example.org\r\n" in parsed.forwarded()


def test_a_body_length_is_read_once() -> None:
    parsed = parse_head(head("POST http://h.example/ HTTP/1.1", "Content-Length: 12"))
    assert parsed.content_length == 12


SMUGGLING_AND_AMBIGUITY = {
    "content_length_twice": head(
        "POST http://h.example/ HTTP/1.1", "Content-Length: 5", "Content-Length: 5"
    ),
    "content_length_differing": head(
        "POST http://h.example/ HTTP/1.1", "Content-Length: 5", "Content-Length: 6"
    ),
    "content_length_list": head("POST http://h.example/ HTTP/1.1", "Content-Length: 5, 5"),
    "content_length_signed": head("POST http://h.example/ HTTP/1.1", "Content-Length: +5"),
    "content_length_and_chunked": head(
        "POST http://h.example/ HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked"
    ),
    "chunked": head("POST http://h.example/ HTTP/1.1", "Transfer-Encoding: chunked"),
    "transfer_encoding_cased": head("POST http://h.example/ HTTP/1.1", "transfer-ENCODING: x"),
    "obs_fold": head("GET http://h.example/ HTTP/1.1", "X-A: 1", " folded: on"),
    "tab_fold": head("GET http://h.example/ HTTP/1.1", "X-A: 1", "\tfolded"),
    "space_before_colon": head("GET http://h.example/ HTTP/1.1", "Content-Length : 5"),
    "bare_lf": b"GET http://h.example/ HTTP/1.1\nX-A: 1\r\n\r\n",
    "bare_cr": b"GET http://h.example/ HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "nul_in_value": head("GET http://h.example/ HTTP/1.1", "X-A: a\x00b"),
    "control_in_value": head("GET http://h.example/ HTTP/1.1", "X-A: a\x0bb"),
    "eight_bit_in_value": head("GET http://h.example/ HTTP/1.1", "X-A: caf\xe9"),
    "empty_name": head("GET http://h.example/ HTTP/1.1", ": value"),
    "origin_form": head("GET / HTTP/1.1", "Host: h.example"),
    "https_absolute": head("GET https://h.example/ HTTP/1.1"),
    "userinfo": head("GET http://user:pw@h.example/ HTTP/1.1"),
    "connect_without_port": head("CONNECT h.example HTTP/1.1"),
    "connect_port_zero": head("CONNECT h.example:0 HTTP/1.1"),
    "connect_port_too_big": head("CONNECT h.example:65536 HTTP/1.1"),
    "connect_with_body": head("CONNECT h.example:443 HTTP/1.1", "Content-Length: 3"),
    "http2_version": head("GET http://h.example/ HTTP/2.0"),
    "no_version": head("GET http://h.example/"),
    "double_space": head("GET  http://h.example/ HTTP/1.1"),
    "space_in_host": head("GET http://h example/ HTTP/1.1"),
    "underscore_host_with_at": head("GET http://a@b/ HTTP/1.1"),
    "too_many_headers": head(
        "GET http://h.example/ HTTP/1.1", *[f"X-{n}: v" for n in range(MAX_HEADERS + 1)]
    ),
    "too_long": head("GET http://h.example/ HTTP/1.1", "X-A: " + "a" * MAX_HEAD_BYTES),
    "body_too_large": head("POST http://h.example/ HTTP/1.1", "Content-Length: 99999999999"),
}


@pytest.mark.parametrize("raw", SMUGGLING_AND_AMBIGUITY.values(), ids=SMUGGLING_AND_AMBIGUITY)
def test_ambiguous_or_smuggling_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(raw)


def test_head_complete_finds_the_blank_line() -> None:
    raw = head("GET http://h.example/ HTTP/1.1") + b"body"
    assert raw[: head_complete(raw)].endswith(b"\r\n\r\n")
    assert head_complete(b"GET http://h.example/ HTTP/1.1\r\n") == -1


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_refused_never_anything_else(raw: bytes) -> None:
    try:
        parsed = parse_head(raw)
    except BadRequest:
        return
    forwarded = parsed.forwarded()
    # What goes upstream is itself one strict head: nothing smuggled through.
    assert forwarded.count(b"\r\n\r\n") == 1
    assert forwarded.endswith(b"Connection: close\r\n\r\n")


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True),
            st.from_regex(r"[\x21-\x7e]([\x20-\x7e]{0,30}[\x21-\x7e])?", fullmatch=True),
        ),
        max_size=20,
    )
)
def test_well_formed_headers_are_forwarded_as_they_came(headers: list[tuple[str, str]]) -> None:
    lines = [f"{name}: {value}" for name, value in headers]
    parsed = parse_head(head("GET http://h.example/p HTTP/1.1", *lines))
    forwarded = parsed.forwarded().decode()
    for line in lines:
        assert f"\r\n{line}\r\n" in forwarded


def test_a_forwarded_response_is_marked_connection_close_and_its_body_untouched() -> None:
    rewriter = ResponseHeadRewriter()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\n\r\nbody"
    )
    out = b"".join(rewriter.feed(response[i : i + 7]) for i in range(0, len(response), 7))
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
    assert rewriter.feed(b"more") == b"more"


def test_a_response_head_without_end_is_refused_past_its_bound() -> None:
    rewriter = ResponseHeadRewriter()
    line = b"X-A: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_RESPONSE_HEAD_BYTES // len(line)):
        assert rewriter.feed(line) == b""  # held back until the head ends
    with pytest.raises(BadRequest):
        rewriter.feed(line)
