"""
memqctl (memqctl/memqctl) against real memqd nodes: queues (table, JSON,
per node, summed over two nodes, names that look like stat fields), peek
(binary data escaped, --raw exact, nothing taken), purge (asks, --yes),
redrive (everything moved with its flags, --max, a target that refuses
loses nothing), stats, a cluster read from a real etcd, and the exit
codes: 1 failed / not found, 2 usage, 3 unreachable.
"""

import base64
import json
import os
import subprocess

import pytest

from memqlib import (ROOT, SLOW, Client, free_port, pipeline, qname,
                     wait_for)

MEMQCTL = str(ROOT / "memqctl" / "memqctl")


def run(*args, env=None, stdin=subprocess.DEVNULL):
    e = dict(os.environ)
    e.pop("MEMQ_NODES", None)
    e.update(env or {})
    r = subprocess.run([MEMQCTL] + [str(a) for a in args], env=e,
                       stdin=stdin, capture_output=True, timeout=60 * SLOW)
    return r


def ok(*args, **kw):
    r = run(*args, **kw)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    assert r.stderr == b"", r.stderr
    return r


def js(*args, **kw):
    return json.loads(ok(*args, "--json", **kw).stdout)


def addr(s):
    return "%s:%d" % s.addr


@pytest.fixture
def two(memqd_factory):
    a, b = memqd_factory(), memqd_factory()
    a.c, b.c = Client(a.addr), Client(b.addr)
    yield a, b
    a.c.close()
    b.c.close()


def nodes_arg(*servers):
    return ["--node", ",".join(addr(s) for s in servers)]


def table_rows(text):
    lines = text.decode().splitlines()
    header = lines[0].split()
    return header, {ln.split()[0]: dict(zip(header, ln.split()))
                    for ln in lines[1:]}


def test_queues_summed_per_node_and_json(two):
    a, b = two
    q, q_total = qname("qq"), None
    q_total = q + "_total"          # looks like queue q, field total_items
    for i in range(3):
        a.c.store(q, b"a%d" % i)
    for i in range(2):
        b.c.store(q, b"b%d" % i)
    a.c.store(q_total, b"t")
    assert b.c.get(q + "/open").data == b"b0"     # open, not waiting

    header, rows = table_rows(ok("queues", *nodes_arg(a, b)).stdout)
    assert header[:5] == ["QUEUE", "ITEMS", "BYTES", "AGE", "OPEN"]
    assert rows[q]["ITEMS"] == "4" and rows[q]["OPEN"] == "1"
    assert rows[q]["BYTES"] == "8"
    assert rows[q_total]["ITEMS"] == "1"

    got = js("queues", *nodes_arg(a, b))
    assert got["queues"][q]["items"] == 4
    assert got["queues"][q]["open_items"] == 1
    assert got["queues"][q]["nodes"] == 2
    assert got["queues"][q_total]["items"] == 1
    assert got["queues"][q_total]["nodes"] == 1
    assert sorted(got["reached"]) == sorted([addr(a), addr(b)])
    assert got["unreachable"] == []
    # the oldest head of the two nodes
    ages = [a.c.qstats(q)["age_ms"], b.c.qstats(q)["age_ms"]]
    assert got["queues"][q]["age_ms"] >= max(ages) - 1000

    per = js("queues", "--per-node", *nodes_arg(a, b))["nodes"]
    assert per[addr(a)][q]["items"] == 3
    assert per[addr(b)][q]["items"] == 1 and per[addr(b)][q]["open_items"] == 1
    assert q_total not in per[addr(b)]

    # only the queues asked for; the default target from MEMQ_NODES
    got = js("queues", q_total, env={"MEMQ_NODES": addr(a)})
    assert list(got["queues"]) == [q_total]
    r = run("queues", "nosuch_" + q, *nodes_arg(a, b))
    assert r.returncode == 1 and b"no such queue" in r.stderr


def test_peek_binary_safely(two):
    a, b = two
    q = qname()
    data = b"\x00\x1b[31mred\xff\xfe\nline\\end\xe2\x80\xae\xc3\xa9"
    a.c.store(q, data, flags=7)
    before = a.c.qstats(q)

    r = ok("peek", q, *nodes_arg(a, b))
    out = r.stdout.decode("utf-8")
    assert "\x1b" not in out and "\x00" not in out and "\u202e" not in out
    assert "flags 7" in out and "%d bytes" % len(data) in out
    assert "\\x00\\x1b[31mred\\xff\\xfe\\nline\\\\end\\u202e\u00e9" in out

    assert ok("peek", q, "--raw", *nodes_arg(a)).stdout == data
    got = js("peek", q, *nodes_arg(a, b))
    assert len(got["items"]) == 1
    it = got["items"][0]
    assert it["node"] == addr(a) and it["flags"] == 7
    assert base64.b64decode(it["data_b64"]) == data

    # nothing was taken
    after = a.c.qstats(q)
    for k in ("items", "bytes", "open_items", "total_items"):
        assert after[k] == before[k], k
    assert a.c.getdata(q) == data
    r = run("peek", q, *nodes_arg(a, b))
    assert r.returncode == 1 and b"empty" in r.stderr


