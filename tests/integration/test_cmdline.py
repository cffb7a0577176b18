"""Command line and logging: several --listen addresses, size suffixes,
refused bad arguments, the log line format, -v, SIGTERM timing
(DESIGN §1 Command line, §3)."""

import re
import subprocess
import time

import pytest

from memqlib import SLOW, Client, free_port, qname, wait_for

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z "
                      r"\[(error|warn|info|debug)\] [a-z_]+: \S.*")


def test_two_listen_addresses(memqd_factory):
    p2 = free_port()
    s = memqd_factory(args=["--listen", "127.0.0.1:%d" % p2])
    q = qname()
    a = s.connect()
    b = Client(("127.0.0.1", p2))
    a.store(q, b"via-a")
    b.store(q, b"via-b")
    assert b.getdata(q) == b"via-a"
    assert a.getdata(q) == b"via-b"
    a.close()
    b.close()


def test_log_lines_have_the_format(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"x")
    c.getdata(q)
    c.cmd("bogus")
    c.close()
    s.stop_checked()
    lines = [ln for ln in s.log_text().splitlines() if ln]
    assert lines, "memqd logged nothing at all (start/stop are info events)"
    bad = [ln for ln in lines if not LOG_LINE.fullmatch(ln)]
    assert not bad, "log lines not in '<time> [level] subsystem: msg': %r" \
        % bad[:5]
    levels = [LOG_LINE.fullmatch(ln).group(2) for ln in lines]
    assert "debug" not in levels, "debug lines without -v"
    assert "error" not in levels and "warn" not in levels, lines


def test_verbose_logs_commands(memqd_factory):
    s = memqd_factory(args=["-v"])
    c = s.connect()
    q = qname()
    before = len(s.log_text())
    c.store(q, b"x")
    c.getdata(q)
    wait_for(lambda: "[debug]" in s.log_text()[before:], timeout=5,
             what="a [debug] line per command with -v")
    c.close()


def test_sigterm_with_idle_connections_is_prompt(memqd_factory):
    s = memqd_factory()
    conns = [s.connect() for _ in range(20)]
    for c in conns:
        assert c.cmd("version").startswith("VERSION")
    t0 = time.monotonic()
    s.signal(15)
    assert s.proc.wait(10 * SLOW) == 0
    assert time.monotonic() - t0 < 2.0 * SLOW
    s.proc = None
    s.check_sanitizer()
    for c in conns:
        assert c.wait_closed(5)
        c.close()


def test_new_connections_refused_after_stop(memqd_factory):
    s = memqd_factory()
    addr = s.addr
    s.stop_checked()
    with pytest.raises(OSError):
        Client(addr, timeout=1)


@pytest.mark.parametrize("args", [
    ["--sync", "bogus"],
    ["--sync", "interval="],
    ["--sync", "interval=abc"],
    ["--max-item-size", "abc"],
    ["--max-item-size", "-1"],
    ["--max-connections", "abc"],
    ["--segment-size", "abc"],
    ["--no-such-option"],
])
def test_bad_arguments_refused(memqd_factory, args):
    s = memqd_factory(args=args, wait=False)
    p = s.spawn()
    try:
        rc = p.wait(10 * SLOW)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        s.proc = None
        pytest.fail("memqd started with bad arguments %r" % args)
    s.proc = None
    assert rc != 0, "memqd %r exited 0" % args
    assert s.log_text().strip(), "no message on stderr for %r" % args


def test_config_file_missing_refused(memqd_factory, tmp_path):
    s = memqd_factory(args=["--config", str(tmp_path / "nope.conf")],
                      wait=False)
    p = s.spawn()
    try:
        rc = p.wait(10 * SLOW)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        s.proc = None
        pytest.fail("memqd started with a missing --config file")
    s.proc = None
    assert rc != 0


def test_sighup_without_config(memqd_factory):
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"x")
    for _ in range(3):
        s.signal(1)
        assert c.cmd("version").startswith("VERSION memqd ")
    assert s.running()
    assert c.getdata(q) == b"x"
    c.close()
