"""nginx's own modules in front of the gateway: limit_req and deny/allow
(DESIGN §2: IP bans and rate limits are nginx's own)."""

import requests

from gwutil import Client, qname


def _cmds(node):
    c = Client(node.addr)
    try:
        st = c.stats()
    finally:
        c.close()
    return int(st["cmd_get"]), int(st["cmd_set"])


def test_limit_req(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory(
        [n], workers=1,
        http_extra="limit_req_zone $binary_remote_addr zone=perip:1m "
                   "rate=1r/m;",
        loc_extra="limit_req zone=perip; limit_req_status 429;")
    g.expect_errors()
    q = qname()
    assert g.publish(q, b"first").status_code == 201
    before = _cmds(n)
    r = g.publish(q, b"second")
    assert r.status_code == 429
    r = requests.get(g.url("/mq"), params={"topic": q}, timeout=5)
    assert r.status_code == 429
    assert _cmds(n) == before, "a limited request reached the node"


def test_deny(gateway_factory, memqd_factory):
    n = memqd_factory()
    g = gateway_factory([n], loc_extra="deny 127.0.0.1; allow all;")
    g.expect_errors()
    before = _cmds(n)
    q = qname()
    assert g.publish(q, b"x").status_code == 403
    assert requests.get(g.url("/mq"), params={"topic": q},
                        timeout=5).status_code == 403
    assert _cmds(n) == before
    # the status location is not affected
    assert g.status().status_code == 200
