"""Reliable reads: /open, /close, /abort and open items given back when a
connection closes (DESIGN §1, §3)."""

import time

from memqlib import SLOW, pipeline, qname, wait_for


def _fill(c, q, n, fmt=b"m%d"):
    for i in range(n):
        c.store(q, fmt % i)


def _datas(items):
    return [i.data for i in items]


def _wait_items(c, q, n, what=None):
    wait_for(lambda: c.qstats(q).get("items") == n, timeout=5,
             what=what or "items of %s == %d" % (q, n))


def test_open_reserves_item(client, connect):
    q = qname()
    _fill(client, q, 2)
    it = client.get(q + "/open")
    assert (it.key, it.data) == (q + "/open", b"m0")
    other = connect()
    assert other.getdata(q) == b"m1", "an open item must not be handed out"
    assert other.get(q) is None


def test_close_acknowledges(client, connect):
    q = qname()
    _fill(client, q, 2)
    assert client.get(q + "/open").data == b"m0"
    assert client.get_items(q + "/close") == []
    st = client.qstats(q)
    assert st["open_items"] == 0 and st["items"] == 1
    client.close()
    other = connect()
    assert other.getdata(q) == b"m1", "an acknowledged item came back"
    assert other.get(q) is None


def test_close_alone_is_end(client):
    q = qname()
    _fill(client, q, 2)
    assert client.get_items(q + "/close") == []
    assert client.get_items(q + "/abort") == []
    st = client.qstats(q)
    assert st["items"] == 2 and st["open_items"] == 0
    assert client.getdata(q) == b"m0"


def test_abort_gives_back_in_original_order(client):
    q = qname()
    _fill(client, q, 4)
    assert client.get(q + "/open").data == b"m0"
    assert client.get(q + "/open").data == b"m1"
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (2, 2)
    assert client.get_items(q + "/abort") == []
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (4, 0)
    assert _datas(client.get_items(q + "/n=10")) == \
        [b"m0", b"m1", b"m2", b"m3"]


def test_abort_keeps_sequence_numbers(client):
    q = qname()
    _fill(client, q, 3)
    first = client.get_items(q + "/open/n=2", cmd="gets")
    assert [i.cas for i in first] == [1, 2]
    client.get_items(q + "/abort")
    again = client.get_items(q + "/n=3", cmd="gets")
    assert [(i.data, i.cas) for i in again] == \
        [(b"m0", 1), (b"m1", 2), (b"m2", 3)]


def test_close_open_in_one_round_trip(client, connect):
    q = qname()
    _fill(client, q, 5)
    assert client.get(q + "/open").data == b"m0"
    # /close/open: ack m0, open m1
    assert client.get(q + "/close/open").data == b"m1"
    # /open/close is the same: ack m1, open m2
    assert client.get(q + "/open/close").data == b"m2"
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (2, 1)
    client.close()
    other = connect()
    _wait_items(other, q, 3)
    assert _datas(other.get_items(q + "/n=10")) == [b"m2", b"m3", b"m4"]


def test_open_n_then_close(client):
    q = qname()
    _fill(client, q, 5)
    got = client.get_items(q + "/open/n=3")
    assert _datas(got) == [b"m0", b"m1", b"m2"]
    assert client.qstats(q)["open_items"] == 3
    assert client.get_items(q + "/close") == []
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (2, 0)


def test_open_items_come_back_on_disconnect(client, connect):
    q = qname()
    _fill(client, q, 5)
    a, b = connect(), connect()
    assert a.get(q + "/open").data == b"m0"
    assert a.get(q + "/open").data == b"m1"
    assert b.getdata(q) == b"m2"
    a.close()
    _wait_items(client, q, 4)
    assert client.qstats(q)["open_items"] == 0
    assert _datas(client.get_items(q + "/n=10")) == \
        [b"m0", b"m1", b"m3", b"m4"]


def test_quit_gives_back_open_items(client, connect):
    q = qname()
    _fill(client, q, 2)
    a = connect()
    assert a.get(q + "/open").data == b"m0"
    a.send("quit\r\n")
    assert a.wait_closed(5)
    _wait_items(client, q, 2)
    assert client.getdata(q) == b"m0"


