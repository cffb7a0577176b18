"""Key validation: a key with a space, CR, LF, an encoded CRLF, '/', a
leading '.', or longer than 250 bytes is a 400 and nothing reaches a node
(no protocol injection, DESIGN §2, §3)."""

import socket

import pytest
import requests

from gwutil import SilentNode, qname, wait_for

# a location whose key comes from the decoded URI, so CR, LF and spaces can
# really end up in the key
DECODED = """
        location ~ "(?s)^/q/(.*)$" {
            memq_pass main;
            memq_key $1;
        }
"""

BAD_ARGS = ["a%20b", "a%0d%0aget%20x", "a%0d%0a", "a/b", "a+b", ".hidden",
            "x" * 251, "", "a%00b", "q:\u00e9"]
BAD_DECODED = ["a%20b", "a%0d%0astats", "a%0db", "a%0ab", "a%2fb",
               "..%2f..%2fetc", "a%09b", "%20"]


def _stats(node):
    from gwutil import Client
    c = Client(node.addr)
    try:
        st = c.stats()
    finally:
        c.close()
    return int(st["cmd_get"]), int(st["cmd_set"])


@pytest.fixture
def recorder():
    r = SilentNode()
    yield r
    r.close()


def _raw_get(g, target, method="GET", body=b""):
    """Sends a request line verbatim (requests would re-encode it)."""
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n%s"
              % (method.encode(), target.encode("utf-8"), len(body), body))
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_bad_keys_never_reach_a_node(gateway_factory, memqd_factory,
                                     recorder):
    real = memqd_factory()
    g = gateway_factory([real, recorder.addr], server_extra=DECODED)
    before = _stats(real)
    for key in BAD_ARGS:
        for method in ("GET", "POST"):
            status, body = _raw_get(g, "/mq?topic=" + key, method, b"x")
            assert status == 400, (key, method, body)
            assert b'"status":400' in body
    for key in BAD_DECODED:
        for method in ("GET", "POST"):
            status, body = _raw_get(g, "/q/" + key, method, b"x")
            assert status == 400, (key, method, body)
    assert _stats(real) == before, "a bad key reached memqd"
    assert recorder.accepted == 0 and recorder.received == b""


def test_longest_key_is_fine(gateway_factory, memqd_factory):
    real = memqd_factory()
    g = gateway_factory([real], server_extra=DECODED)
    key = "k" * 250
    r = g.publish(key, b"ok")
    assert r.status_code == 201, r.text
    assert g.lines(key) == [b"ok"]
    key2 = "A-z_0.9:" + qname()
    r = requests.post(g.url("/q/" + key2), data=b"decoded", timeout=10)
    assert r.status_code == 201, r.text
    # (requests would send ':' in a query as %3A: a different, bad, key)
    r = requests.get(g.url("/q/" + key2), timeout=10)
    assert r.status_code == 200 and r.content == b"decoded\n"
    r = requests.get(g.url("/mq"), params={"topic": key2}, timeout=10)
    assert r.status_code == 400, "an encoded key must not be decoded"


def test_bad_key_logged_at_info(gateway_factory, memqd_factory):
    real = memqd_factory()
    g = gateway_factory([real])
    _raw_get(g, "/mq?topic=a%0d%0ab")
    wait_for(lambda: "[info]" in g.error_text() and
             "rejected key" in g.error_text(), timeout=5,
             what="rejected key logged")
    lines = [l for l in g.error_text().splitlines() if "rejected key" in l]
    assert all("[info]" in l for l in lines)
