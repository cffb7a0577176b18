"""memq-bench --http-drain, the C client of bench/gateway.sh's client
acknowledgement cells, against a real gateway: in write mode every message
is counted once; in client mode every id is acknowledged with op=ack lists
and the queue is left empty with no lease outstanding; a wrong count and a
response that is not a drain fail it."""

import os
import subprocess

import pytest

from gwutil import ROOT, SLOW, fill, node_items, qname, qstat

BENCH = os.environ.get("BENCH") or str(ROOT / "build" / "memq-bench")
N = 3000


@pytest.fixture(autouse=True)
def need_bench():
    if not os.access(BENCH, os.X_OK):
        pytest.skip("%s missing (make bench)" % BENCH)


def drain(g, q, *args):
    """Runs the drain; returns (exit status, RESULT fields, stderr)."""
    p = subprocess.run([BENCH, "--http-drain", "-p", str(g.port),
                        "--path", "/mq", "-q", q, "-Q",
                        "--timeout", str(30 * SLOW)] + list(args),
                       capture_output=True, text=True,
                       timeout=120 * SLOW)
    fields = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
    return p.returncode, fields, p.stderr


def test_write_mode_counts_every_message_once(gw, nodes3):
    q = qname()
    fill(nodes3, q, N)
    rc, r, err = drain(gw, q, "-c", "10", "-n", str(N))
    assert rc == 0, err
    assert r["mode"] == "write" and r["conns"] == "10"
    assert int(r["msgs"]) == N
    assert float(r["client_cpu_us_per_msg"]) >= 0
    for n in nodes3:
        assert node_items(n, q) == (0, 0), "left on %s" % n.port


@pytest.mark.parametrize("batch,inflight", [("1000", "4"), ("7", "2")])
def test_client_mode_acknowledges_every_id(gw, nodes3, batch, inflight):
    """Lists of 7 ids, 2 in flight: many POSTs, and the stream waits for
    the acknowledgements to catch up (16 lists at most waiting)."""
    q = qname()
    fill(nodes3, q, N)
    rc, r, err = drain(gw, q, "-c", "3", "-n", str(N), "--ack-client",
                       "--ack-batch", batch, "--ack-inflight", inflight)
    assert rc == 0, err
    assert r["mode"] == "client"
    assert int(r["msgs"]) == N
    assert int(r["acked"]) == N and int(r["not_found"]) == 0
    assert int(r["ack_posts"]) >= N // int(batch)
    assert qstat(nodes3, q, "items") == 0
    assert qstat(nodes3, q, "leased_items") == 0


def test_wrong_count_fails(gw, nodes3):
    q = qname()
    fill(nodes3, q, 300)
    rc, r, err = drain(gw, q, "-c", "2", "-n", "301", "--ack-client")
    assert rc == 1
    assert int(r["msgs"]) == 300 and int(r["acked"]) == 300
    assert "300 msgs (-n 301)" in err


def test_not_a_drain_fails_clearly(gw):
    rc, r, err = drain(gw, qname(), "--path", "/__ready")
    assert rc == 2
    assert r == {}
    assert "GET answered HTTP/1.1 204" in err


def test_bad_arguments(gw):
    rc, _, err = drain(gw, "bad topic")
    assert rc == 2 and "-q and --path" in err
    rc, _, err = drain(gw, qname(), "--ack-batch", "0")
    assert rc == 2 and "--ack-batch" in err
