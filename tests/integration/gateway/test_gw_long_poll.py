"""Long poll (wait=S): new messages arrive at once, the stream ends after S
seconds without a new message, wait is clamped to memq_wait_max, SSE
heartbeats while idle (DESIGN §2, §3)."""

import threading
import time

from gwutil import (SLOW, Client, Dechunker, qname, read_headers,
                    total_items)


def _stream(g, path, until_closed=True, timeout=30):
    """Reads a streamed response; returns (status, [(t, data)], t_end)
    with times relative to the request."""
    t0 = time.monotonic()
    s = g.raw_request(path)
    s.settimeout(timeout * SLOW)
    status, hdrs, rest = read_headers(s)
    d = Dechunker()
    events = [(time.monotonic() - t0, b"")]
    d.feed(rest)
    got = len(d.data)
    events.append((time.monotonic() - t0, d.data))
    while not d.done:
        chunk = s.recv(65536)
        if not chunk:
            break
        d.feed(chunk)
        if len(d.data) > got:
            events.append((time.monotonic() - t0, d.data[got:]))
            got = len(d.data)
    t_end = time.monotonic() - t0
    s.close()
    return status, hdrs, events, t_end, d


def _later(delay, fn):
    t = threading.Timer(delay, fn)
    t.start()
    return t


def test_message_arrives_during_long_poll(gw, nodes3):
    q = qname()
    t_pub = []

    def pub():
        t_pub.append(time.monotonic())
        c = Client(nodes3[2].addr)
        c.store(q, b"late")
        c.close()

    t0 = time.monotonic()
    timer = _later(0.5, pub)
    status, hdrs, events, t_end, d = _stream(gw, "/mq?topic=%s&wait=2" % q)
    timer.join()
    assert status == 200
    assert d.done, "stream not terminated with the last chunk"
    assert d.data == b"late\n"
    t_msg = next(t for t, data in events if data)
    delay = (t0 + t_msg) - t_pub[0]
    assert delay < 1.0 * SLOW, "message took %.2fs to arrive" % delay
    # idle timer: about 2s after the message
    assert 1.8 <= t_end - t_msg < 2.0 + 2.0 * SLOW, (t_msg, t_end)
    assert total_items(nodes3, q) == 0


def test_headers_sent_before_first_message(gw):
    q = qname()
    t0 = time.monotonic()
    s = gw.raw_request("/mq?topic=%s&wait=3" % q)
    status, hdrs, rest = read_headers(s)
    assert status == 200 and time.monotonic() - t0 < 1.5 * SLOW
    s.close()


def test_idle_timer_restarts_with_each_message(gw, nodes3):
    q = qname()
    stop = threading.Event()

    def feeder():
        c = Client(nodes3[0].addr)
        for i in range(5):
            if stop.wait(0.4):
                break
            c.store(q, b"m%d" % i)
        c.close()

    t = threading.Thread(target=feeder)
    t.start()
    status, hdrs, events, t_end, d = _stream(gw, "/mq?topic=%s&wait=1.5" % q)
    stop.set()
    t.join()
    assert d.data.split(b"\n")[:-1] == [b"m%d" % i for i in range(5)]
    assert t_end >= 2.0


def test_wait_clamped_to_wait_max(gateway_factory, nodes3):
    loc = """
            memq_pass main;
            memq_key $arg_topic;
            memq_wait_max 1s;
    """
    g = gateway_factory(nodes3, loc=loc)
    t0 = time.monotonic()
    r = g.consume(qname(), wait=60)
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.content == b""
    assert 0.9 <= took < 1.0 + 1.5 * SLOW, took


def test_fractional_wait(gw):
    t0 = time.monotonic()
    r = gw.consume(qname(), wait="0.5")
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert 0.4 <= took < 0.5 + 1.0 * SLOW, took


def test_sse_heartbeat(gateway_factory, nodes3):
    g = gateway_factory(nodes3, loc_extra="memq_sse_heartbeat 300ms;")
    q = qname()
    status, hdrs, events, t_end, d = _stream(
        g, "/mq?topic=%s&wait=1.6&format=sse" % q)
    assert d.done
    assert d.data.count(b": ping\n\n") >= 2, d.data
    assert d.data.replace(b": ping\n\n", b"") == b""


def test_max_with_long_poll(gw, nodes3):
    q = qname()

    def pub():
        c = Client(nodes3[1].addr)
        for i in range(5):
            c.store(q, b"x%d" % i)
        c.close()

    timer = _later(0.3, pub)
    t0 = time.monotonic()
    r = gw.consume(q, wait=10, max=3)
    timer.join()
    assert r.status_code == 200
    assert len(r.content.split(b"\n")[:-1]) == 3
    assert time.monotonic() - t0 < 3 * SLOW, "max must end the stream"
    assert total_items(nodes3, q) == 2


def test_graceful_quit_ends_long_poll(gw, nodes3):
    """nginx -s quit: a long-polling stream ends cleanly at once instead of
    holding the worker for its whole wait."""
    import signal
    q = qname()
    s = gw.raw_request("/mq?topic=%s&wait=30" % q)
    s.settimeout(10 * SLOW)
    status, hdrs, rest = read_headers(s)
    assert status == 200
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGQUIT)
    d = Dechunker()
    d.feed(rest)
    while not d.done:
        chunk = s.recv(65536)
        if not chunk:
            break
        d.feed(chunk)
    s.close()
    assert d.done, "stream cut instead of ended"
    assert time.monotonic() - t0 < 2.5 * SLOW
    assert gw.proc.wait(10 * SLOW) == 0
    # nothing was taken from the nodes
    c = Client(nodes3[0].addr)
    c.store(q, b"still here")
    c.close()
    assert total_items(nodes3, q) == 1