def test_purge(two):
    a, b = two
    q, other = qname(), qname()
    for s in (a, b):
        for i in range(4):
            s.c.store(q, b"p%d" % i)
        s.c.store(other, b"keep")
    # not a terminal and no --yes: refused, nothing dropped
    r = run("purge", q, *nodes_arg(a, b))
    assert r.returncode == 2 and b"--yes" in r.stderr
    assert a.c.qstats(q)["items"] == 4
    r = ok("purge", q, "--yes", *nodes_arg(a, b))
    assert b"8 item(s)" in r.stdout
    for s in (a, b):
        assert s.c.qstats(q)["items"] == 0
        assert s.c.qstats(other)["items"] == 1
    r = run("purge", "nosuch_" + q, "--yes", *nodes_arg(a, b))
    assert r.returncode == 1 and b"no such queue" in r.stderr


def test_redrive_moves_everything(two):
    a, b = two
    src, dst = qname("src") + ".dlq", qname("dst")
    sent = {a: [b"a%03d" % i for i in range(150)],
            b: [b"b%03d" % i for i in range(60)]}
    for s, items in sent.items():
        for i, d in enumerate(items):
            s.c.store(src, d, flags=i % 3)
    b.c.store(dst, b"already")

    got = js("redrive", src, dst, *nodes_arg(a, b))
    assert got["moved"] == 210
    assert got["nodes"] == {addr(a): 150, addr(b): 60}
    for s, items in sent.items():
        st = s.c.qstats(src)
        assert st["items"] == 0 and st["open_items"] == 0
        moved = s.c.drain(dst)
        expect = ([b"already"] if s is b else []) + items
        assert [it.data for it in moved] == expect
        assert [it.flags for it in moved[-len(items):]] == \
            [i % 3 for i in range(len(items))]

    # --max: exactly that many, in order
    for i in range(10):
        a.c.store(src, b"m%d" % i)
    r = ok("redrive", src, dst, "--max", "4", *nodes_arg(a, b))
    assert b"moved 4 item(s)" in r.stdout
    assert [it.data for it in a.c.drain(dst)] == [b"m%d" % i
                                                  for i in range(4)]
    assert a.c.qstats(src)["items"] == 6
    assert a.c.qstats(src)["open_items"] == 0


def test_redrive_into_a_full_queue_loses_nothing(memqd_factory):
    s = memqd_factory(config="[queue full*]\nmax_items = 150\n")
    c = Client(s.addr)
    src, dst = qname("rsrc"), "full" + qname()
    for i in range(30):
        c.store(dst, b"old%d" % i)
    for i in range(250):
        c.store(src, b"n%03d" % i)
    r = run("redrive", src, dst, "--node", addr(s))
    assert r.returncode == 1
    assert b"queue full" in r.stderr and b"both queues" in r.stderr
    wait_for(lambda: c.qstats(src)["open_items"] == 0, timeout=5,
             what="open batch given back")
    left = {it.data for it in c.drain(src)}
    there = {it.data for it in c.drain(dst)}
    every = {b"n%03d" % i for i in range(250)}
    assert every <= left | there, "items lost"
    assert len(there) == 150
    c.close()


def test_stats(two):
    a, b = two
    got = js("stats", *nodes_arg(a, b))["nodes"]
    assert got[addr(a)]["pid"] == a.proc.pid
    assert got[addr(b)]["pid"] == b.proc.pid
    assert not any(k.startswith("queue_") for k in got[addr(a)])
    out = ok("stats", *nodes_arg(a, b)).stdout.decode()
    assert addr(a) in out and addr(b) in out and "curr_connections" in out


