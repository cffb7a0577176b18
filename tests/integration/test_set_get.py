"""set / get / gets: the basic enqueue and dequeue path (DESIGN §1, §3)."""

import time

import pytest

from memqlib import Client, qname, wait_for


def test_set_then_get(client):
    q = qname()
    assert client.set(q, b"hello") == "STORED"
    it = client.get(q)
    assert it.key == q and it.flags == 0 and it.data == b"hello"
    assert it.cas is None, "plain get must not send a cas field"
    assert client.get(q) is None, "item must be removed by get"


@pytest.mark.parametrize("flags", [0, 1, 2, 65535, 65536, 2 ** 31,
                                   4294967295])
def test_flags_kept_verbatim(client, flags):
    q = qname()
    client.store(q, b"x", flags=flags)
    it = client.get(q)
    assert it.flags == flags


def test_fifo_order(client):
    q = qname()
    for i in range(50):
        client.store(q, b"m%d" % i, flags=i)
    got = [client.get(q) for _ in range(50)]
    assert [g.data for g in got] == [b"m%d" % i for i in range(50)]
    assert [g.flags for g in got] == list(range(50))
    assert client.get(q) is None


def test_gets_cas_is_sequence_number(client):
    q = qname()
    for i in range(5):
        client.store(q, b"v%d" % i)
    got = [client.get(q, cmd="gets") for _ in range(5)]
    assert [g.cas for g in got] == [1, 2, 3, 4, 5]
    assert [g.data for g in got] == [b"v%d" % i for i in range(5)]
    # numbers keep growing after the queue has been emptied
    client.store(q, b"v5")
    assert client.get(q, cmd="gets").cas == 6


def test_multiple_keys_in_one_get(client):
    a, b, missing = qname(), qname(), qname()
    client.store(a, b"A1", flags=1)
    client.store(a, b"A2", flags=2)
    client.store(b, b"B1", flags=3)
    items = client.get_items("%s %s %s" % (a, missing, b))
    assert [(i.key, i.flags, i.data) for i in items] == \
        [(a, 1, b"A1"), (b, 3, b"B1")]
    # one item per key: A2 is still there
    assert client.getdata(a) == b"A2"
    items = client.get_items("%s %s" % (a, b), cmd="gets")
    assert items == []


def test_same_key_twice_in_one_get(client):
    q = qname()
    client.store(q, b"1")
    client.store(q, b"2")
    items = client.get_items("%s %s" % (q, q))
    assert [i.data for i in items] == [b"1", b"2"]


@pytest.mark.parametrize("opts", ["/open", "/peek", "/t=10", "/n=1",
                                  "/open/t=5", "/n=3/peek"])
def test_value_line_echoes_key_as_sent(client, opts):
    q = qname()
    client.store(q, b"payload", flags=7)
    items = client.get_items(q + opts)
    assert items, "no value for %s" % (q + opts)
    assert items[0].key == q + opts
    assert items[0].flags == 7


def test_gets_echoes_key_and_adds_cas(client):
    q = qname()
    client.store(q, b"a")
    client.store(q, b"b")
    client.send("gets %s/n=2\r\n" % q)
    assert client.line() == "VALUE %s/n=2 0 1 1" % q
    assert client.read_exact(3) == b"a\r\n"
    assert client.line() == "VALUE %s/n=2 0 1 2" % q
    assert client.read_exact(3) == b"b\r\n"
    assert client.line() == "END"


def test_exact_reply_bytes(client):
    q = qname()
    client.send("set %s 42 0 5\r\nhello\r\n" % q)
    assert client.read_exact(8) == b"STORED\r\n"
    client.send("get %s\r\n" % q)
    expect = ("VALUE %s 42 5\r\nhello\r\nEND\r\n" % q).encode()
    assert client.read_exact(len(expect)) == expect


def test_binary_payloads(client):
    q = qname()
    payloads = [
        b"\r\n",
        b"a\r\nb\r\n",
        b"\r\nEND\r\n",
        b"\0",
        b"x\0y\0\0",
        bytes(range(256)),
        b"VALUE foo 0 3\r\nabc\r\nEND\r\n",
        b"\n" * 10 + b"\r" * 10,
        b"\xff\xfe\x80",
    ]
    for p in payloads:
        client.store(q, p)
    for p in payloads:
        assert client.getdata(q) == p


def test_empty_payload(client):
    q = qname()
    client.send("set %s 5 0 0\r\n\r\n" % q)
    assert client.line() == "STORED"
    client.send("get %s\r\n" % q)
    expect = ("VALUE %s 5 0\r\n\r\nEND\r\n" % q).encode()
    assert client.read_exact(len(expect)) == expect
    assert client.get(q) is None


def test_exptime_zero_never_expires(client):
    q = qname()
    client.store(q, b"forever", exptime=0)
    assert client.getdata(q) == b"forever"


def test_exptime_relative_future(client):
    q = qname()
    client.store(q, b"later", exptime=3600)
    assert client.getdata(q) == b"later"


def test_exptime_relative_max(client):
    q = qname()
    client.store(q, b"month", exptime=2592000)
    assert client.getdata(q) == b"month"


def test_exptime_absolute_future(client):
    q = qname()
    client.store(q, b"abs", exptime=int(time.time()) + 3600)
    assert client.getdata(q) == b"abs"


