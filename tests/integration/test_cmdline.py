"""Command line and logging: several --listen addresses, size suffixes,
refused bad arguments, the log line format, -v, SIGTERM timing
(DESIGN §1 Command line, §3); --help (every option with its default),
--version, and every option as a key of the config file's [memqd] section,
the command line winning, errors named with file and line (DESIGN §6)."""

import re
import subprocess
import time

import pytest

from memqlib import MEMQD, SLOW, Client, free_port, qname, wait_for

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


# ------------------------------------------- --help, --version, [memqd]

HELP_LINE = re.compile(r"  (?:-(\w), |    )--([a-z][a-z-]*)(?: (\S+))?  +(.*)")

# every option DESIGN §1/§3/§6 names (more may come)
KNOWN_OPTIONS = {"listen", "data-dir", "sync", "max-item-size",
                 "segment-size", "journal-size", "max-connections",
                 "shutdown-timeout", "etcd", "advertise", "cluster",
                 "weight", "verbose", "config", "check", "help", "version"}


def run_memqd(args, timeout=10, **kw):
    return subprocess.run([MEMQD] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True,
                          timeout=timeout * SLOW, **kw)


def help_options():
    """{long name: (letter, arg, text)} from `memqd --help`."""
    r = run_memqd(["--help"])
    assert r.returncode == 0, r
    assert r.stderr == ""
    opts = {}
    for line in r.stdout.splitlines():
        m = HELP_LINE.fullmatch(line)
        if m:
            assert m.group(2) not in opts, "listed twice: %r" % line
            opts[m.group(2)] = (m.group(1), m.group(3), m.group(4))
    return opts


def test_help_lists_every_option_with_its_default():
    opts = help_options()
    assert KNOWN_OPTIONS <= set(opts), KNOWN_OPTIONS - set(opts)
    for name, (_, _, text) in opts.items():
        if name in ("help", "version"):
            continue
        assert re.search(r"\(default: [^)]+\)", text), \
            "--%s without a default: %r" % (name, text)
    # the defaults shown are the ones DESIGN §1 and §3 state
    for name, want in (("listen", "127.0.0.1:22201"), ("sync", "always"),
                       ("data-dir", "./memq-data"), ("max-item-size", "1m"),
                       ("segment-size", "64m"),
                       ("max-connections", "10000")):
        assert "(default: %s)" % want in opts[name][2], (name, opts[name])


def test_help_default_max_item_size_is_what_runs(memqd_factory):
    """--help's default for --max-item-size is the one in force: exactly
    that many bytes are stored, one more is refused."""
    m = re.search(r"\(default: (\d+)([kmg]?)\)",
                  help_options()["max-item-size"][2])
    limit = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20,
                               "g": 1 << 30}[m.group(2)]
    s = memqd_factory()
    c = s.connect()
    q = qname()
    c.store(q, b"x" * limit)
    assert c.set(q, b"x" * (limit + 1)) == \
        "SERVER_ERROR object too large for cache"
    c.close()


def test_version_matches_the_protocol(memqd_factory):
    r = run_memqd(["--version"])
    assert r.returncode == 0 and r.stderr == ""
    m = re.fullmatch(r"memqd (\d+\.\d+\.\d+)\n", r.stdout)
    assert m, r.stdout
    c = memqd_factory().connect()
    assert c.cmd("version") == "VERSION memqd " + m.group(1)
    c.close()


def test_option_given_twice_last_wins(memqd_factory):
    s = memqd_factory(args=["--max-item-size", "1k", "--max-item-size", "2k"])
    c = s.connect()
    q = qname()
    c.store(q, b"w" * 2048)
    assert c.set(q, b"w" * 2049) == "SERVER_ERROR object too large for cache"
    c.close()


def conf_run(tmp_path, text, data_dir=True):
    """memqd --check with a config file: it reads every option, then the
    (empty) data directory, and exits without serving.  data_dir=False
    leaves --data-dir to the file."""
    conf = tmp_path / "memqd.conf"
    conf.write_text(text)
    args = ["--config", str(conf), "--check"]
    if data_dir:
        args += ["--data-dir", str(tmp_path / "data")]
    return run_memqd(args)


def test_every_option_is_a_config_key(tmp_path):
    """Each option --help lists, but the command-line ones, is a key of
    [memqd]: a bad value for it is refused as a bad value at its line,
    never as an unknown key."""
    opts = help_options()
    keys = [n for n, (_, _, t) in opts.items() if "(command line)" not in t]
    assert {"sync", "max-item-size", "verbose", "listen"} <= set(keys)
    for name in keys:
        key = name.replace("-", "_")
        # any string is an address or a path, but not an empty one
        bad = "" if name in ("listen", "data-dir") else "@bad@"
        r = conf_run(tmp_path, "# memqd\n[memqd]\n%s = %s\n" % (key, bad),
                     data_dir=(name != "data-dir"))
        assert r.returncode != 0, (key, r)
        assert "unknown key" not in r.stderr, (key, r.stderr)
        assert "memqd.conf:3: bad %s \"%s\"" % (key, bad) in r.stderr, \
            (key, r.stderr)


