"""get options: /peek, /n=COUNT, /t=MS (long poll), option syntax and the
rule that reading a missing queue creates nothing (DESIGN §1, §3)."""

import threading
import socket
import struct
import time

import pytest

from memqlib import SLOW, Client, pipeline, qname, wait_for


# ------------------------------------------------------------------ /peek

def test_peek_does_not_remove(client):
    q = qname()
    client.store(q, b"first", flags=3)
    client.store(q, b"second")
    for _ in range(3):
        it = client.get(q + "/peek")
        assert (it.key, it.flags, it.data) == (q + "/peek", 3, b"first")
    assert client.getdata(q) == b"first"
    assert client.get(q + "/peek").data == b"second"
    assert client.getdata(q) == b"second"
    assert client.get(q + "/peek") is None


def test_peek_gets_has_cas(client):
    q = qname()
    client.store(q, b"a")
    client.store(q, b"b")
    client.get(q)
    it = client.get(q + "/peek", cmd="gets")
    assert (it.data, it.cas) == (b"b", 2)


def test_peek_keeps_counts(client):
    q = qname()
    client.store(q, b"abc")
    client.get(q + "/peek")
    st = client.qstats(q)
    assert st["items"] == 1 and st["bytes"] == 3 and st["open_items"] == 0


# ------------------------------------------------------------------ /n=

def test_n_returns_several_values_in_order(client):
    q = qname()
    for i in range(5):
        client.store(q, b"i%d" % i, flags=i)
    items = client.get_items(q + "/n=3")
    assert [(i.key, i.flags, i.data) for i in items] == \
        [(q + "/n=3", k, b"i%d" % k) for k in range(3)]
    items = client.get_items(q + "/n=10")
    assert [i.data for i in items] == [b"i3", b"i4"]
    assert client.get_items(q + "/n=10") == []


def test_n_1_is_one_item(client):
    q = qname()
    client.store(q, b"a")
    client.store(q, b"b")
    assert [i.data for i in client.get_items(q + "/n=1")] == [b"a"]


def test_n_1000(client):
    q = qname()
    n = 1200
    payloads = [b"%06d" % i for i in range(n)]
    req = b"".join(b"set %s 0 0 6 noreply\r\n%s\r\n" % (q.encode(), p)
                   for p in payloads)
    client.send(req)
    assert client.cmd("version").startswith("VERSION")
    items = client.get_items(q + "/n=1000", cmd="gets")
    assert len(items) == 1000
    assert [i.data for i in items] == payloads[:1000]
    assert [i.cas for i in items] == list(range(1, 1001))
    items = client.get_items(q + "/n=1000")
    assert [i.data for i in items] == payloads[1000:]


@pytest.mark.parametrize("opt", ["/n=0", "/n=1001", "/n=-1", "/n=abc",
                                 "/n=", "/n", "/n=99999999999999999999999",
                                 "/n=1x", "/n=0x10"])
def test_bad_count(client, opt):
    q = qname()
    client.store(q, b"keep")
    assert client.cmd("get " + q + opt) == "CLIENT_ERROR bad option"
    # the line was well framed: the connection stays usable
    assert client.getdata(q) == b"keep"


# ------------------------------------------------------------------ /t=

def test_long_poll_times_out_with_end(client):
    q = qname()
    client.store(q, b"x")
    client.get(q)                       # queue exists, now empty
    t0 = time.monotonic()
    assert client.get_items(q + "/t=300", timeout=10) == []
    dt = time.monotonic() - t0
    assert dt >= 0.29, "returned after %.3fs, before /t=300" % dt
    assert dt < 0.3 + 2.0 * SLOW, "returned after %.3fs" % dt


def test_long_poll_zero_returns_at_once(client):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    t0 = time.monotonic()
    assert client.get_items(q + "/t=0") == []
    assert time.monotonic() - t0 < 1.0 * SLOW


def test_long_poll_with_item_returns_at_once(client):
    q = qname()
    client.store(q, b"ready")
    t0 = time.monotonic()
    assert [i.data for i in client.get_items(q + "/t=10000")] == [b"ready"]
    assert time.monotonic() - t0 < 1.0 * SLOW


def _wait_waiters(c, q, n):
    wait_for(lambda: c.qstats(q).get("waiters") == n, timeout=5,
             what="waiters of %s == %d" % (q, n))