def test_unreachable_exit_3(two):
    a, _ = two
    dead = "127.0.0.1:%d" % free_port()
    r = run("queues", "--node", dead)
    assert r.returncode == 3 and dead.encode() in r.stderr
    assert r.stdout == b""
    q = qname()
    a.c.store(q, b"x")
    # what the reachable node answered is still printed
    r = run("queues", "--json", "--node", addr(a), "--node", dead)
    assert r.returncode == 3
    got = json.loads(r.stdout)
    assert got["queues"][q]["items"] == 1
    assert len(got["unreachable"]) == 1 and dead in got["unreachable"][0]
    for cmd in (["stats"], ["peek", q], ["purge", q, "--yes"],
                ["redrive", q, q + "x"]):
        assert run(*cmd, "--node", dead).returncode == 3, cmd
    assert run("queues", "--etcd", "http://" + dead, "--cluster",
               "c").returncode == 3


@pytest.mark.parametrize("args", [
    [], ["nosuchcommand"], ["queues", "--bogus"], ["peek"],
    ["peek", "../etc"], ["peek", "a b"], ["redrive", "q"],
    ["redrive", "q", "q"], ["queues", "--node", "nocolon"],
    ["queues", "--node", "h:99999"], ["queues", "--etcd", "http://x"],
    ["queues", "--cluster", "c"], ["queues", "--timeout", "0"],
    ["queues", "--timeout", "nan"], ["queues", "--timeout", "inf"],
    ["queues", "--timeout", "-1"], ["queues", "--timeout", "1e300"],
    ["redrive", "a", "b", "--max", "0"],
    ["queues", "--etcd", "ftp://x", "--cluster", "c"]])
def test_usage_exit_2(args):
    r = run(*args, "--node", "127.0.0.1:1") if args and \
        "--node" not in args and "--etcd" not in args else run(*args)
    assert r.returncode == 2, (args, r.stderr)
    assert r.stderr and r.stdout == b""


def test_help_per_subcommand():
    for cmd in ("queues", "peek", "purge", "redrive", "stats"):
        r = ok(cmd, "--help")
        assert r.stdout.startswith(b"usage: memqctl " + cmd.encode())
        assert b"exit codes" in r.stdout
    assert b"exit codes" in ok("--help").stdout


def test_cluster_from_etcd(memqd_factory, tmp_path):
    from test_etcd import ETCD, Etcd
    if ETCD is None:
        pytest.skip("etcd binary not found")
    e = Etcd(tmp_path / "etcd")
    e.start()
    try:
        cluster = qname("cl")
        servers = []
        for _ in range(2):
            port = free_port()
            s = memqd_factory(args=["--etcd", e.url, "--advertise",
                                    "127.0.0.1:%d" % port, "--cluster",
                                    cluster], wait=False)
            s.start(port=port)
            servers.append(s)
        wait_for(lambda: len(e.nodes("/memq/%s/nodes/" % cluster)) == 2,
                 timeout=10, what="both nodes registered")
        q = qname()
        for i, s in enumerate(servers):
            c = Client(s.addr)
            for j in range(i + 2):
                c.store(q, b"e%d" % j)
            c.close()
        got = js("queues", "--etcd", "http://127.0.0.1:1," + e.url,
                 "--cluster", cluster)
        assert got["queues"][q]["items"] == 5
        assert sorted(got["reached"]) == sorted(addr(s) for s in servers)
        r = run("queues", "--etcd", e.url, "--cluster", "none" + cluster)
        assert r.returncode == 1 and b"no node registered" in r.stderr
    finally:
        e.stop()


def test_redrive_killed_midway_loses_nothing(memqd_factory):
    """memqctl killed in the middle of a redrive: its open batch goes back
    to the source when its connection ends; every item is in one queue or
    the other, at most that batch in both."""
    import signal
    s = memqd_factory(args=["--sync", "always"])
    c = Client(s.addr)
    src, dst = qname("ksrc"), qname("kdst")
    n = 20000
    data = b"".join(b"set %s 0 0 6\r\nk%05d\r\n" % (src.encode(), i)
                    for i in range(n))
    assert pipeline(c, data, 8 * n) == b"STORED\r\n" * n
    p = subprocess.Popen([MEMQCTL, "redrive", src, dst, "--node", addr(s)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: c.qstats(dst).get("items", 0) > 0, timeout=20,
             interval=0.002, what="redrive under way")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL, "redrive ended before the kill"
    wait_for(lambda: c.qstats(src)["open_items"] == 0, timeout=5,
             what="the open batch given back")
    left = [it.data for it in c.drain(src)]
    there = [it.data for it in c.drain(dst)]
    every = {b"k%05d" % i for i in range(n)}
    assert set(left) | set(there) == every, "items lost"
    assert len(set(left) & set(there)) <= 100
    assert len(there) < n
    c.close()


def _load_memqctl():
    import importlib.util
    from importlib.machinery import SourceFileLoader
    loader = SourceFileLoader("memqctl_mod", MEMQCTL)
    mod = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("memqctl_mod", loader))
    loader.exec_module(mod)
    return mod


