"""
The README's tours, run as written.

A demo cluster is started the way `make run` starts it (scripts/run-demo.sh:
etcd, three memqd nodes, nginx with the module), on free ports and in a
temporary directory (MEMQ_DEMO_*).  Every command of the README's two tours
("A five-minute tour of memqd", "A five-minute tour of the gateway") then
runs in order, from a directory where `run/` is the demo's and `build/` the
repository's, with the README's ports swapped for the demo's; its output is
compared with the README:

- `...` in the README stands for any lines;
- `STAT pid`, `STAT time`-like values, dates, and which node took a message
  ("node":"...", SSE ids) are not compared;
- a drain of messages that may sit on several nodes is compared as a set
  of lines (each node's lines stay in order; the nodes interleave);
- the `nc -C` transcript is played line by line: what the README shows as
  typed is sent, what it shows as answered is read;
- the Python snippet runs whole; each printed line must start the comment
  of the print that made it;
- a long poll runs until its output is there, with the publish the README
  gives for it made from "another terminal".

Ctrl-C of the demo is its SIGTERM here: afterwards no process of it may be
left (the node restarted by hand included), and its logs hold no warning.
"""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memqlib import SLOW, free_port, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent / "gateway"))
import cdp  # noqa: E402  (the DevTools client of the gateway suite)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MODULE = ROOT / "build" / "ngx_http_memq_module.so"
DEFAULT_PORTS = ["8080", "22201", "22202", "22203", "2379", "2380"]

pytestmark = pytest.mark.skipif(
    not MODULE.exists() or not (ROOT / "build" / "memqd").exists(),
    reason="build/memqd and build/ngx_http_memq_module.so needed "
           "(make memqd module)")


# ------------------------------------------------------------ the README

def tour_text():
    text = README.read_text()
    start = text.index("## A five-minute tour of memqd")
    end = text.index("\n## ", text.index("## A five-minute tour of the "
                                          "gateway"))
    return text[start:end]


def blocks(text):
    """(kind, body, prose before it) for each fenced block, in order."""
    out = []
    pos = 0
    for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
        out.append((m.group(1), m.group(2), text[pos:m.start()]))
        pos = m.end()
    return out


def console_steps(body):
    """[(command, [expected lines])] of a console block."""
    steps = []
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), "README console line: %r" % line
        cmd = line[2:]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd + "\n" + lines[i]
        i += 1
        exp = []
        while i < len(lines) and not lines[i].startswith("$ "):
            exp.append(lines[i])
            i += 1
        steps.append((cmd, exp))
    return steps


# ------------------------------------------------------------ matching

def normalize(line):
    line = line.rstrip("\r")
    line = re.sub(r'"node":"127\.0\.0\.1:\d+"', '"node":"NODE"', line)
    line = re.sub(r"^id: 127\.0\.0\.1:\d+/\d+$", "id: NODE/N", line)
    line = re.sub(r'"id":"127\.0\.0\.1:\d+/\d+"', '"id":"NODE/N"', line)
    line = re.sub(r"^STAT pid \d+$", "STAT pid N", line)
    line = re.sub(r"^Date: .*", "Date: D", line)
    return line


def match(expected, actual):
    """expected lines (with `...` for any lines) against actual ones."""
    def rec(i, j):
        if i == len(expected):
            return j == len(actual)
        if expected[i] == "...":
            return any(rec(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and expected[i] == actual[j] and \
            rec(i + 1, j + 1)
    return rec(0, 0)


def assert_output(cmd, expected, out):
    exp = [normalize(l) for l in expected]
    act = [normalize(l) for l in out.split("\n")]
    if act and act[-1] == "":
        act.pop()
    assert match(exp, act), ("README command:\n$ %s\nexpected:\n%s\ngot:\n%s"
                             % (cmd, "\n".join(exp), "\n".join(act)))


# ------------------------------------------------------------ the demo

class Demo:
    def __init__(self, tmp):
        self.cwd = Path(tmp)
        self.run = self.cwd / "run"
        (self.cwd / "build").symlink_to(ROOT / "build")
        self.ports = [str(free_port()) for _ in DEFAULT_PORTS]
        self.map = dict(zip(DEFAULT_PORTS, self.ports))
        self.out = self.cwd / "demo.out"
        self.proc = None

    def env(self):
        e = dict(os.environ)
        e.update(MEMQ_DEMO_RUN=str(self.run), MEMQ_DEMO_PORT=self.ports[0],
                 MEMQ_DEMO_NODES=" ".join(self.ports[1:4]),
                 MEMQ_DEMO_ETCD_PORTS=" ".join(self.ports[4:6]))
        e.pop("MEMQ_DEMO_ETCD", None)
        return e

    def start(self):
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                [str(ROOT / "scripts" / "run-demo.sh")], cwd=self.cwd,
                env=self.env(), stdin=subprocess.DEVNULL, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            assert self.proc.poll() is None, self.out.read_text()
            return "nginx on http" in self.out.read_text() and \
                self.sh("curl -sf -o /dev/null http://127.0.0.1:%s/mq/status"
                        % self.ports[0]).returncode == 0
        try:
            wait_for(up, timeout=30, interval=0.1, what="the demo up")
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, self.logs())) from None

    def logs(self):
        """What the demo printed and the ends of its logs."""
        parts = ["demo output:\n" + self.out.read_text()]
        for log in sorted(self.run.glob("**/*.log")):
            with open(log, "rb") as f:
                tail = f.read()[-2000:].decode("utf-8", "replace")
            parts.append("%s:\n%s" % (log.relative_to(self.run), tail))
        return "\n".join(parts)

    def local(self, text):
        """The README's ports made the demo's."""
        for d, p in self.map.items():
            text = re.sub(r"(?<![0-9])%s(?![0-9])" % d, p, text)
        return text

    def sh(self, cmd, timeout=60, **kw):
        return subprocess.run(["bash", "-c", cmd], cwd=self.cwd,
                              capture_output=True, text=True,
                              timeout=timeout * SLOW, **kw)

    def stop(self):
        """What Ctrl-C does: SIGINT is ignored in a background job, so
        SIGTERM, which the script traps the same way."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60 * SLOW)

    def leftovers(self):
        """Processes still holding a file of the demo's run directory."""
        left = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                for fd in os.listdir("/proc/%s/fd" % pid):
                    t = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                    if t.startswith(str(self.run) + "/"):
                        left.add(int(pid))
                        break
            except OSError:
                continue
        return left