def test_command_line_only_options_refused_in_config(tmp_path):
    opts = help_options()
    only = [n for n, (_, _, t) in opts.items() if "(command line)" in t]
    assert {"config", "help", "version", "check"} <= set(only)
    for name in only:
        r = conf_run(tmp_path, "[memqd]\n%s = x\n" % name)
        assert r.returncode == 1, (name, r)
        assert "memqd.conf:2: %s is a command-line option only" % name \
            in r.stderr, r.stderr


@pytest.mark.parametrize("text,line,why", [
    ("[memqd]\nsync = none\nbogus = 1\n", 3, 'unknown key "bogus" in [memqd]'),
    ("[memqd]\nsync = none\nsync = always\n", 3, "sync set twice"),
    ("[memqd]\nverbose = maybe\n", 2, 'bad verbose "maybe"'),
    ("[memqd]\nmax_item_size = 2g\n", 2, 'bad max_item_size "2g"'),
    ("[memqd]\nsegment_size = 1k\n", 2, "at least 4k"),
    ("[mmeqd]\nsync = none\n", 1, "unknown section"),
    ("sync = none\n", 1, "key outside a section"),
])
def test_bad_config_line_named_with_file_and_line(tmp_path, text, line, why):
    r = conf_run(tmp_path, text)
    assert r.returncode == 1, r
    want = "%s:%d: " % (tmp_path / "memqd.conf", line)
    assert want in r.stderr and why in r.stderr, r.stderr


def test_config_sets_options_and_command_line_wins(memqd_factory):
    """[memqd] sets options; the command line overrides them (the harness
    passes --listen and --data-dir, which the file also names)."""
    s = memqd_factory(config="[memqd]\n"
                             "max_item_size = 1k\n"
                             "listen = 127.0.0.1:1\n"
                             "data_dir = /nonexistent/memq\n",
                      args=["--max-item-size", "4k"])
    c = s.connect()
    q = qname()
    c.store(q, b"y" * 4096)
    assert c.set(q, b"y" * 4097) == "SERVER_ERROR object too large for cache"
    assert (s.data_dir / "memqd.lock").exists()
    c.close()

    t = memqd_factory(config="[memqd]\nmax-item-size = 1k\nverbose = yes\n")
    c = t.connect()
    c.store(q, b"z" * 1024)
    assert c.set(q, b"z" * 1025) == "SERVER_ERROR object too large for cache"
    c.close()
    wait_for(lambda: "[debug]" in t.log_text(), what="debug lines from "
             "verbose = yes")


def test_config_alone_sets_listen_and_data_dir(tmp_path):
    """A memqd started with --config only: two listen lines and the data
    directory come from the file."""
    ports = [free_port(), free_port()]
    data = tmp_path / "from-config"
    conf = tmp_path / "memqd.conf"
    conf.write_text("[memqd]\nlisten = 127.0.0.1:%d\nlisten = 127.0.0.1:%d\n"
                    "data_dir = %s\nsync = none\n" % (ports[0], ports[1],
                                                       data))
    with open(tmp_path / "err", "wb") as err:
        p = subprocess.Popen([MEMQD, "--config", str(conf)], stderr=err,
                             stdin=subprocess.DEVNULL)
    try:
        def answers(port):
            try:
                c = Client(("127.0.0.1", port), timeout=1)
            except OSError:
                assert p.poll() is None, (tmp_path / "err").read_text()
                return False
            try:
                return c.cmd("version").startswith("VERSION memqd ")
            finally:
                c.close()
        for port in ports:
            wait_for(lambda: answers(port), timeout=10, what="memqd on the "
                     "config file's listen address %d" % port)
        assert (data / "memqd.lock").exists()
        assert "sync none" in (tmp_path / "err").read_text()
    finally:
        p.terminate()
        assert p.wait(10 * SLOW) == 0


def test_sighup_checks_memqd_keys_and_applies_limits(memqd_factory):
    """SIGHUP re-reads the queue limits; a [memqd] key it does not know,
    or one set twice, makes the reload fail (previous limits kept); known
    [memqd] keys are accepted and logged as applying at the next start."""
    s = memqd_factory(config="[memqd]\nsync = always\n"
                             "[defaults]\nmax_items = 1\n")
    c = s.connect()
    q = qname()
    c.store(q, b"a")
    assert c.set(q, b"b") == "SERVER_ERROR queue full"

    s.write_config("[memqd]\nsync = none\n[defaults]\nmax_items = 2\n")
    s.signal(1)
    wait_for(lambda: c.set(q, b"b") == "STORED", what="max_items = 2 "
             "after SIGHUP")

    wait_for(lambda: "[memqd] sync: applies at the next start" in
             s.log_text(), what="the note that sync waits for a restart")

    for bad, why in (("bogus = 1\n", 'unknown key "bogus"'),
                     ("sync = none\nsync = always\n", "sync set twice")):
        before = len(s.log_text())
        s.write_config("[memqd]\n%s[defaults]\nmax_items = 9\n" % bad)
        s.signal(1)
        wait_for(lambda: why in s.log_text()[before:],
                 what="the reload's error %r" % why)
        assert c.set(q, b"c") == "SERVER_ERROR queue full"
    c.close()
