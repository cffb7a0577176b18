"""Per-queue limits from --config: max_items, max_bytes, max_age, overflow
reject | drop_oldest, prefix sections, SIGHUP reload (DESIGN §1 Storage,
§3 --config)."""

import signal
import time

from memqlib import qname, wait_for

CONFIG = """\
# limits for the test suite
[defaults]
max_items = 6

[queue small]
max_items = 3          # reject is the default overflow

[queue bytes]
max_bytes = 10
overflow = reject

[queue kbytes]
max_bytes = 1k

[queue drop*]
max_items = 3
overflow = drop_oldest

[queue dbytes*]
max_bytes = 10
overflow = drop_oldest

[queue age*]
max_age = 1
max_items = 100

[queue foo*]
max_items = 2

[queue foobar*]
max_items = 4

[queue exact]
max_items = 1

[queue exac*]
max_items = 5
"""


def _fill_until_full(c, q, limit=100):
    n = 0
    while n < limit:
        r = c.set(q, b"x")
        if r == "SERVER_ERROR queue full":
            return n
        assert r == "STORED", r
        n += 1
    return n


def test_max_items_reject(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    for i in range(3):
        c.store("small", b"%d" % i)
    big = b"flush_all\r\n" * 3           # swallowed, never executed
    assert c.set("small", big) == "SERVER_ERROR queue full"
    assert c.cmd("version").startswith("VERSION memqd ")
    assert c.qstats("small")["items"] == 3
    assert c.getdata("small") == b"0"
    c.store("small", b"3")
    assert [i.data for i in c.drain("small")] == [b"1", b"2", b"3"]
    c.close()


def test_max_items_reject_pipelined(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    c.send(b"".join(b"set small 0 0 1\r\n%d\r\n" % i for i in range(5)))
    replies = [c.line() for _ in range(5)]
    assert replies == ["STORED"] * 3 + ["SERVER_ERROR queue full"] * 2
    assert [i.data for i in c.drain("small")] == [b"0", b"1", b"2"]
    c.close()


def test_defaults_section_applies(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = qname("other")
    assert _fill_until_full(c, q) == 6
    c.close()


def test_max_bytes_reject(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    c.store("bytes", b"aaaa")
    c.store("bytes", b"bbbb")
    assert c.set("bytes", b"cccc") == "SERVER_ERROR queue full"
    c.store("bytes", b"dd")                # exactly 10 bytes
    assert c.set("bytes", b"e") == "SERVER_ERROR queue full"
    assert c.qstats("bytes")["bytes"] == 10
    assert [i.data for i in c.drain("bytes")] == [b"aaaa", b"bbbb", b"dd"]
    c.close()


def test_max_bytes_with_suffix(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    c.store("kbytes", b"k" * 1000)
    c.store("kbytes", b"k" * 24)
    assert c.set("kbytes", b"k") == "SERVER_ERROR queue full"
    c.close()


def test_drop_oldest_items(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "drop" + qname()
    for i in range(6):
        assert c.set(q, b"%d" % i) == "STORED"
    st = c.qstats(q)
    assert st["items"] == 3
    assert [i.data for i in c.drain(q)] == [b"3", b"4", b"5"]
    c.close()


def test_drop_oldest_bytes(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "dbytes" + qname()
    for p in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        assert c.set(q, p) == "STORED"
    # 4+4+4 > 10 drops "aaaa"; 4+4+2 = 10 fits
    st = c.qstats(q)
    assert st["bytes"] == 10
    assert [i.data for i in c.drain(q)] == [b"bbbb", b"cccc", b"dd"]
    c.close()


def test_drop_oldest_keeps_sequence(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "drop" + qname()
    for i in range(5):
        c.store(q, b"%d" % i)
    got = c.get_items(q + "/n=10", cmd="gets")
    assert [(i.data, i.cas) for i in got] == [(b"2", 3), (b"3", 4),
                                              (b"4", 5)]
    c.close()


def test_prefix_longest_match_wins(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    assert _fill_until_full(c, "foo" + qname()) == 2
    assert _fill_until_full(c, "foobar" + qname()) == 4
    assert _fill_until_full(c, "foob" + qname()) == 2
    assert _fill_until_full(c, "exact") == 1
    assert _fill_until_full(c, "exact2") == 5
    assert _fill_until_full(c, "fo" + qname()) == 6    # defaults
    c.close()


def test_max_age(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "age" + qname()
    t0 = time.monotonic()
    c.store(q, b"old")
    assert c.get(q + "/peek").data == b"old"
    wait_for(lambda: c.get(q + "/peek") is None, timeout=5, interval=0.05,
             what="item older than max_age to stop being delivered")
    dt = time.monotonic() - t0
    assert dt >= 0.9, "item dropped after %.2fs, max_age is 1s" % dt
    c.store(q, b"new")
    assert c.getdata(q) == b"new"
    assert c.get(q) is None
    c.close()


def test_max_age_not_delivered_to_open_or_n(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "age" + qname()
    c.store(q, b"a")
    c.store(q, b"b")
    wait_for(lambda: c.get(q + "/peek") is None, timeout=5, interval=0.05,
             what="items to age out")
    c.store(q, b"c")
    assert [i.data for i in c.get_items(q + "/open/n=10")] == [b"c"]
    c.get_items(q + "/close")
    c.close()


def test_sighup_reloads_config(memqd_factory):
    s = memqd_factory(config="[queue hup*]\nmax_items = 2\n")
    c = s.connect()
    q = "hup" + qname()
    assert _fill_until_full(c, q) == 2
    s.write_config("[queue hup*]\nmax_items = 5\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: c.set(q, b"x") == "STORED", timeout=5,
             interval=0.02, what="raised max_items to take effect")
    assert _fill_until_full(c, q) == 2                 # 3 + 2 = 5
    # a section added by the reload applies to a new queue
    s.write_config("[queue hup*]\nmax_items = 5\n"
                   "[queue other*]\nmax_items = 1\n")
    s.signal(signal.SIGHUP)
    q2 = "other" + qname()
    wait_for(lambda: c.set(q2, b"y") == "SERVER_ERROR queue full",
             timeout=5, interval=0.02, what="new section after SIGHUP")
    assert c.set(q, b"x") == "SERVER_ERROR queue full"
    assert c.qstats(q)["items"] == 5
    assert s.running()
    c.close()


def test_sighup_changes_overflow(memqd_factory):
    s = memqd_factory(config="[queue ov]\nmax_items = 2\n")
    c = s.connect()
    c.store("ov", b"1")
    c.store("ov", b"2")
    assert c.set("ov", b"3") == "SERVER_ERROR queue full"
    s.write_config("[queue ov]\nmax_items = 2\noverflow = drop_oldest\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: c.set("ov", b"4") == "STORED", timeout=5,
             interval=0.02, what="overflow = drop_oldest after SIGHUP")
    assert [i.data for i in c.drain("ov")] == [b"2", b"4"]
    c.close()


def test_sighup_with_broken_config_keeps_serving(memqd_factory):
    s = memqd_factory(config="[queue keep]\nmax_items = 2\n")
    c = s.connect()
    c.store("keep", b"1")
    c.store("keep", b"2")
    before = len(s.log_text())
    s.write_config("[queue keep\nmax_items = = banana\n\x01garbage\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: len(s.log_text()) > before or not s.running(),
             timeout=5, what="a log line about the broken config")
    assert s.running(), "memqd died on SIGHUP with a broken config"
    assert c.cmd("version").startswith("VERSION memqd ")
    # the old limits still hold
    assert c.set("keep", b"3") == "SERVER_ERROR queue full"
    # and a good config is taken again later
    s.write_config("[queue keep]\nmax_items = 3\n")
    s.signal(signal.SIGHUP)
    wait_for(lambda: c.set("keep", b"3") == "STORED", timeout=5,
             interval=0.02, what="good config after a broken one")
    assert [i.data for i in c.drain("keep")] == [b"1", b"2", b"3"]
    c.close()


def test_limits_survive_restart(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    for i in range(3):
        c.store("small", b"%d" % i)
    c.close()
    s.restart()
    c = s.connect()
    assert c.set("small", b"x") == "SERVER_ERROR queue full"
    assert [i.data for i in c.drain("small")] == [b"0", b"1", b"2"]
    c.close()



def test_dropped_items_stay_dropped_after_restart(memqd_factory):
    s = memqd_factory(config=CONFIG)
    c = s.connect()
    q = "drop" + qname()
    for i in range(6):
        c.store(q, b"%d" % i)
    c.close()
    s.restart()
    c = s.connect()
    assert [i.data for i in c.drain(q)] == [b"3", b"4", b"5"]
    c.close()


def test_dropped_items_stay_dropped_after_kill(memqd_factory):
    s = memqd_factory(config=CONFIG, args=["--sync", "always"])
    c = s.connect()
    q = "drop" + qname()
    for i in range(6):
        c.store(q, b"%d" % i)
    c.close()
    s.kill()
    s.start()
    c = s.connect()
    got = [i.data for i in c.drain(q)]
    # like consumed items, dropped ones may come back after a crash; what
    # is there is in order and ends with the three newest
    assert got == [b"%d" % i for i in range(6 - len(got), 6)], got
    assert len(got) >= 3, got
    c.close()
