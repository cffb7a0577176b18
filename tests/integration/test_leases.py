"""Leases: acknowledged delivery that does not hang on a connection
(DESIGN §5 memqd): /lease=, delete <q>/<id>, touch, /ack=, expiry back to
the head in id order, delivery counts, dead-letter queues, stats, restarts
and crashes, bad input."""

import signal
import struct
import time

import pytest

from memqlib import (REC_HDR, SEG_HDR, SLOW, file_mark, header_crc,
                     pipeline, qname, wait_for)

SHORT = int(250 * SLOW)  # ms: leases the tests wait to run out; the
#                          commands before they run out get that long
LONG = 600000      # ms: leases that must not run out during a test

DLQ_CONFIG = """
[queue dl*]
max_deliveries = 2
[queue named*]
max_deliveries = 1
dead_letter = graveyard
[queue three*]
max_deliveries = 3
"""


def _fill(c, q, n, fmt=b"m%d", flags=0):
    for i in range(n):
        c.store(q, fmt % i, flags=flags)


def _lease(c, q, ms, n=1, extra=""):
    return c.get_items("%s/lease=%d/n=%d%s" % (q, ms, n, extra))


def _send_all(c, body, timeout=60):
    """Sends body and a `version`; returns once its reply is read (every
    command before it has run)."""
    first = pipeline(c, body + b"version\r\n", 1, timeout=timeout)
    line = first + c.readline(timeout=timeout)
    assert line.startswith(b"VERSION"), line


def _store_numbered(c, q, n):
    """Stores "000000".."n-1" in q, pipelined, and waits for them all."""
    c.send(b"".join(b"set %s 0 0 6 noreply\r\n%06d\r\n" % (q.encode(), i)
                    for i in range(n)))
    wait_for(lambda: c.qstats(q).get("items") == n, timeout=20,
             what="items stored")


def _killed_and_back(s):
    """kill -9, start again on the same data: a new connection."""
    s.kill()
    s.start()
    return s.connect(timeout=30)


def _ids_left(c, q):
    """The ids of the items _store_numbered() stored that are still
    queued, in queue order (an item's body is its id minus one)."""
    return [int(i.data) + 1 for i in c.drain(q, timeout=30)]


def _leased_node(memqd_factory, n):
    """A node (--sync always) whose new queue holds n items, all leased
    for long: (server, client, queue, ids in the order leased)."""
    s = memqd_factory()
    c = s.connect(timeout=30)
    q = qname()
    _store_numbered(c, q, n)
    ids = []
    while len(ids) < n:
        ids += [i.cas for i in _lease(c, q, LONG, n=1000)]
    return s, c, q, ids


def _wait_stat(c, q, name, value, timeout=5):
    wait_for(lambda: c.qstats(q).get(name) == value, timeout=timeout,
             what="%s of %s == %r" % (name, q, value))


# 1. /lease: ids in the cas field, belongs to no connection, long poll

def test_lease_reply_carries_id_and_outlives_connection(server, connect):
    c = connect()
    q = qname()
    _fill(c, q, 3, flags=7)
    got = _lease(c, q, LONG, n=2)
    key = "%s/lease=%d/n=2" % (q, LONG)
    assert [(i.key, i.flags, i.data, i.cas) for i in got] == \
        [(key, 7, b"m0", 1), (key, 7, b"m1", 2)]
    # plain get answers without a cas field; /lease always has one
    c.send("get %s/lease=%d\r\n" % (q, LONG))
    assert c.line() == "VALUE %s/lease=%d 7 2 3" % (q, LONG)
    assert c.read_exact(4) == b"m2\r\n" and c.line() == "END"
    c.close()

    other = connect()
    st = other.qstats(q)
    assert st["leased_items"] == 3 and st["items"] == 0
    assert st["open_items"] == 0
    assert other.get(q) is None, "a leased item was handed out again"
    # the ids are the sequence numbers gets shows
    other.store(q, b"m3")
    assert other.get(q, cmd="gets").cas == 4
    # acknowledged from another connection
    for i in (1, 2, 3):
        assert other.cmd("delete %s/%d" % (q, i)) == "DELETED"
    assert other.qstats(q)["leased_items"] == 0


def test_lease_bounds(client):
    q = qname()
    _fill(client, q, 2)
    for bad in ("0", "43200001", "-1", "", "x"):
        assert client.cmd("get %s/lease=%s" % (q, bad)) == \
            "CLIENT_ERROR bad option"
    assert [i.data for i in _lease(client, q, 1)] == [b"m0"]
    _wait_stat(client, q, "items", 2)          # 1 ms: back at once
    got = _lease(client, q, 43200000, n=2)
    assert [(i.data, i.cas) for i in got] == [(b"m0", 1), (b"m1", 2)]
    assert client.qstats(q)["leased_items"] == 2


def test_lease_long_poll(server, connect):
    c = connect()
    q = qname()
    c.store(q, b"first")
    _lease(c, q, LONG)                         # the queue exists, empty
    poller = connect(timeout=10)
    poller.send("get %s/lease=%d/t=10000\r\n" % (q, LONG))
    wait_for(lambda: c.qstats(q).get("waiters") == 1, what="poller waits")
    c.store(q, b"late")
    got = poller.read_values(timeout=10)
    assert [(i.data, i.cas) for i in got] == [(b"late", 2)]
    st = c.qstats(q)
    assert st["leased_items"] == 2 and st["waiters"] == 0
    # /ack= with a long poll: acknowledged at once, the reply waits for
    # the next item
    poller.send("get %s/ack=1,2/lease=%d/t=10000\r\n" % (q, LONG))
    wait_for(lambda: c.qstats(q).get("waiters") == 1, what="poller waits")
    assert c.qstats(q)["leased_items"] == 0
    c.store(q, b"later")
    got = poller.read_values(timeout=10)
    assert [(i.data, i.cas) for i in got] == [(b"later", 3)]
    poller.close()
    assert c.cmd("delete %s/3" % q) == "DELETED"
    assert c.cmd("delete %s/2" % q) == "NOT_FOUND"