def test_interleaved_connections(client, connect):
    q = qname()
    _fill(client, q, 6, b"%d")
    a, b = connect(), connect()
    assert a.get(q + "/open").data == b"0"
    assert b.get(q + "/open").data == b"1"
    assert a.get(q + "/open").data == b"2"
    assert b.get(q + "/open").data == b"3"
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (2, 4)

    a.close()
    _wait_items(client, q, 4)
    assert client.qstats(q)["open_items"] == 2
    # look without taking: open everything, check, give it back
    look = client.get_items(q + "/open/n=100")
    assert _datas(look) == [b"0", b"2", b"4", b"5"]
    client.get_items(q + "/abort")

    b.close()
    _wait_items(client, q, 6)
    got = _datas(client.get_items(q + "/n=100"))
    assert sorted(got) == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert [x for x in got if x in (b"0", b"2")] == [b"0", b"2"]
    assert [x for x in got if x in (b"1", b"3")] == [b"1", b"3"]
    assert got[-2:] == [b"4", b"5"], \
        "given-back items must be ahead of items never taken: %r" % got


def test_open_on_two_queues(client, connect):
    q1, q2 = qname(), qname()
    client.store(q1, b"a1")
    client.store(q1, b"a2")
    client.store(q2, b"b1")
    c = connect()
    assert c.get(q1 + "/open").data == b"a1"
    assert c.get(q2 + "/open").data == b"b1"
    assert c.get_items(q1 + "/close") == []        # acks q1 only
    assert client.qstats(q2)["open_items"] == 1
    c.close()
    _wait_items(client, q2, 1)
    assert client.qstats(q1)["items"] == 1
    assert client.getdata(q1) == b"a2"
    assert client.getdata(q2) == b"b1"


def test_plain_get_is_not_given_back(client, connect):
    q = qname()
    _fill(client, q, 2)
    a = connect()
    assert a.getdata(q) == b"m0"
    a.close()
    assert client.getdata(q) == b"m1"
    assert client.get(q) is None


def test_open_items_counted_apart(client):
    q = qname()
    client.store(q, b"a" * 10)
    client.store(q, b"b" * 20)
    client.store(q, b"c" * 30)
    client.get(q + "/open")
    client.get(q + "/open")
    st = client.qstats(q)
    assert st["items"] == 1, st
    assert st["bytes"] == 30, st
    assert st["open_items"] == 2, st
    client.get_items(q + "/abort")
    st = client.qstats(q)
    assert (st["items"], st["bytes"], st["open_items"]) == (3, 60, 0)


def test_100000_open_items_on_one_connection(client, connect):
    q = qname()
    n = 100000
    qb = q.encode()
    sets = b"".join(b"set %s 0 0 6\r\n%06d\r\n" % (qb, i) for i in range(n))
    t0 = time.monotonic()
    assert pipeline(client, sets, 8 * n, timeout=60) == b"STORED\r\n" * n
    c = connect(timeout=10)
    gets = b"get %s/open\r\n" % qb * n
    expect = b"".join(b"VALUE %s/open 0 6\r\n%06d\r\nEND\r\n" % (qb, i)
                      for i in range(n))
    assert pipeline(c, gets, len(expect), timeout=60) == expect
    st = client.qstats(q)
    assert (st["items"], st["open_items"]) == (0, n)
    c.close()
    wait_for(lambda: client.qstats(q).get("items") == n, timeout=10,
             what="100000 open items given back")
    assert client.qstats(q)["open_items"] == 0
    gets = b"get %s/n=1000\r\n" % qb * (n // 1000)
    expect = b"".join(b"VALUE %s/n=1000 0 6\r\n%06d\r\n" % (qb, i)
                      + (b"END\r\n" if i % 1000 == 999 else b"")
                      for i in range(n))
    assert pipeline(client, gets, len(expect), timeout=60) == expect
    assert time.monotonic() - t0 < 60 * SLOW