def test_long_poll_woken_by_set_from_other_connection(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    poller = connect()
    t0 = time.monotonic()
    poller.send("get %s/t=10000\r\n" % q)
    _wait_waiters(client, q, 1)
    client.store(q, b"wake", flags=5)
    items = poller.read_values(timeout=3)
    dt = time.monotonic() - t0
    assert [(i.key, i.flags, i.data) for i in items] == \
        [(q + "/t=10000", 5, b"wake")]
    assert dt < 3.0 * SLOW, "poller answered after %.2fs" % dt
    assert client.get(q) is None, "the delivered item must be removed"
    assert client.qstats(q)["waiters"] == 0


def test_long_poll_open_and_n(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    poller = connect()
    poller.send("get %s/t=10000/open/n=5\r\n" % q)
    _wait_waiters(client, q, 1)
    client.store(q, b"w1")
    items = poller.read_values(timeout=3)
    assert [i.data for i in items][:1] == [b"w1"]
    st = client.qstats(q)
    assert st["open_items"] == len(items) and st["items"] == 0
    poller.close()
    wait_for(lambda: client.qstats(q)["items"] == len(items), timeout=5,
             what="open item back after disconnect")
    assert client.getdata(q) == b"w1"


def test_two_waiters_one_item_each(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    p1, p2 = connect(), connect()
    p1.send("get %s/t=10000\r\n" % q)
    p2.send("get %s/t=10000\r\n" % q)
    _wait_waiters(client, q, 2)
    client.store(q, b"one")
    client.store(q, b"two")
    got = sorted(p.read_values(timeout=3)[0].data for p in (p1, p2))
    assert got == [b"one", b"two"]
    assert client.get(q) is None


def test_disconnected_waiter_does_not_eat_items(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    poller = connect()
    poller.send("get %s/t=60000\r\n" % q)
    _wait_waiters(client, q, 1)
    # a reset: a FIN alone may be a half-close that still wants its reply
    poller.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                           struct.pack("ii", 1, 0))
    poller.close()
    _wait_waiters(client, q, 0)
    client.store(q, b"kept")
    assert client.getdata(q) == b"kept"


def test_long_poll_does_not_block_others(client, connect):
    q, other = qname(), qname()
    client.store(q, b"x")
    client.get(q)
    poller = connect()
    poller.send("get %s/t=2000\r\n" % q)
    _wait_waiters(client, q, 1)
    t0 = time.monotonic()
    for i in range(20):
        client.store(other, b"%d" % i)
        assert client.getdata(other) == b"%d" % i
    assert time.monotonic() - t0 < 1.5 * SLOW
    assert poller.read_values(timeout=5) == []


def test_long_poll_woken_from_thread(server):
    """The set comes from another thread at an unknown moment; the poller
    must see it whenever it lands."""
    q = qname()
    c = Client(server.addr)
    c.store(q, b"x")
    c.get(q)
    got = []

    def poll():
        p = Client(server.addr)
        got.extend(p.get_items(q + "/t=5000", timeout=10))
        p.close()

    t = threading.Thread(target=poll)
    t.start()
    wait_for(lambda: c.qstats(q).get("waiters") == 1, timeout=5,
             what="poller waiting")
    c.store(q, b"late")
    t.join(10 * SLOW)
    assert [i.data for i in got] == [b"late"]
    c.close()


@pytest.mark.parametrize("opt", ["/t=", "/t=abc", "/t=-1", "/t=1.5",
                                 "/t=10ms", "/t"])
def test_bad_wait(client, opt):
    q = qname()
    client.store(q, b"keep")
    assert client.cmd("get " + q + opt) == "CLIENT_ERROR bad option"
    assert client.getdata(q) == b"keep"


# ------------------------------------------------------------------ syntax

@pytest.mark.parametrize("opt", ["/foo", "/OPEN", "/opened", "/peekx",
                                 "/open=1", "/x=1", "/", "//open",
                                 "/open/", "/open//close"])
def test_unknown_or_empty_option(client, opt):
    q = qname()
    client.store(q, b"keep")
    assert client.cmd("get " + q + opt) == "CLIENT_ERROR bad option"
    assert client.cmd("gets " + q + opt) == "CLIENT_ERROR bad option"
    assert client.getdata(q) == b"keep"


def test_options_in_any_order(client):
    q = qname()
    for i in range(6):
        client.store(q, b"%d" % i)
    a = client.get_items(q + "/n=2/open/t=10")
    assert [i.data for i in a] == [b"0", b"1"]
    assert all(i.key == q + "/n=2/open/t=10" for i in a)
    b = client.get_items(q + "/close/t=10/open/n=2")
    assert [i.data for i in b] == [b"2", b"3"]
    c = client.get_items(q + "/t=10/n=2/close/open")
    assert [i.data for i in c] == [b"4", b"5"]
    assert client.get_items(q + "/close") == []
    st = client.qstats(q)
    assert st["items"] == 0 and st["open_items"] == 0


def test_peek_with_wait(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    poller = connect()
    poller.send("get %s/peek/t=5000\r\n" % q)
    _wait_waiters(client, q, 1)
    client.store(q, b"seen")
    assert [i.data for i in poller.read_values(timeout=3)] == [b"seen"]
    assert client.getdata(q) == b"seen", "/peek must not remove the item"


# ------------------------------------------------------------- missing queue

@pytest.mark.parametrize("opts", ["", "/peek", "/open", "/n=5", "/close",
                                  "/abort", "/t=50", "/open/t=20/n=3"])
def test_get_missing_queue_creates_nothing(server, client, opts):
    q = qname("missing")
    assert client.get_items(q + opts, timeout=5) == []
    assert client.get_items(q + opts, cmd="gets", timeout=5) == []
    st = client.stats()
    assert not [k for k in st if k.startswith("queue_%s_" % q)], \
        "stats lists a queue nobody set: %r" % \
        [k for k in st if q in k]
    if not server.external:
        assert not (server.data_dir / q).exists(), \
            "get created the directory %s" % (server.data_dir / q)
        assert not [p for p in server.data_dir.iterdir() if q in p.name]


def test_get_missing_queue_counts_a_miss(client):
    before = client.stats()
    assert client.get(qname("missing")) is None
    after = client.stats()
    assert int(after["get_misses"]) == int(before["get_misses"]) + 1
    assert int(after["cmd_get"]) == int(before["cmd_get"]) + 1


def test_pipelined_gets_with_options(client):
    q = qname()
    n = 300
    client.send(b"".join(b"set %s 0 0 4 noreply\r\n%04d\r\n" % (q.encode(), i)
                         for i in range(n)))
    req = b"".join(b"get %s/peek\r\nget %s\r\n" % (q.encode(), q.encode())
                   for _ in range(n))
    expect = b"".join(b"VALUE %s/peek 0 4\r\n%04d\r\nEND\r\n"
                      b"VALUE %s 0 4\r\n%04d\r\nEND\r\n"
                      % (q.encode(), i, q.encode(), i) for i in range(n))
    assert pipeline(client, req, len(expect)) == expect


def test_many_waiters_with_different_deadlines(client, connect):
    q = qname()
    client.store(q, b"x")
    client.get(q)
    pollers = []
    t0 = time.monotonic()
    for ms in (500, 100, 400, 200, 300):
        p = connect()
        p.send("get %s/t=%d\r\n" % (q, ms))
        pollers.append((ms, p))
    for ms, p in pollers:
        assert p.read_values(timeout=10) == []
        dt = time.monotonic() - t0
        assert dt >= ms / 1000.0 - 0.01, \
            "/t=%d answered after %.3fs" % (ms, dt)
    assert time.monotonic() - t0 < 0.5 + 2.0 * SLOW
    assert client.qstats(q)["waiters"] == 0


def test_largest_wait_accepted(client):
    q = qname()
    client.store(q, b"x")
    assert [i.data for i in client.get_items(q + "/t=86400000")] == [b"x"]


def test_each_item_to_exactly_one_waiter(server, client):
    """Twenty connections long-poll one queue in a loop while items
    arrive: every item is delivered once, none twice, none lost."""
    q = qname()
    client.store(q, b"x")
    client.get(q)
    n, nconn = 400, 20
    got = []
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def poller():
        try:
            c = Client(server.addr, timeout=10)
            while not stop.is_set():
                items = c.get_items(q + "/t=200", timeout=10)
                with lock:
                    got.extend(i.data for i in items)
            c.close()
        except Exception as e:              # reported below
            errors.append(e)

    ts = [threading.Thread(target=poller) for _ in range(nconn)]
    for t in ts:
        t.start()
    wait_for(lambda: client.qstats(q)["waiters"] >= nconn // 2, timeout=5,
             what="pollers waiting")
    for i in range(n):
        client.set(q, b"%04d" % i, noreply=True)
    assert client.cmd("version").startswith("VERSION")
    wait_for(lambda: len(got) >= n, timeout=10,
             what="all items delivered (%d of %d)" % (len(got), n))
    stop.set()
    for t in ts:
        t.join(10 * SLOW)
    assert not errors, errors[:3]
    assert sorted(got) == [b"%04d" % i for i in range(n)], \
        "duplicates or losses: %d delivered, %d distinct" % (
            len(got), len(set(got)))
    assert client.get(q) is None