def test_ack_of_a_long_poll_applies_once(server, connect):
    """/ack= acknowledges what is leased when the get comes in: a long
    poll that waits and runs again later must not acknowledge an id that
    was given back and leased to another consumer meanwhile."""
    c = connect()
    q = qname()
    c.store(q, b"a")
    opener = connect()
    assert opener.get(q + "/open").data == b"a"      # id 1, not leased
    other = connect(timeout=10)
    other.send("get %s/lease=%d/t=10000\r\n" % (q, LONG))
    wait_for(lambda: c.qstats(q).get("waiters") == 1, what="other waits")
    poller = connect(timeout=10)
    poller.send("get %s/ack=1/lease=%d/t=10000\r\n" % (q, LONG))
    wait_for(lambda: c.qstats(q).get("waiters") == 2, what="poller waits")
    # id 1 goes back and the first waiter leases it
    assert opener.get_items(q + "/abort") == []
    assert [(i.data, i.cas) for i in other.read_values(timeout=10)] == \
        [(b"a", 1)]
    c.store(q, b"b")                                 # the poller runs
    assert [(i.data, i.cas) for i in poller.read_values(timeout=10)] == \
        [(b"b", 2)]
    assert c.qstats(q)["leased_items"] == 2
    assert other.cmd("delete %s/1" % q) == "DELETED"


# 2. delete <q>/<id>

def test_delete_acknowledges_once(client):
    q = qname()
    _fill(client, q, 3)
    ids = [i.cas for i in _lease(client, q, LONG, n=2)]
    assert client.cmd("delete %s/%d" % (q, ids[0])) == "DELETED"
    assert client.cmd("delete %s/%d" % (q, ids[0])) == "NOT_FOUND"
    assert client.cmd("delete %s/999" % q) == "NOT_FOUND"     # never was
    assert client.cmd("delete %s/3" % q) == "NOT_FOUND"       # not leased
    assert client.cmd("delete %s/%d noreply\r\nversion" % (q, ids[1])) \
        .startswith("VERSION")
    st = client.qstats(q)
    assert st["leased_items"] == 0 and st["items"] == 1
    assert client.getdata(q) == b"m2"


def test_delete_list_counts_exactly(client):
    """delete <q>/<id>,<id>,...: one reply, DELETED <n>, n the ids that
    were leased and now are not; an id named twice counts once, ids not
    leased (never were, acknowledged, not leased, another queue's) not at
    all; noreply answers nothing and acknowledges all the same."""
    q = qname()
    other = qname()
    _fill(client, q, 8)
    _fill(client, other, 1)
    ids = [i.cas for i in _lease(client, q, LONG, n=6)]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert client.cmd("delete %s/1,2,2,99,7,3" % q) == "DELETED 3"
    assert client.cmd("delete %s/1,2,3" % q) == "DELETED 0"
    assert client.cmd("delete %s/4,5" % other) == "DELETED 0"
    assert client.cmd("delete %s/4,5" % qname()) == "DELETED 0"
    assert client.qstats(q)["leased_items"] == 3
    assert client.cmd("delete %s/4,5 noreply\r\nversion" % q) \
        .startswith("VERSION")
    assert client.cmd("delete %s/5,6 0" % q) == "DELETED 1"
    st = client.qstats(q)
    assert st["leased_items"] == 0 and st["items"] == 2
    assert [client.getdata(q) for _ in range(2)] == [b"m6", b"m7"]
    # the other queue's item is untouched by ids sent to it
    assert client.getdata(other) == b"m0"


def test_delete_after_lease_ran_out_is_not_found(client):
    q = qname()
    _fill(client, q, 1)
    (it,) = _lease(client, q, SHORT)
    _wait_stat(client, q, "items", 1)
    assert client.cmd("delete %s/%d" % (q, it.cas)) == "NOT_FOUND"
    assert client.getdata(q) == b"m0"


def test_delete_queue_alone_still_drops_it(client):
    q = qname()
    _fill(client, q, 2)
    (it,) = _lease(client, q, LONG)
    assert client.cmd("delete %s" % q) == "DELETED"
    assert client.qstats(q) == {}
    assert client.cmd("delete %s/%d" % (q, it.cas)) == "NOT_FOUND"
    client.store(q, b"new")
    assert client.get(q, cmd="gets").data == b"new"


# 3. touch