def test_queue_stats_fields_with_leases():
    """Per-queue lines as a node with leases prints them (fields appended
    to each block): names holding '_' and field-like suffixes are told
    apart, and the lease columns show only when reported."""
    m = _load_memqctl()
    stats = [("pid", "1")]
    for q, items in (("a", 1), ("a_total", 2), ("a_items", 3)):
        stats += [("queue_%s_items" % q, str(items)),
                  ("queue_%s_bytes" % q, "10"),
                  ("queue_%s_total_items" % q, "7"),
                  ("queue_%s_open_items" % q, "0"),
                  ("queue_%s_age_ms" % q, "5"),
                  ("queue_%s_leased_items" % q, str(items * 10)),
                  ("queue_%s_dead_lettered_items" % q, "4")]
    qs = m.queue_stats(stats)
    assert qs["a"]["items"] == 1 and qs["a_total"]["items"] == 2
    assert qs["a_items"]["items"] == 3 and qs["a"]["total_items"] == 7
    assert qs["a_total"]["leased_items"] == 20
    assert qs["a_items"]["dead_lettered_items"] == 4
    assert set(qs) == {"a", "a_total", "a_items"}
    assert m.escape(b"ok \\ \x07\xc3") == "ok \\\\ \\x07\\xc3"


def test_etcd_that_drips_its_answer_times_out():
    """An etcd that sends its answer a byte at a time, each byte well
    within --timeout: memqctl must give up after --timeout for the whole
    answer (exit 3), not wait for as long as etcd goes on."""
    import time
    from test_etcd_peers import FakeEtcd
    state = {"sent": 0, "done": False}
    kvs = [{"key": base64.b64encode(b"/memq/c/nodes/127.0.0.1:%d"
                                    % (10000 + i)).decode(),
            "value": base64.b64encode(b'{"addr":"127.0.0.1:%d"}'
                                      % (10000 + i)).decode()}
           for i in range(20)]

    def answer(c, path, body):
        payload = json.dumps({"kvs": kvs}).encode()
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (
            len(payload), payload)
        for i in range(len(data)):
            c.sendall(data[i:i + 1])
            state["sent"] += 1
            time.sleep(0.2)
        state["done"] = True

    fake = FakeEtcd(answer)
    try:
        r = run("queues", "--etcd", fake.url, "--cluster", "c",
                "--timeout", "1")
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert b"timed out" in r.stderr, r.stderr
        # ~2,000 bytes at 5 a second: it stopped listening long before
        assert not state["done"], "memqctl read the whole dripped answer"
    finally:
        fake.close()


@pytest.mark.parametrize("answer", [b"[]", b'"x"', b'{"kvs":"abc"}',
                                    b'{"kvs":[1]}', b'{"kvs":[{"key":5}]}',
                                    b'{"kvs":[{"key":[]}]}',
                                    b"nonsense"])
def test_etcd_answer_that_is_not_etcds(answer):
    """JSON of another shape than etcd's (or none): a clear error naming
    the URL (exit 3, as for an etcd that is away), never a traceback."""
    from test_etcd_peers import FakeEtcd, reply
    fake = FakeEtcd(lambda c, path, body: reply(c, 200, answer))
    try:
        r = run("queues", "--etcd", fake.url, "--cluster", "c")
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert b"Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(b"memqctl: etcd: " + fake.url.encode() +
                                   b": not etcd's answer"), r.stderr
    finally:
        fake.close()


def test_etcd_node_address_that_is_not_one():
    """A registered address that is not HOST:PORT is etcd's fault: exit 1
    naming the cluster, not a usage error (2)."""
    from test_etcd_peers import FakeEtcd, reply
    kv = {"key": base64.b64encode(b"/memq/c/nodes/x").decode(),
          "value": base64.b64encode(b'{"addr":"no-port"}').decode()}
    fake = FakeEtcd(lambda c, path, body:
                    reply(c, 200, json.dumps({"kvs": [kv]}).encode()))
    try:
        r = run("queues", "--etcd", fake.url, "--cluster", "c")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert b"etcd, cluster 'c': bad node address 'no-port'" in \
            r.stderr, r.stderr
    finally:
        fake.close()


