"""Administrative commands: delete, flush, flush_all, stats, version, quit,
the unsupported storage commands and unknown commands (DESIGN §1, §3)."""

import re

import pytest

from memqlib import Client, qname, wait_for


def _alive(c):
    assert c.cmd("version").startswith("VERSION memqd ")


# ------------------------------------------------------------------ delete

def test_delete_queue(server, client):
    q = qname()
    client.store(q, b"a")
    client.store(q, b"b")
    if not server.external:
        assert server.qdir(q).is_dir()
        assert server.segments(q), "no segment file for %s" % q
    assert client.cmd("delete " + q) == "DELETED"
    assert client.get(q) is None
    assert not [k for k in client.stats() if k.startswith("queue_%s_" % q)]
    if not server.external:
        wait_for(lambda: not server.qdir(q).exists(), timeout=5,
                 what="directory of deleted queue removed")
    assert client.cmd("delete " + q) == "NOT_FOUND"


def test_delete_missing(client):
    assert client.cmd("delete " + qname()) == "NOT_FOUND"


def test_delete_noreply(client):
    q = qname()
    client.store(q, b"x")
    client.send("delete %s noreply\r\n" % q)
    _alive(client)
    assert client.get(q) is None
    client.send("delete %s noreply\r\n" % q)
    _alive(client)


def test_set_after_delete(client):
    q = qname()
    client.store(q, b"old")
    assert client.cmd("delete " + q) == "DELETED"
    client.store(q, b"new")
    assert client.getdata(q) == b"new"
    assert client.get(q) is None


def test_delete_with_open_items_elsewhere(client, connect):
    q = qname()
    client.store(q, b"a")
    client.store(q, b"b")
    holder = connect()
    assert holder.get(q + "/open").data == b"a"
    assert client.cmd("delete " + q) == "DELETED"
    holder.close()
    _alive(client)
    # the queue is gone with all its items, open ones included
    assert client.get(q) is None
    assert not [k for k in client.stats() if k.startswith("queue_%s_" % q)]


def test_delete_with_waiter(client, connect):
    q = qname()
    client.store(q, b"a")
    client.get(q)
    poller = connect()
    poller.send("get %s/t=1000\r\n" % q)
    wait_for(lambda: client.qstats(q).get("waiters") == 1, timeout=5,
             what="poller waiting")
    assert client.cmd("delete " + q) == "DELETED"
    assert poller.read_values(timeout=5) == []
    _alive(poller)
    _alive(client)


# ------------------------------------------------------------------ flush

def test_flush_queue(server, client):
    q, other = qname(), qname()
    for i in range(3):
        client.store(q, b"%d" % i)
    client.store(other, b"stay")
    assert client.cmd("flush " + q) == "OK"
    assert client.get(q) is None
    st = client.qstats(q)
    assert st, "an emptied queue must stay in stats"
    assert st["items"] == 0 and st["bytes"] == 0
    assert client.getdata(other) == b"stay"
    client.store(q, b"after")
    assert client.getdata(q) == b"after"


def test_flush_missing_queue_creates_nothing(server, client):
    q = qname("missing")
    assert client.cmd("flush " + q) == "OK"
    assert not [k for k in client.stats() if k.startswith("queue_%s_" % q)]
    if not server.external:
        assert not (server.data_dir / q).exists()


def test_flush_all(server, client):
    if server.external:
        pytest.skip("flush_all would empty a shared server")
    qs = [qname() for _ in range(3)]
    for q in qs:
        client.store(q, b"x")
        client.store(q, b"y")
    assert client.cmd("flush_all") == "OK"
    for q in qs:
        assert client.get(q) is None
        assert client.qstats(q)["items"] == 0
    st = client.stats()
    assert int(st["curr_items"]) == 0
    assert int(st["bytes"]) == 0
    client.store(qs[0], b"z")
    assert client.getdata(qs[0]) == b"z"


# ------------------------------------------------------------------ stats

GENERAL = ("pid", "uptime", "version", "curr_connections",
           "total_connections", "cmd_get", "cmd_set", "get_hits",
           "get_misses", "curr_items", "total_items", "bytes")


def _num(st, k):
    return int(st[k])