def test_touch_extends_and_zero_gives_back(client):
    q = qname()
    _fill(client, q, 3)
    a, b = _lease(client, q, SHORT, n=2)
    assert client.cmd("touch %s/%d 60" % (q, a.cas)) == "TOUCHED"
    # b runs out; a, touched, stays leased
    _wait_stat(client, q, "items", 2)
    st = client.qstats(q)
    assert st["leased_items"] == 1
    assert client.cmd("delete %s/%d" % (q, b.cas)) == "NOT_FOUND"
    # touch 0: back at once, at the head
    assert client.cmd("touch %s/%d 0" % (q, a.cas)) == "TOUCHED"
    st = client.qstats(q)
    assert st["leased_items"] == 0 and st["items"] == 3
    assert client.cmd("touch %s/%d 5" % (q, a.cas)) == "NOT_FOUND"
    assert client.cmd("touch %s/77 5" % q) == "NOT_FOUND"
    assert client.cmd("touch nosuchqueue%s/1 5" % q) == "NOT_FOUND"
    assert [i.data for i in client.drain(q)] == [b"m0", b"m1", b"m2"]


def test_touch_noreply(client):
    q = qname()
    _fill(client, q, 1)
    (it,) = _lease(client, q, LONG)
    assert client.cmd("touch %s/%d 0 noreply\r\nversion" % (q, it.cas)) \
        .startswith("VERSION")
    assert client.qstats(q)["items"] == 1


# 4. /ack= then /lease= in one round trip

def test_ack_list_then_lease(client):
    q = qname()
    _fill(client, q, 6)
    first = [i.cas for i in _lease(client, q, LONG, n=2)]
    assert first == [1, 2]
    got = client.get_items("%s/ack=1,2,999,1/lease=%d/n=2" % (q, LONG))
    assert [(i.data, i.cas) for i in got] == [(b"m2", 3), (b"m3", 4)]
    st = client.qstats(q)
    assert st["leased_items"] == 2 and st["items"] == 2
    assert client.cmd("delete %s/1" % q) == "NOT_FOUND"
    # /ack= alone answers END and leases nothing
    assert client.get_items("%s/ack=3,4" % q) == []
    st = client.qstats(q)
    assert st["leased_items"] == 0 and st["items"] == 2
    # up to 1000 ids; one more is refused, the connection stays in sync
    ids = ",".join(["7"] * 1000)          # (a line holds 2048 bytes)
    assert client.get_items("%s/ack=%s" % (q, ids)) == []
    ids = ",".join(["7"] * 1001)
    assert client.cmd("get %s/ack=%s" % (q, ids)) == \
        "CLIENT_ERROR too many ids"
    assert client.qstats(q)["items"] == 2


# 5. expiry and give-back: head of the queue, id order; delivery counts

def test_expired_and_given_back_return_in_id_order(client):
    q = qname()
    _fill(client, q, 6)
    got = _lease(client, q, SHORT, n=4)
    assert [i.cas for i in got] == [1, 2, 3, 4]
    assert client.cmd("delete %s/2" % q) == "DELETED"
    assert client.cmd("touch %s/3 0" % q) == "TOUCHED"
    _wait_stat(client, q, "items", 5)          # 1 and 4 ran out
    assert client.qstats(q)["redelivered_items"] == 0
    got = client.get_items("%s/n=10" % q, cmd="gets")
    assert [(i.data, i.cas) for i in got] == \
        [(b"m0", 1), (b"m2", 3), (b"m3", 4), (b"m4", 5), (b"m5", 6)]
    st = client.qstats(q)
    assert st["redelivered_items"] == 3 and st["leased_items"] == 0


def test_given_back_in_id_order_whatever_the_mix(client, connect):
    """Items given back every way, in every order, into a head that
    already holds given-back items on both sides of them (and room in
    front, taken from): the head stays in id order, with every item
    exactly once."""
    q = qname()
    n = 600
    _store_numbered(client, q, n)
    opener = connect()
    got = []
    while len(got) < 400:
        got += opener.get_items("%s/open/n=100" % q)
    opener.close()                  # 1..400 given back together
    wait_for(lambda: client.qstats(q).get("open_items") == 0,
             what="open items back")
    held = [i.cas for i in _lease(client, q, LONG, n=50)]
    assert held == list(range(1, 51))
    # some back out of order, one at a time: into the room in front
    for i in [7, 3, 49, 1, 25, 26, 50]:
        assert client.cmd("touch %s/%d 0" % (q, i)) == "TOUCHED"
    # the rest together, as a list would: behind the lowest given back
    for i in held:
        if i not in (7, 3, 49, 1, 25, 26, 50):
            assert client.cmd("touch %s/%d 0 noreply\r\nversion"
                              % (q, i)).startswith("VERSION")
    # ids past the given-back ones (the log's), leased and run out,
    # and an /abort of ids in the middle
    late = [i.cas for i in client.get_items("%s/n=400/lease=%d"
                                            % (q, SHORT))]
    assert late == list(range(1, 401))
    tail = [i.cas for i in _lease(client, q, SHORT, n=100)]
    assert tail == list(range(401, 501))
    mid = [i.cas for i in client.get_items("%s/open/n=10" % q,
                                           cmd="gets")]
    assert mid == list(range(501, 511))
    assert client.get_items(q + "/abort") == []
    _wait_stat(client, q, "leased_items", 0)
    assert _ids_left(client, q) == list(range(1, n + 1))


# 6. dead letters, through every way back

def _give_back(path, s, c, q):
    """Delivers q's head item once by `path` and makes it go back."""
    if path == "expiry":
        (it,) = _lease(c, q, SHORT)
        wait_for(lambda: c.qstats(q).get("leased_items") == 0,
                 what="lease of %s ran out" % q)
    elif path == "touch0":
        (it,) = _lease(c, q, LONG)
        assert c.cmd("touch %s/%d 0" % (q, it.cas)) == "TOUCHED"
    elif path == "abort":
        assert c.get(q + "/open") is not None
        assert c.get_items(q + "/abort") == []
    elif path == "close":
        o = s.connect()
        assert o.get(q + "/open") is not None
        o.close()
        wait_for(lambda: c.qstats(q).get("open_items") == 0,
                 what="open item of %s back" % q)
    else:
        raise AssertionError(path)


