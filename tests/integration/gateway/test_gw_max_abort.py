"""max under long poll: an item a waiting node brings when max is already
spoken for goes back with /abort and is delivered later, exactly once
(DESIGN §3: "max is exact: items taken beyond it are given back")."""

import time

from gwutil import (SLOW, Client, Dechunker, ScriptedNode, node_addr, qname,
                    read_headers, total_items)


def test_item_beyond_reserved_max_goes_back(gateway_factory, memqd_factory):
    real = memqd_factory()
    q = qname()

    def script(line, n):
        # 1: the first, non-waiting get: empty
        # 2: the long poll: one item at once
        # 3: the next non-waiting get (it holds the last place max has
        #    left): empty, but only after 2 seconds
        # later: long polls that never end (the stream closes them)
        if line.endswith(b"/close"):
            return 0, b"END\r\n"
        if n == 1:
            return 0, b"END\r\n"
        if n == 2:
            return 0, (b"VALUE " + line.split()[1]
                       + b" 0 6\r\nscript\r\nEND\r\n")
        if n == 3:
            return 2.0, b"END\r\n"
        return None

    fake = ScriptedNode(script)
    try:
        g = gateway_factory([fake.addr, real], loc_extra="memq_batch 1;",
                            timeouts="connect_timeout 1s; read_timeout 5s;")
        s = g.raw_request("/mq?topic=%s&wait=10&max=2" % q)
        s.settimeout(20 * SLOW)
        status, hdrs, rest = read_headers(s)
        assert status == 200
        d = Dechunker()
        d.feed(rest)
        while b"script\n" not in d.data:
            d.feed(s.recv(65536))
        t0 = time.monotonic()
        # the real node is in its long poll, unreserved: what it brings
        # now must wait until the fake node's reserved get is answered
        c = Client(real.addr)
        c.store(q, b"real")
        c.close()
        while not d.done:
            chunk = s.recv(65536)
            if not chunk:
                break
            d.feed(chunk)
        s.close()
        took = time.monotonic() - t0
        assert d.done
        assert d.data.split(b"\n")[:-1] == [b"script", b"real"]
        assert took >= 1.5, "the item beyond max was not held back"
        assert total_items([real], q) == 0
        c = Client(real.addr)
        assert c.qstats(q).get("open_items", 0) == 0
        c.close()
        gets = [l for l in fake.lines if l.startswith(b"get")]
        assert gets[0].endswith(b"/open/n=1"), gets
        assert b"/t=" in gets[1], gets
        assert gets[2].endswith(b"/close/open/n=1"), gets
        st = g.node_status(node_addr(real))
        assert st["msgs_out"] == 1 and st["fails"] == 0
    finally:
        fake.close()