def test_stats_general_fields(server, client):
    st = client.stats()
    missing = [k for k in GENERAL if k not in st]
    assert not missing, "stats lacks %r" % missing
    for k in GENERAL:
        if k != "version":
            assert re.fullmatch(r"\d+", st[k]), "%s = %r" % (k, st[k])
    v = client.cmd("version")
    assert v == "VERSION memqd " + st["version"]
    if not server.external:
        assert _num(st, "pid") == server.proc.pid
    assert _num(st, "curr_connections") >= 1
    assert _num(st, "total_connections") >= _num(st, "curr_connections")


def test_stats_fresh_server_values(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    st = c.stats()
    for k in ("cmd_get", "cmd_set", "get_hits", "get_misses", "curr_items",
              "total_items", "bytes"):
        assert _num(st, k) == 0, "%s = %s on a fresh server" % (k, st[k])
    assert _num(st, "uptime") < 60
    # the readiness probe's connection may still be closing
    wait_for(lambda: _num(c.stats(), "curr_connections") == 1, timeout=5,
             what="curr_connections == 1")
    c.close()


def test_stats_counters_after_operations(client):
    q, missing = qname(), qname("missing")
    b0 = client.stats()
    client.store(q, b"12345")
    client.store(q, b"123")
    client.store(q, b"1")
    s1 = client.stats()
    assert _num(s1, "cmd_set") - _num(b0, "cmd_set") == 3
    assert _num(s1, "total_items") - _num(b0, "total_items") == 3
    assert _num(s1, "curr_items") - _num(b0, "curr_items") == 3
    assert _num(s1, "bytes") - _num(b0, "bytes") == 9

    # cmd_get counts keys asked for: 3 keys here, 1 hit, 2 misses
    items = client.get_items("%s %s %s" % (q, missing, missing + "x"))
    assert len(items) == 1
    s2 = client.stats()
    assert _num(s2, "cmd_get") - _num(s1, "cmd_get") == 3
    assert _num(s2, "get_hits") - _num(s1, "get_hits") == 1
    assert _num(s2, "get_misses") - _num(s1, "get_misses") == 2
    assert _num(s2, "curr_items") - _num(b0, "curr_items") == 2
    assert _num(s2, "bytes") - _num(b0, "bytes") == 4
    assert _num(s2, "total_items") - _num(b0, "total_items") == 3

    # the same queue twice in one get: two keys, two hits
    assert len(client.get_items("%s %s" % (q, q))) == 2
    s3 = client.stats()
    assert _num(s3, "cmd_get") - _num(s2, "cmd_get") == 2
    assert _num(s3, "get_hits") - _num(s2, "get_hits") == 2
    assert _num(s3, "get_misses") - _num(s2, "get_misses") == 0
    assert _num(s3, "curr_items") - _num(b0, "curr_items") == 0
    assert client.get(q) is None
    s4 = client.stats()
    assert _num(s4, "get_misses") - _num(s3, "get_misses") == 1


def test_stats_connections(server, client):
    s0 = client.stats()
    others = [Client(server.addr) for _ in range(3)]
    for o in others:
        _alive(o)
    s1 = client.stats()
    assert _num(s1, "total_connections") - _num(s0, "total_connections") \
        >= 3
    assert _num(s1, "curr_connections") - _num(s0, "curr_connections") == 3
    for o in others:
        o.close()
    wait_for(lambda: _num(client.stats(), "curr_connections")
             == _num(s0, "curr_connections"), timeout=5,
             what="curr_connections back down after close")


def test_stats_per_queue(client, connect):
    q = qname()
    client.store(q, b"aaaa")
    client.store(q, b"bb")
    client.store(q, b"c")
    client.store(q, b"gone", exptime=-1)
    st = client.qstats(q)
    assert set(st) == {"items", "bytes", "total_items", "expired_items",
                       "open_items", "waiters", "age_ms", "leased_items",
                       "redelivered_items", "dead_lettered_items"}, st
    assert st["total_items"] == 4
    assert st["open_items"] == 0 and st["waiters"] == 0
    assert st["age_ms"] >= 0

    assert client.getdata(q) == b"aaaa"
    assert client.get(q + "/open").data == b"bb"
    st = client.qstats(q)
    assert st["open_items"] == 1
    assert st["total_items"] == 4
    # "gone" expired before anyone could take it; after a get walks past it
    # it must show as expired, and neither "items" nor "bytes" counts it
    assert client.getdata(q) == b"c"
    assert client.get(q) is None
    st = client.qstats(q)
    assert st["items"] == 0 and st["bytes"] == 0
    assert st["expired_items"] == 1
    assert st["open_items"] == 1
    assert st["age_ms"] == 0, "empty queue: age of head must be 0"

    poller = connect()
    poller.send("get %s/t=5000\r\n" % q)
    wait_for(lambda: client.qstats(q)["waiters"] == 1, timeout=5,
             what="waiters == 1")
    client.store(q, b"w")
    assert poller.read_values()[0].data == b"w"
    assert client.qstats(q)["waiters"] == 0


def test_stats_age_ms_grows(client):
    q = qname()
    client.store(q, b"old")
    a0 = client.qstats(q)["age_ms"]
    assert 0 <= a0 < 5000
    wait_for(lambda: client.qstats(q)["age_ms"] >= 300, timeout=5,
             interval=0.05, what="age_ms of the head item to reach 300")


def test_stats_empty_queue_listed(client):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    st = client.qstats(q)
    assert st["items"] == 0 and st["total_items"] == 1


# ------------------------------------------------------------ version, quit

def test_version(client):
    assert re.fullmatch(r"VERSION memqd \d+\.\d+\.\d+", client.cmd("version"))


def test_quit_closes(client):
    client.send("quit\r\n")
    assert client.wait_closed(5), "quit did not close the connection"
    assert bytes(client.buf) == b"", "quit must not answer"


def test_quit_in_pipeline(client):
    q = qname()
    client.send("set %s 0 0 1\r\na\r\nquit\r\nset %s 0 0 1\r\nb\r\n" % (q, q))
    assert client.line() == "STORED"
    assert client.wait_closed(5)
    assert bytes(client.buf) == b""
    c = Client(client.addr)
    assert c.getdata(q) == b"a"
    assert c.get(q) is None, "a command after quit was executed"
    c.close()


# ------------------------------------------------ unsupported / unknown

@pytest.mark.parametrize("cmd", ["add", "replace", "append", "prepend"])
def test_unsupported_storage_commands(client, cmd):
    q = qname()
    client.store(q, b"keep")
    # the data block looks like commands: it must be read and dropped
    data = b"flush_all\r\ndelete " + q.encode() + b"\r\n"
    client.send(b"%s %s 0 0 %d\r\n%s\r\n" % (cmd.encode(), q.encode(),
                                            len(data), data))
    assert client.line() == "SERVER_ERROR not supported"
    _alive(client)
    assert client.getdata(q) == b"keep"


def test_cas_not_supported(client):
    q = qname()
    client.store(q, b"keep")
    data = b"version\r\n"
    client.send(b"cas %s 0 0 %d 1\r\n%s\r\n" % (q.encode(), len(data), data))
    assert client.line() == "SERVER_ERROR not supported"
    _alive(client)
    assert client.getdata(q) == b"keep"


def test_unsupported_pipelined(client):
    q = qname()
    client.send("add %s 0 0 2\r\nab\r\nset %s 0 0 2\r\ncd\r\n"
                "replace %s 0 0 0\r\n\r\nget %s\r\n" % (q, q, q, q))
    assert client.line() == "SERVER_ERROR not supported"
    assert client.line() == "STORED"
    assert client.line() == "SERVER_ERROR not supported"
    assert [i.data for i in client.read_values()] == [b"cd"]


@pytest.mark.parametrize("line", ["foo", "incr q 1", "decr q 1", "touchx q/1 1",
                                  "gat 0 q", "verbosity 1", "GET q",
                                  "Set q 0 0 1", "stat", "getx q",
                                  "flushall", "versions", "quitx"])
def test_unknown_command(client, line):
    q = qname()
    client.store(q, b"keep")
    assert client.cmd(line) == "ERROR"
    _alive(client)
    assert client.getdata(q) == b"keep"