@pytest.mark.parametrize("path", ["expiry", "touch0", "abort", "close"])
def test_dead_letter_on_every_way_back(memqd_factory, path):
    s = memqd_factory(config=DLQ_CONFIG)
    c = s.connect()
    q = qname("dl")
    c.store(q, b"poison \x00\r\n", flags=0xfeedbeef)
    c.store(q, b"fine", flags=3)
    _give_back(path, s, c, q)               # delivered once: back
    st = c.qstats(q)
    assert st["items"] == 2 and st["dead_lettered_items"] == 0
    _give_back(path, s, c, q)               # twice: dead letter
    st = c.qstats(q)
    assert st["items"] == 1 and st["dead_lettered_items"] == 1
    assert st["leased_items"] == 0 and st["open_items"] == 0
    dead = c.get(q + ".dlq")
    assert (dead.flags, dead.data) == (0xfeedbeef, b"poison \x00\r\n")
    assert c.get(q + ".dlq") is None
    assert c.getdata(q) == b"fine"


def test_dead_letter_named_queue_and_durable(memqd_factory):
    s = memqd_factory(config=DLQ_CONFIG)
    c = s.connect()
    q = qname("named")
    c.store(q, b"once", flags=9)
    (it,) = _lease(c, q, LONG)
    assert c.cmd("touch %s/%d 0" % (q, it.cas)) == "TOUCHED"
    assert c.qstats(q)["dead_lettered_items"] == 1
    assert c.qstats("graveyard")["items"] == 1
    # journaled like a set: once a later STORED is out (its fsync covers
    # every record before it), a crash keeps it
    c.store(qname(), b"sync point")
    s.kill()
    s.start()
    c = s.connect()
    dead = c.get("graveyard")
    assert (dead.flags, dead.data) == (9, b"once")


def test_no_dead_letters_without_max_deliveries(client):
    q = qname()
    client.store(q, b"x")
    for _ in range(5):
        (it,) = _lease(client, q, LONG)
        assert client.cmd("touch %s/%d 0" % (q, it.cas)) == "TOUCHED"
    st = client.qstats(q)
    assert st["items"] == 1 and st["dead_lettered_items"] == 0
    assert st["redelivered_items"] == 4
    assert client.qstats(q + ".dlq") == {}


# 7. restarts and crashes (--sync always, the default)

def test_clean_restart(memqd_factory):
    s = memqd_factory(config=DLQ_CONFIG)
    c = s.connect()
    q = qname("dl")
    _fill(c, q, 5)
    got = _lease(c, q, LONG, n=3)
    assert [i.cas for i in got] == [1, 2, 3]
    assert c.cmd("delete %s/1" % q) == "DELETED"
    c.close()
    s.restart()
    c = s.connect()
    st = c.qstats(q)
    # acknowledged: gone; leased, unacknowledged: waiting again
    assert st["items"] == 4 and st["leased_items"] == 0
    got = c.get_items("%s/n=10/lease=%d" % (q, SHORT))
    assert [i.cas for i in got] == [2, 3, 4, 5]
    # counts survived: 2 and 3 were delivered twice now (max 2), 4 and 5
    # once
    wait_for(lambda: c.qstats(q).get("leased_items") == 0,
             what="leases ran out")
    st = c.qstats(q)
    assert st["dead_lettered_items"] == 2 and st["items"] == 2
    assert [i.data for i in c.drain(q + ".dlq")] == [b"m1", b"m2"]
    c.close()
    s.restart()
    c = s.connect()
    assert [i.data for i in c.drain(q)] == [b"m3", b"m4"]


@pytest.mark.parametrize("sync", ["interval=100", "none"])
def test_clean_restart_without_journal(memqd_factory, sync):
    """--sync interval and none keep no journal: the position file alone
    carries acknowledgements, leases and counts over a clean restart."""
    s = memqd_factory(args=["--sync", sync], config=DLQ_CONFIG)
    c = s.connect()
    q = qname("dl")
    _fill(c, q, 4)
    got = _lease(c, q, LONG, n=3)
    assert c.cmd("delete %s/%d" % (q, got[0].cas)) == "DELETED"
    c.close()
    s.restart()
    c = s.connect()
    st = c.qstats(q)
    assert st["items"] == 3 and st["leased_items"] == 0
    got = _lease(c, q, LONG, n=3)
    assert [i.cas for i in got] == [2, 3, 4]
    for i in got:
        assert c.cmd("touch %s/%d 0" % (q, i.cas)) == "TOUCHED"
    # 2 and 3 delivered twice (once before the restart): dead letters
    st = c.qstats(q)
    assert st["dead_lettered_items"] == 2 and st["items"] == 1
    assert [i.data for i in c.drain(q + ".dlq")] == [b"m1", b"m2"]


def _position_counts(s, q):
    """{id: delivery count} of q's position file (version 3), or {}."""
    try:
        raw = (s.qdir(q) / "position").read_bytes()
    except FileNotFoundError:
        return {}
    if raw[:8] != b"MQPOS\0\0\3":
        return {}
    n = struct.unpack_from("<Q", raw, 16)[0]
    ids = struct.unpack_from("<%dQ" % n, raw, 24)
    return dict(zip(ids, struct.unpack_from("<%dI" % n, raw, 24 + 8 * n)))


