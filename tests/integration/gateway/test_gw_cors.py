"""
memq_cors: preflight OPTIONS, Access-Control-Allow-Origin on every memq
answer (streams, SSE, publish results, errors, the status), and browser
requests from an origin it does not allow refused before any node is asked
(the message stays queued).  Real nginx, real memqd, requests.
"""

import socket

import pytest
import requests

from gwutil import Gateway, SLOW, qname, read_to_close

APP = "http://app.test:9000"


def opts(gw, path, origin=APP, **hdrs):
    h = {"Origin": origin, "Access-Control-Request-Method": "POST",
         "Access-Control-Request-Headers": "content-type"}
    h.update(hdrs)
    return requests.options(gw.url(path), headers=h, timeout=10 * SLOW)


def test_preflight_and_every_answer(gateway_factory, nodes3):
    gw = gateway_factory(nodes3, server_extra="memq_cors %s;" % APP)
    q = qname("cors")
    o = {"Origin": APP}

    r = opts(gw, "/mq?topic=" + q)
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "GET" in r.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert r.headers["Vary"] == "Origin"
    assert r.content == b""

    # publish, ndjson drain, SSE: each answer names the origin
    r = gw.publish(q, "one", headers=o)
    assert r.status_code == 201, r.text
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert r.headers["Vary"] == "Origin"
    gw.publish(q, "two")

    r = gw.consume(q, headers=o, max=1)
    assert r.status_code == 200 and r.content == b"one\n"
    assert r.headers["Access-Control-Allow-Origin"] == APP

    r = gw.consume(q, headers=dict(o, Accept="text/event-stream"))
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Access-Control-Allow-Origin"] == APP
    assert b"data: two\n" in r.content

    # errors too
    r = requests.get(gw.url("/mq"), params={"topic": "bad key"}, headers=o,
                     timeout=10 * SLOW)
    assert r.status_code == 400 and r.json()["error"] == "bad key"
    assert r.headers["Access-Control-Allow-Origin"] == APP
    r = requests.delete(gw.url("/mq"), params={"topic": q}, headers=o,
                        timeout=10 * SLOW)
    assert r.status_code == 405
    assert r.headers["Access-Control-Allow-Origin"] == APP

    # the status (a dashboard on another origin reads it)
    r = requests.get(gw.url("/mq/status"), headers=o, timeout=10 * SLOW)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == APP
    r = opts(gw, "/mq/status")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == APP


def test_other_origin_refused_message_kept(gateway_factory, nodes3):
    gw = gateway_factory(nodes3, server_extra="memq_cors %s;" % APP)
    gw.expect_errors()
    q = qname("cors")
    assert gw.publish(q, "kept").status_code == 201

    evil = {"Origin": "http://evil.test"}
    r = gw.consume(q, headers=evil)
    assert r.status_code == 403
    assert r.json() == {"error": "origin not allowed", "status": 403}
    r = gw.publish(q, "forged", headers=evil)
    assert r.status_code == 403

    # the gateway's own origin is always allowed
    own = {"Origin": "http://127.0.0.1:%d" % gw.port}
    r = gw.consume(q, headers=own)
    assert r.status_code == 200 and r.content == b"kept\n"
    assert gw.consume(q).content == b""


def test_without_cors(gateway_factory, nodes3):
    gw = gateway_factory(nodes3)
    gw.expect_errors()
    q = qname("nocors")

    # OPTIONS as before: 405, no CORS header
    r = opts(gw, "/mq?topic=" + q)
    assert r.status_code == 405
    assert r.json() == {"error": "method not allowed", "status": 405}
    assert "Access-Control-Allow-Origin" not in r.headers

    assert gw.publish(q, "m").status_code == 201
    r = gw.consume(q, headers={"Origin": APP})
    assert r.status_code == 403
    assert "Access-Control-Allow-Origin" not in r.headers
    # a client that is not a browser is not affected, and the message
    # the refused page asked for is still there
    r = gw.consume(q)
    assert r.status_code == 200 and r.content == b"m\n"
    assert "Access-Control-Allow-Origin" not in r.headers


def test_star(gateway_factory, nodes3):
    gw = gateway_factory(nodes3, loc_extra="memq_cors *;")
    q = qname("star")
    r = gw.publish(q, "x", headers={"Origin": "http://any.test"})
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in r.headers
    r = opts(gw, "/mq?topic=" + q, origin="http://other.test")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = gw.consume(q, headers={"Origin": "http://other.test"})
    assert r.status_code == 200 and r.content == b"x\n"


@pytest.mark.parametrize("origin", [
    "http://app.test/", "ftp://app.test", "app.test", "'http://a b'",
    "http://", "'http://a\"b'",
])
def test_bad_origin_refused_at_load(tmp_path, origin):
    g = Gateway(tmp_path, ["127.0.0.1:22201"],
                loc_extra="memq_cors %s;" % origin)
    ok, out = g.test_conf()
    assert not ok, out
    assert "[emerg]" in out and 'in "memq_cors"' in out, out


def test_refused_origin_is_logged_escaped(gateway_factory, nodes3):
    """The log line for a refused origin quotes the header: a terminal
    escape in it goes to the log as %XX, never as it came."""
    gw = gateway_factory(nodes3)
    gw.expect_errors()
    q = qname("esc")
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10 * SLOW)
    s.sendall(b"GET /mq?topic=%s HTTP/1.1\r\nHost: x\r\n"
              b"Origin: http://a\x1b]0;owned\x07.test\r\n"
              b"Connection: close\r\n\r\n" % q.encode())
    reply = read_to_close(s)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:200]
    line = [l for l in gw.error_log.read_bytes().splitlines()
            if b"refused a request from origin" in l]
    assert len(line) == 1, line
    assert b"%1B" in line[0] and b"%07" in line[0], line[0]
    assert not any(b < 0x20 or b == 0x7f for b in line[0]), line[0]