def fake_node(behave):
    """A listener whose first connection gets behave(conn) once a request
    line came; the listening socket (closed by the caller)."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        c, _ = srv.accept()
        with c:
            got = b""
            while b"\r\n" not in got:
                got += c.recv(4096)
            behave(c)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_node_that_drips_its_answer_times_out():
    """A node that sends its stats a byte at a time, each byte well within
    --timeout: memqctl gives up after --timeout for the whole answer
    (exit 3, "timed out"), not after as long as the node goes on."""
    import time
    state = {"sent": 0, "done": False}

    def drip(c):
        data = b"".join(b"STAT s%d %d\r\n" % (i, i) for i in range(100))
        try:
            for i in range(len(data)):
                c.sendall(data[i:i + 1])
                state["sent"] += 1
                time.sleep(0.2)
            c.sendall(b"END\r\n")
        except OSError:
            return
        state["done"] = True

    srv = fake_node(drip)
    try:
        r = run("stats", "--node", "127.0.0.1:%d" % srv.getsockname()[1],
                "--timeout", "1")
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert b"timed out" in r.stderr, r.stderr
        # ~1,300 bytes at 5 a second: it stopped listening long before
        assert 0 < state["sent"] < 100, state
        assert not state["done"]
    finally:
        srv.close()


def test_queues_of_a_node_with_many_queues(memqd_factory):
    """20,000 queues: a stats answer of megabytes of short lines, over
    many reads (lines and CRLFs cut between reads); every queue, its depth
    and bytes are in the JSON."""
    s = memqd_factory()
    c = Client(s.addr)
    n = 20000
    names = ["many%05d" % i for i in range(n)]
    data = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q.encode(), i % 7 + 1,
                                                   b"x" * (i % 7 + 1))
                    for i, q in enumerate(names))
    assert pipeline(c, data, len(b"STORED\r\n") * n) == b"STORED\r\n" * n
    c.close()
    got = js("queues", "--node", addr(s))["queues"]
    assert set(got) == set(names)
    assert all(got[q]["items"] == 1 and got[q]["bytes"] == i % 7 + 1
               for i, q in enumerate(names))


@pytest.mark.parametrize("target", ["--node", "--etcd"])
def test_name_lookup_that_never_answers_times_out(tmp_path, target):
    """A node or etcd named through a DNS server that never answers:
    memqctl gives up after --timeout (exit 3, the lookup named), not after
    the resolver's own retries (here set to minutes).  memqctl runs in a
    mount namespace of its own whose /etc/resolv.conf names the silent
    server."""
    import socket
    import time
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dns.bind(("127.0.0.77", 53))
    except OSError as e:
        dns.close()
        pytest.skip("no silent DNS server on 127.0.0.77:53: %s" % e)
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.77\noptions timeout:30 attempts:5\n")
    name = "node.memq-test.example.com"
    where = "%s:22201" % name if target == "--node" else \
        "http://%s:2379" % name
    args = [MEMQCTL, "queues", target, where, "--timeout", "1"]
    if target == "--etcd":
        args += ["--cluster", "c"]
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", str(conf),
                            "/etc/resolv.conf"], capture_output=True)
    if probe.returncode != 0:
        dns.close()
        pytest.skip("no mount namespace: %s" % probe.stderr)
    try:
        t0 = time.monotonic()
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(conf)]
            + args, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=300)
        took = time.monotonic() - t0
        # the silent server was asked: the name really went to it
        dns.settimeout(0)
        asked = dns.recv(512)
    finally:
        dns.close()
    assert r.returncode == 3, (r.returncode, r.stderr)
    # etcd's exchange as a whole has the same deadline, which may say it
    assert b"timed out" in r.stderr, r.stderr
    if target == "--node":
        assert b"name lookup of %s timed out" % name.encode() in r.stderr, \
            r.stderr
    assert asked, "the resolver never asked the silent server"
    # the resolver alone would wait 30 s a try, 5 tries: minutes
    assert took < 30, took


def test_node_announcing_a_value_too_large_for_any_node():
    """A node whose answer to peek announces a 2 GiB value (memqd holds at
    most 1 GiB): memqctl says so at once (exit 1) instead of reading and
    holding whatever the node sends."""
    import threading
    done = threading.Event()

    def huge(c):
        c.sendall(b"VALUE q/peek 0 2147483648 1\r\n" + b"x" * 65536)
        done.wait(30)

    srv = fake_node(huge)
    try:
        r = run("peek", "q", "--node", "127.0.0.1:%d" % srv.getsockname()[1],
                "--timeout", "20")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert b"a value of 2147483648 bytes" in r.stderr, r.stderr
    finally:
        done.set()
        srv.close()