@pytest.mark.parametrize("how", ["restart", "kill", "open"])
def test_restart_never_delivers_past_max_deliveries(memqd_factory, how):
    """An item delivered max_deliveries times whose lease (or /open) a
    restart or a crash ends goes back like any other way back: to the
    dead-letter queue, never to a consumer a time more.  So does one
    whose count a lower max_deliveries, read at the restart, reaches."""
    s = memqd_factory(config=DLQ_CONFIG)
    c = s.connect()
    q = qname("dl")
    c.store(q, b"poison", flags=5)
    c.store(q, b"fine")
    if how == "open":
        o = s.connect()
        assert o.get(q + "/open").data == b"poison"
        assert o.get_items(q + "/abort") == []
        assert o.get(q + "/open").data == b"poison"
    else:
        (it,) = _lease(c, q, LONG)
        assert c.cmd("touch %s/%d 0" % (q, it.cas)) == "TOUCHED"
        (it,) = _lease(c, q, LONG)          # the second delivery
    assert c.qstats(q)["dead_lettered_items"] == 0
    if how != "restart":
        # (a clean stop ends a connection's /open items itself)
        wait_for(lambda: _position_counts(s, q) == {1: 2},
                 what="count 2 in the position file")
        c = _killed_and_back(s)
    else:
        c.close()
        s.restart()
        c = s.connect()
    assert c.qstats(q)["items"] == 2
    got = [(i.data, i.cas) for i in _lease(c, q, LONG, n=10)]
    assert got == [(b"fine", 2)], "delivered past max_deliveries"
    st = c.qstats(q)
    assert st["dead_lettered_items"] == 1 and st["items"] == 0
    dead = c.get(q + ".dlq")
    assert (dead.flags, dead.data) == (5, b"poison")
    # a lower limit after a restart: a count that reaches it is a dead
    # letter at its next delivery
    assert c.cmd("touch %s/2 0" % q) == "TOUCHED"
    c.close()
    s.write_config(DLQ_CONFIG.replace("max_deliveries = 2",
                                      "max_deliveries = 1"))
    s.restart()
    c = s.connect()
    assert c.get(q) is None
    assert c.qstats(q)["dead_lettered_items"] == 1
    assert c.getdata(q + ".dlq") == b"fine"


@pytest.mark.parametrize("how", ["delete", "list", "ack"])
def test_deleted_is_durable_across_kill(memqd_factory, how):
    """DELETED (DELETED <n> to a list, and the reply of a get with /ack=)
    waits for the fsync of
    the journal records: a kill -9 right after it does not bring the items
    back.  More than 4096 items are owed, so the position file alone
    cannot hold the acknowledgements."""
    s, c, q, ids = _leased_node(memqd_factory, 5000)
    n = len(ids)
    assert ids == list(range(1, n + 1))
    acked = ids[::2]
    if how == "delete":
        body = b"".join(b"delete %s/%d noreply\r\n" % (q.encode(), i)
                        for i in acked[:-1])
        body += b"delete %s/%d\r\n" % (q.encode(), acked[-1])
        assert pipeline(c, body, len(b"DELETED\r\n")) == b"DELETED\r\n"
    elif how == "list":
        for k in range(0, len(acked), 300):
            ack = ",".join(str(i) for i in acked[k:k + 300])
            assert c.cmd("delete %s/%s" % (q, ack)) == \
                "DELETED %d" % len(acked[k:k + 300])
    else:
        for k in range(0, len(acked), 300):
            ack = ",".join(str(i) for i in acked[k:k + 300])
            assert c.get_items("%s/ack=%s" % (q, ack)) == []
    c = _killed_and_back(s)
    got = c.drain(q, timeout=30)
    assert [int(i.data) + 1 for i in got] == ids[1::2]


def test_ack_lists_survive_kill_mixed(memqd_factory):
    """Lists with repeated, unknown and already acknowledged ids, /ack=
    lists and single deletes, then kill -9: no acknowledged id comes
    back and every unacknowledged one does, once (a list is one journal
    record, a single delete another kind: recovery reads both)."""
    s = memqd_factory()
    c = s.connect(timeout=30)
    q = qname()
    n = 600
    _store_numbered(c, q, n)
    ids = [i.cas for i in _lease(c, q, LONG, n=n)]
    assert ids == list(range(1, n + 1))
    acked = set()
    # a list naming some twice, one never leased and one past the end
    first = ids[0:90] + ids[10:20] + [n + 50]
    assert c.cmd("delete %s/%s" % (q, ",".join(map(str, first)))) == \
        "DELETED 90"
    acked |= set(ids[0:90])
    # acknowledged already, and new ones: only the new count
    again = ids[80:90] + ids[100:197:3]
    assert c.cmd("delete %s/%s" % (q, ",".join(map(str, again)))) == \
        "DELETED %d" % len(ids[100:197:3])
    acked |= set(ids[100:197:3])
    for i in ids[300:310]:
        assert c.cmd("delete %s/%d" % (q, i)) == "DELETED"
    acked |= set(ids[300:310])
    ack = ",".join(str(i) for i in ids[400:600:2])
    assert c.get_items("%s/ack=%s" % (q, ack)) == []
    acked |= set(ids[400:600:2])
    assert c.qstats(q)["leased_items"] == n - len(acked)
    c = _killed_and_back(s)
    got = _ids_left(c, q)
    assert got == [i for i in ids if i not in acked]