def test_exptime_absolute_past_is_expired(client):
    q = qname()
    # > 2592000, so a unix time: 2592001 s after the epoch, long past
    client.store(q, b"old", exptime=2592001)
    client.store(q, b"old2", exptime=int(time.time()) - 10)
    client.store(q, b"fresh")
    assert client.getdata(q) == b"fresh"
    assert client.get(q) is None


def test_exptime_negative_is_stored_expired(client):
    q = qname()
    assert client.set(q, b"gone", exptime=-1) == "STORED"
    assert client.get(q) is None
    client.store(q, b"after", exptime=-100)
    client.store(q, b"kept")
    assert client.getdata(q) == b"kept"
    assert client.qstats(q).get("expired_items") == 2


def test_exptime_relative_expires(client):
    q = qname()
    client.store(q, b"short", exptime=1)
    client.store(q, b"long", exptime=3600)
    # the exptime=1 item leaves the head within about two seconds
    wait_for(lambda: client.get(q + "/peek").data == b"long", timeout=4,
             interval=0.05, what="the exptime=1 item to expire")
    assert client.getdata(q) == b"long"


def test_noreply_set(client):
    q = qname()
    for i in range(3):
        client.set(q, b"n%d" % i, noreply=True)
    # no STORED lines: the first reply is the version
    assert client.cmd("version").startswith("VERSION memqd ")
    assert [client.getdata(q) for _ in range(3)] == [b"n0", b"n1", b"n2"]


def test_noreply_set_is_durable_before_next_reply(client, connect):
    q = qname()
    client.set(q, b"quiet", noreply=True)
    client.cmd("version")
    other = connect()
    assert other.getdata(q) == b"quiet"


def _check_max_item_size(c, q, limit):
    assert c.set(q, b"a" * limit) == "STORED"
    # one byte over: rejected, the data block swallowed, connection kept
    big = b"b" * (limit + 1)
    assert c.set(q, big) == "SERVER_ERROR object too large for cache"
    assert c.cmd("version").startswith("VERSION memqd ")
    assert c.set(q, b"small") == "STORED"
    assert c.getdata(q) == b"a" * limit
    assert c.getdata(q) == b"small"
    assert c.get(q) is None


def test_max_item_size_default_1m(client):
    _check_max_item_size(client, qname(), 1048576)


def test_max_item_size_option(memqd_factory):
    s = memqd_factory(args=["--max-item-size", "4096"])
    c = s.connect()
    _check_max_item_size(c, qname(), 4096)
    c.close()


@pytest.mark.parametrize("arg,size", [("2k", 2048), ("1m", 1048576),
                                      ("3m", 3 * 1048576)])
def test_max_item_size_suffix(memqd_factory, arg, size):
    s = memqd_factory(args=["--max-item-size", arg])
    c = s.connect(timeout=20)
    _check_max_item_size(c, qname(), size)
    c.close()


def test_too_large_payload_looking_like_commands_is_swallowed(memqd_factory):
    s = memqd_factory(args=["--max-item-size", "100"])
    c = s.connect()
    q = qname()
    evil = b"flush_all\r\n" * 20          # 220 bytes, must not be executed
    c.store(q, b"keep")
    assert c.set(q, evil) == "SERVER_ERROR object too large for cache"
    assert c.getdata(q) == b"keep"
    c.close()


def test_pipelined_commands_in_one_write(client):
    q = qname()
    req = ("set {q} 1 0 3\r\nabc\r\n"
           "set {q} 2 0 3 noreply\r\ndef\r\n"
           "set {q} 3 0 3\r\nghi\r\n"
           "get {q}\r\n"
           "gets {q}\r\n"
           "version\r\n"
           "get {q}/peek\r\n").format(q=q).encode()
    client.send(req)
    assert client.line() == "STORED"
    assert client.line() == "STORED"
    assert client.read_values() == [(q, 1, b"abc", None)]
    assert client.read_values() == [(q, 2, b"def", 2)]
    assert client.line().startswith("VERSION memqd ")
    assert client.read_values() == [(q + "/peek", 3, b"ghi", None)]


def test_command_split_across_writes(client):
    q = qname()
    msg = ("set %s 9 0 10\r\n0123456789\r\nget %s\r\n" % (q, q)).encode()
    for i in range(len(msg)):
        client.send(msg[i:i + 1])
    assert client.line() == "STORED"
    assert client.read_values() == [(q, 9, b"0123456789", None)]


def test_two_connections_share_a_queue(client, connect):
    q = qname()
    other = connect()
    client.store(q, b"from-1")
    other.store(q, b"from-2")
    assert other.getdata(q) == b"from-1"
    assert client.getdata(q) == b"from-2"


def test_item_of_many_sizes(client):
    q = qname()
    sizes = [1, 2, 100, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536,
             200000]
    for n in sizes:
        client.store(q, bytes([n % 251]) * n)
    for n in sizes:
        assert client.getdata(q) == bytes([n % 251]) * n


def test_new_client_sees_items(server):
    q = qname()
    a = Client(server.addr)
    a.store(q, b"x")
    a.close()
    b = Client(server.addr)
    assert b.getdata(q) == b"x"
    b.close()