@pytest.fixture
def demo(tmp_path):
    if shutil.which("nc") is None or shutil.which("curl") is None:
        pytest.fail("nc and curl are needed (scripts/deps.sh)")
    d = Demo(tmp_path)
    d.start()
    yield d
    d.stop()


# ------------------------------------------------------------ runners

def play_nc(demo, cmd, expected):
    """The interactive transcript: typed lines are sent, answers read."""
    typed = re.compile(r"^(set|get|gets|stats|quit|delete|flush|version)\b")
    p = subprocess.Popen(["bash", "-c", demo.local(cmd)], cwd=demo.cwd,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    buf = b""

    def read_until(pred, what):
        nonlocal buf
        end = time.monotonic() + 15 * SLOW
        while not pred(buf):
            left = end - time.monotonic()
            assert left > 0, "nc: no %s; got %r" % (what, buf)
            r, _, _ = select.select([p.stdout], [], [], left)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
        return buf

    i = 0
    replies = []
    try:
        while i < len(expected):
            line = expected[i]
            assert typed.match(line), "README nc line %r: not a command" % line
            send = line + "\n"
            i += 1
            if line.startswith("set "):
                send += expected[i] + "\n"
                i += 1
            p.stdin.write(send.encode())
            p.stdin.flush()
            want = []
            while i < len(expected) and not typed.match(expected[i]):
                want.append(expected[i])
                i += 1
            if line == "quit":
                p.stdin.close()
                p.wait(10 * SLOW)
                rest = p.stdout.read()
                assert want == [] and rest == b"", rest
                continue
            last = want[-1]
            got = read_until(lambda b: (b"\r\n" + last.encode() + b"\r\n")
                             in b"\r\n" + b, "answer to %r" % line)
            cut = got.index(last.encode() + b"\r\n") + len(last) + 2
            buf = got[cut:]
            replies.append(line)
            assert_output(line, want, got[:cut].decode())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return replies


def run_python(demo, body):
    code = demo.local(body)
    r = subprocess.run(["/usr/bin/python3", "-c", code], cwd=demo.cwd,
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode == 0, r.stderr
    comments = [m.group(1) for m in
                re.finditer(r"print\(.*?#\s*(.*)$", body, re.M)]
    lines = r.stdout.splitlines()
    assert len(lines) == len(comments), (lines, comments)
    for out, comment in zip(lines, comments):
        assert out and comment.startswith(out), (out, comment)


def long_poll(demo, cmd, expected, publish):
    """Starts the stream, publishes from "another terminal", reads until
    the README's output is there, then ends the stream like Ctrl-C."""
    p = subprocess.Popen(["bash", "-c", demo.local(cmd)], cwd=demo.cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    want = "\n".join(normalize(l) for l in expected) + "\n"
    buf = b""
    try:
        # the stream is open once the gateway counts it
        wait_for(lambda: '"streams_active":1' in demo.sh(
            "curl -s http://127.0.0.1:%s/mq/status" % demo.ports[0]).stdout,
            timeout=10, what="the long poll open")
        r = demo.sh(demo.local(publish))
        assert r.returncode == 0 and '"queued":1' in r.stdout, r
        end = time.monotonic() + 15 * SLOW
        while "\n".join(normalize(l) for l in
                        buf.decode().split("\n")) != want:
            left = end - time.monotonic()
            assert left > 0, ("README long poll:\n$ %s\nexpected:\n%s\ngot:\n%s"
                              % (cmd, want, buf.decode()))
            ready, _, _ = select.select([p.stdout], [], [], left)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                assert chunk, "stream ended early: %r" % buf
                buf += chunk
    finally:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(10)


def is_drain(cmd):
    return re.match(r"^curl '[^']*/mq\?topic=[^'&]*'$", cmd) is not None


# ------------------------------------------------------------ the test

def test_readme_tours(demo):
    text = tour_text()
    ran = []
    for kind, body, prose in blocks(text):
        if kind == "python":
            run_python(demo, body)
            ran.append("python")
            continue
        if kind != "console":
            continue
        for cmd, expected in console_steps(body):
            if cmd.startswith("nc "):
                ran += play_nc(demo, cmd, expected)
                continue
            if "wait=" in cmd:
                pub = re.search(r"another terminal with\s+`([^`]+)`",
                                prose.replace("\n", " "))
                assert pub, "README: no publish for the long poll"
                long_poll(demo, cmd, expected, pub.group(1))
                ran.append(cmd)
                continue
            if cmd.endswith("&"):
                # started in the background, as a user would
                subprocess.Popen(["bash", "-c", demo.local(cmd)],
                                 cwd=demo.cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL,
                                 start_new_session=True)
                port = demo.map["22202"]
                wait_for(lambda: demo.sh("printf 'version\\r\\n' | "
                                         "nc -C -q1 127.0.0.1 %s" % port)
                         .stdout.startswith("VERSION"), timeout=10,
                         what="the node started by hand")
                ran.append(cmd)
                continue
            pidfile = re.match(r"^kill \$\(cat (\S+)\)$", cmd)
            if pidfile:
                pid = int((demo.cwd / demo.local(pidfile.group(1)))
                          .read_text())
            r = demo.sh(demo.local(cmd))
            assert r.returncode == 0, (cmd, r.stderr)
            if pidfile:
                # a person types the next command once the node is gone
                wait_for(lambda: not os.path.exists("/proc/%d" % pid),
                         timeout=10, what="the node stopped")
            if "/mq/status" in cmd and not expected:
                # no output shown: JSON, or Prometheus text
                out = r.stdout
                assert out.startswith('{"clusters":[') or \
                    out.startswith("# "), out[:300]
            elif is_drain(cmd):
                assert sorted(normalize(l) for l in expected) == \
                    sorted(normalize(l) for l in r.stdout.splitlines()), \
                    (cmd, expected, r.stdout)
            else:
                assert_output(cmd, [demo.local(l) for l in expected],
                              r.stdout)
            ran.append(cmd)

    # the tours are all there: the memqd transcript, Python, the gateway
    assert "stats" in ran and "python" in ran
    assert any("topic=news" in c for c in ran)
    assert any(c.startswith("kill ") for c in ran)

    # the home page is the dashboard, next to the tour
    g = "http://127.0.0.1:%s" % demo.ports[0]
    page = demo.sh("curl -sf %s/" % g).stdout
    assert '<meta name="memq-status" content="/mq/status">' in page
    assert "new EventSource(" in demo.sh("curl -sf %s/tour.html" % g).stdout
    if cdp.have_chromium():
        # in a browser: the demo's three nodes, and the queue the tour left
        # (the 2 MB message of "big")
        with cdp.Browser(demo.cwd) as b:
            p = b.open(g + "/")
            p.wait("Array.from(document.querySelectorAll('tr[data-node]'))"
                   ".map(function (e) { return e.dataset.node + ' ' + "
                   "e.dataset.state; })",
                   ["127.0.0.1:%s up" % port for port in demo.ports[1:4]])
            p.wait("(document.querySelector('tr[data-queue=\"big\"] "
                   "td.depth') || {}).textContent", "1")

    run = demo.run
    demo.stop()
    wait_for(lambda: not demo.leftovers(), timeout=10,
             what="no process of the demo left (a node started by hand "
                  "included)")
    out = demo.out.read_text()
    assert "demo: stopped" in out, out
    for what in ("etcd on http", "memqd on 127.0.0.1:%s" % demo.ports[1],
                 "nginx on http"):
        assert what in out, out
    # no warning from a clean start and stop (the drain with a node down
    # logs its [error]s; a 2 MB body buffered to a file is nginx's [warn])
    logs = list((run / "logs").glob("*.log")) + \
        [run / "nginx" / "logs" / "error.log"]
    for log in logs:
        bad = [l for l in log.read_text().splitlines()
               if re.search(r"\[(warn|alert|crit|emerg)|\bW \||"
                            r'"level":"(warn|error)"', l)
               and "buffered to a temporary file" not in l]
        assert not bad, (log, bad)


def test_demo_gateway_port_taken(tmp_path):
    """`make run` with port 8080 taken: the demo says why and stops its
    nodes, instead of running on without a gateway."""
    d = Demo(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(d.ports[0])))
        s.listen()
        with open(d.out, "wb") as f:
            d.proc = subprocess.Popen(
                [str(ROOT / "scripts" / "run-demo.sh")], cwd=d.cwd,
                env=d.env(), stdin=subprocess.DEVNULL, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = d.proc.wait(60 * SLOW)
        finally:
            d.stop()
    out = d.out.read_text()
    assert rc == 1, out
    assert "Address already in use" in out and "nginx exited" in out, out
    assert "stopping memqd" in out, out
    wait_for(lambda: not d.leftovers(), timeout=10,
             what="no process of the demo left")