def _ack_records(data_dir, q):
    """(path, offset, kind, ids) of q's JACK (4) and JACKS (5) records in
    the journal files, in file order."""
    out = []
    for path in sorted((data_dir / ".journal").glob("*.jnl")):
        raw = path.read_bytes()
        mark = file_mark(raw)
        off = SEG_HDR
        while raw[off:off + 4] == b"MQR2":
            _, hcrc, ln, _, kind, _, seq = struct.unpack_from(
                "<4sIIIIIQ", raw, off)
            if header_crc(raw[off:off + REC_HDR], mark) != hcrc:
                break
            body = raw[off + REC_HDR:off + REC_HDR + ln]
            name = body[1:1 + body[0]].decode()
            rest = body[1 + body[0]:]
            if name == q and kind == 4:
                out.append((path, off, kind, [seq]))
            elif name == q and kind == 5:
                out.append((path, off, kind, list(
                    struct.unpack("<%dQ" % (len(rest) // 8), rest))))
            off += REC_HDR + ln
    return out


def test_ack_list_is_one_record_and_its_damage_costs_it_alone(
        memqd_factory):
    """Under --sync always a delete list is one JACKS journal record (its
    leased ids, 8 bytes each), a single delete one JACK.  A byte of the
    list's ids flipped before the restart after a kill -9: the list's
    items come back (that record is lost, at least once), the single
    delete's does not, nor does a later list's.  More than 4096 items are
    owed, so the position file does not hold the acknowledgements."""
    s, c, q, ids = _leased_node(memqd_factory, 5000)
    n = len(ids)
    first, later = ids[:90], ids[200:290]
    # an id never leased is not in the record
    assert c.cmd("delete %s/%s,%d" % (q, ",".join(map(str, first)),
                                      n + 7)) == "DELETED 90"
    assert c.cmd("delete %s/%d" % (q, ids[100])) == "DELETED"
    assert c.cmd("delete %s/%s" % (q, ",".join(map(str, later)))) == \
        "DELETED 90"
    s.kill()
    recs = _ack_records(s.data_dir, q)
    assert [(k, i) for _, _, k, i in recs] == \
        [(5, first), (4, [ids[100]]), (5, later)]
    path, off, _, _ = recs[0]
    raw = bytearray(path.read_bytes())
    raw[off + REC_HDR + 1 + len(q) + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    s.start()
    c = s.connect(timeout=30)
    got = _ids_left(c, q)
    gone = set(later) | {ids[100]}
    assert got == [i for i in ids if i not in gone]


def test_ack_lists_at_the_limit_survive_kill(memqd_factory):
    """A list of MQ_ACK_IDS_MAX (1000) ids, to delete and to /ack=, is
    taken whole (one journal record); one more id is a clear error that
    acknowledges nothing.  After kill -9 exactly the acknowledged ids
    stay gone."""
    s = memqd_factory()
    c = s.connect(timeout=30)
    q = qname()
    _store_numbered(c, q, 20)
    ids = [i.cas for i in _lease(c, q, LONG, n=20)]
    assert ids == list(range(1, 21))
    over = [(k % 9) + 1 for k in range(1001)]
    r = c.cmd("delete %s/%s" % (q, ",".join(map(str, over))))
    assert r.startswith("CLIENT_ERROR"), r
    r = c.cmd("get %s/ack=%s" % (q, ",".join(map(str, over))))
    assert r.startswith("CLIENT_ERROR"), r
    assert c.qstats(q)["leased_items"] == 20
    full = [(k % 9) + 1 for k in range(1000)]
    assert c.cmd("delete %s/%s" % (q, ",".join(map(str, full)))) == \
        "DELETED 9"
    full = [(k % 9) + 1 for k in range(999)] + [10]
    assert c.get_items("%s/ack=%s" % (q, ",".join(map(str, full)))) == []
    assert c.qstats(q)["leased_items"] == 10
    c = _killed_and_back(s)
    got = _ids_left(c, q)
    assert got == ids[10:]


def test_ack_lists_of_two_queues_interleaved_survive_kill(memqd_factory):
    """Lists of two queues (names of different lengths, the same ids)
    alternate: after kill -9 each queue's acknowledgements apply to it
    alone."""
    s = memqd_factory()
    c = s.connect(timeout=30)
    qa, qb = qname() + "a", qname() + "bbbbbbbb"
    _store_numbered(c, qa, 300)
    _store_numbered(c, qb, 300)
    ia = [i.cas for i in _lease(c, qa, LONG, n=300)]
    ib = [i.cas for i in _lease(c, qb, LONG, n=300)]
    assert ia == ib
    for k in range(0, 300, 60):
        assert c.cmd("delete %s/%s" % (qa, ",".join(
            map(str, ia[k:k + 30])))) == "DELETED 30"
        assert c.cmd("delete %s/%s" % (qb, ",".join(
            map(str, ib[k + 30:k + 60])))) == "DELETED 30"
    c = _killed_and_back(s)
    ga = _ids_left(c, qa)
    gb = _ids_left(c, qb)
    assert ga == [i for i in ia if (i - 1) % 60 >= 30]
    assert gb == [i for i in ib if (i - 1) % 60 < 30]


def test_ack_list_ids_at_their_bounds(memqd_factory):
    """Ids past 2^64-1, 21 digits, empty entries, a trailing comma, signs:
    a clear error that acknowledges nothing; 2^64-1 and leading zeros
    (any number of them) are ids."""
    s = memqd_factory()
    c = s.connect(timeout=30)
    q = qname()
    _store_numbered(c, q, 10)
    ids = [i.cas for i in _lease(c, q, LONG, n=10)]
    assert ids == list(range(1, 11))
    for bad in ["18446744073709551616,1", "99999999999999999999,1",
                "1,,2", "1,2,", ",1", "1, 2", "1,-2", "1,+2",
                "184467440737095516150,1", "1,2x"]:
        r = c.cmd("delete %s/%s" % (q, bad))
        assert r.startswith("CLIENT_ERROR"), (bad, r)
        r = c.cmd("get %s/ack=%s" % (q, bad))
        assert r.startswith("CLIENT_ERROR"), (bad, r)
    assert c.qstats(q)["leased_items"] == 10
    assert c.cmd("delete %s/18446744073709551615,0" % q) == "DELETED 0"
    assert c.cmd("delete %s/%s1,%s2" % (q, "0" * 40, "0" * 19)) == \
        "DELETED 2"
    assert c.cmd("delete %s/00018446744073709551615,3" % q) == "DELETED 1"
    assert c.get_items("%s/ack=0000000000000000000004,5,5" % q) == []
    assert c.qstats(q)["leased_items"] == 5


def test_ack_lists_survive_two_kills(memqd_factory):
    """The acknowledgements recovery read from the journal (more than
    the position file can hold alone) are kept once the journal files
    are gone: a second kill -9 after the restart does not bring them
    back."""
    s, c, q, ids = _leased_node(memqd_factory, 5000)
    acked = ids[::2]
    for k in range(0, len(acked), 300):
        ack = ",".join(str(i) for i in acked[k:k + 300])
        assert c.cmd("delete %s/%s" % (q, ack)) == \
            "DELETED %d" % len(acked[k:k + 300])
    c = _killed_and_back(s)
    assert c.qstats(q)["items"] == 2500
    c = _killed_and_back(s)
    got = c.drain(q, timeout=30)
    assert [int(i.data) + 1 for i in got] == ids[1::2]


def test_crash_leased_come_back_counts_never_higher(memqd_factory):
    s = memqd_factory(config=DLQ_CONFIG)
    c = s.connect()
    q = qname("three")
    _fill(c, q, 3)
    got = _lease(c, q, LONG, n=2)
    assert c.cmd("delete %s/%d" % (q, got[0].cas)) == "DELETED"
    c.store(q, b"sync point")           # a commit after the lease
    s.kill()
    s.start()
    c = s.connect()
    # the acknowledged one is gone, the leased one waits again
    assert [i.data for i in c.get_items("%s/n=10/peek" % q)][:1] == [b"m1"]
    st = c.qstats(q)
    assert st["items"] == 3 and st["leased_items"] == 0
    # m1 was delivered once before the crash: one delivery more cannot
    # reach max_deliveries = 3 (a count may be lower, never higher)
    (it,) = _lease(c, q, LONG)
    assert it.data == b"m1"
    assert c.cmd("touch %s/%d 0" % (q, it.cas)) == "TOUCHED"
    st = c.qstats(q)
    assert st["dead_lettered_items"] == 0 and st["items"] == 3


# 8. stats are covered above; 9. bad input

BAD = [
    ("delete {q}/abc", "CLIENT_ERROR bad id"),
    ("delete {q}/", "CLIENT_ERROR bad id"),
    ("delete {q}/-1", "CLIENT_ERROR bad id"),
    ("delete {q}/1x", "CLIENT_ERROR bad id"),
    ("delete {q}/18446744073709551616", "CLIENT_ERROR bad id"),
    ("delete {q}/1/2", "CLIENT_ERROR bad id"),
    ("delete b@d/1", "CLIENT_ERROR bad queue name"),
    ("delete {q}/1 1", "CLIENT_ERROR bad command line format"),
    ("touch {q}/1", "CLIENT_ERROR bad command line format"),
    ("touch {q}/1 -5", "CLIENT_ERROR bad command line format"),
    ("touch {q}/1 abc", "CLIENT_ERROR bad command line format"),
    ("touch {q}/1 99999999999999999999", "CLIENT_ERROR bad command line "
     "format"),
    ("touch {q}/1 43201", "CLIENT_ERROR bad lease time"),
    ("touch {q}/1 5 later", "CLIENT_ERROR bad command line format"),
    ("touch {q} 5", "CLIENT_ERROR bad id"),
    ("touch {q}/x 5", "CLIENT_ERROR bad id"),
    ("touch", "CLIENT_ERROR bad command line format"),
    ("get {q}/lease=99999999999999999999999", "CLIENT_ERROR bad option"),
    ("get {q}/lease=100/open", "CLIENT_ERROR bad option"),
    ("get {q}/peek/lease=100", "CLIENT_ERROR bad option"),
    ("get {q}/ack=1,,2", "CLIENT_ERROR bad option"),
    ("get {q}/ack=,1", "CLIENT_ERROR bad option"),
    ("get {q}/ack=1,", "CLIENT_ERROR bad option"),
    ("get {q}/ack=x", "CLIENT_ERROR bad option"),
    ("get {q}/ack=-1", "CLIENT_ERROR bad option"),
    ("get {q}/ack=", "CLIENT_ERROR bad option"),
    ("get {q}/ack=1/ack=2", "CLIENT_ERROR bad option"),
    ("get {q}/ack=18446744073709551616", "CLIENT_ERROR bad option"),
    ("get {q}/lease=100 {q}/ack=1,a", "CLIENT_ERROR bad option"),
    ("delete {q}/1,2,x", "CLIENT_ERROR bad id"),
    ("delete {q}/1,,2", "CLIENT_ERROR bad id"),
    ("delete {q}/1,2,", "CLIENT_ERROR bad id"),
    ("delete {q}/,1,2", "CLIENT_ERROR bad id"),
    ("delete {q}/1,18446744073709551616", "CLIENT_ERROR bad id"),
    ("delete {q}/1,2 5", "CLIENT_ERROR bad command line format"),
    ("delete {q}/" + ",".join(["1"] * 500 + ["2"] * 501),
     "CLIENT_ERROR too many ids"),
    ("touch {q}/1,2 5", "CLIENT_ERROR bad id"),
]


def test_bad_input_costs_nothing(client, connect):
    q = qname()
    other = qname()
    _fill(client, q, 3)
    _fill(client, other, 1)
    held = _lease(client, q, LONG, n=2)
    assert [i.cas for i in held] == [1, 2]
    for line, reply in BAD:
        assert client.cmd(line.format(q=q)) == reply, line
    # ids of another queue are not this queue's
    assert client.cmd("delete %s/1" % other) == "NOT_FOUND"
    assert client.cmd("touch %s/2 0" % other) == "NOT_FOUND"
    assert client.get_items("%s/ack=1,2" % other) == []
    # pipelined garbage between good commands: still in sync
    reply = pipeline(client, ("delete %s/zz\r\nversion\r\ntouch %s/1\r\n"
                              "get %s/ack=1,x\r\nversion\r\n"
                              % (q, q, q)).encode(), 1)
    rest = [reply + client.readline()] + [client.readline()
                                          for _ in range(4)]
    assert rest[0] == b"CLIENT_ERROR bad id"
    assert rest[1].startswith(b"VERSION") and rest[4].startswith(b"VERSION")
    # nothing lost, nothing acknowledged, the other client unaffected
    st = client.qstats(q)
    assert st["leased_items"] == 2 and st["items"] == 1
    assert connect().getdata(other) == b"m0"
    for i in held:
        assert client.cmd("delete %s/%d" % (q, i.cas)) == "DELETED"
    assert client.getdata(q) == b"m2"


# scale: 100,000 outstanding leases

def test_100k_leases_acknowledged_by_pipelined_deletes(memqd_factory):
    s = memqd_factory()
    c = s.connect(timeout=60)
    q = qname()
    n = 100000
    lease_ms = int(1500 * SLOW)
    qb = q.encode()
    _send_all(c, b"".join(b"set %s 0 0 5 noreply\r\n%05d\r\n"
                          % (qb, i % 99999) for i in range(n)))
    assert c.qstats(q)["items"] == n
    ids = []
    key = "%s/lease=%d/n=1000" % (q, lease_ms)
    while len(ids) < n:
        got = c.get_items(key, timeout=30)
        assert got
        ids += [i.cas for i in got]
    t_leased = time.monotonic()
    assert sorted(ids) == list(range(1, n + 1))
    st = c.qstats(q)
    assert st["leased_items"] == n and st["items"] == 0
    body = b"".join(b"delete %s/%d noreply\r\n" % (qb, i) for i in ids)
    _send_all(c, body)
    acked_in = time.monotonic() - t_leased
    assert acked_in < lease_ms / 1000.0, \
        "acknowledging took longer than the lease: the test needs longer"
    st = c.qstats(q)
    assert st["leased_items"] == 0 and st["items"] == 0
    # a lease taken now runs out after every one of the 100,000 would
    # have: when it is back, none of them came with it
    c.store(q, b"sentinel")
    (it,) = _lease(c, q, lease_ms)
    wait_for(lambda: c.qstats(q).get("items") == 1,
             timeout=lease_ms / 1000.0 / SLOW + 5, what="sentinel back")
    assert c.getdata(q) == b"sentinel"
    assert c.get(q) is None
    c.close()
    s.restart()
    c = s.connect()
    st = c.qstats(q)
    assert st["items"] == 0 and st["leased_items"] == 0
    assert c.get(q) is None


def test_max_leases_caps_memory_not_the_queue(memqd_factory):
    """Leases cost memory (about 100 bytes each), so --max-leases caps
    how many the node holds: past it a lease answers SERVER_ERROR out of
    resources (never END: the queue is not empty), nothing is taken or
    counted as delivered, other ways to consume go on, and an
    acknowledgement makes room again."""
    s = memqd_factory(args=["--max-leases", "5", "--sync", "none"])
    c = s.connect()
    q, other = qname("cap"), qname("cap2")
    _fill(c, q, 8)
    _fill(c, other, 1)
    got = _lease(c, q, 60000, n=10)
    assert [it.cas for it in got] == [1, 2, 3, 4, 5]
    assert c.cmd("get %s/lease=60000" % q) == \
        "SERVER_ERROR out of resources"
    assert c.cmd("get %s/lease=60000" % other) == \
        "SERVER_ERROR out of resources"
    st = c.qstats(q)
    assert st["items"] == 3 and st["leased_items"] == 5
    assert st["redelivered_items"] == 0
    assert c.getdata(q) == b"m5"            # a plain get still takes
    assert c.cmd("delete %s/2" % q) == "DELETED"
    assert [it.cas for it in _lease(c, q, 60000, n=10)] == [7]
    c.close()
