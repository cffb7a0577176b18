#!/usr/bin/python3
"""bench/gwcpu.py: CPU time of the nginx workers per message, for comparing
two builds of the gateway module on a machine whose cores are shared.

Throughput on shared cores moves 2x from run to run with the neighbours'
load; the CPU the workers spend per message does not (it counts only their
own time).  For each module given, in turn (ROUNDS times, alternating):
three memqd nodes (--sync none) and Debian's nginx with 2 workers, then

  single   wrk -t 2 -c 50 -d SECS: POSTs of one 100 B message
  r201     the same POSTs answered by `return 201` (nginx without memq)
  batch    the same with 100 ndjson lines of 100 B a POST
  drain    DRAIN_N messages of 100 B queued on the nodes, drained by one
           GET stream (wait=0, ndjson)

and prints the workers' user+system CPU per message (us/msg) with the
rate seen, and the three nodes' CPU per message (node us/msg).  Usage (after make memqd module):

  bench/gwcpu.py NAME=path/to/module.so [NAME=other.so ...]

Environment: SECS (3), DRAIN_N (200000), ROUNDS (2).  Needs wrk.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "gateway"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import gwutil  # noqa: E402
import memqlib  # noqa: E402

SECS = int(os.environ.get("SECS", "3"))
DRAIN_N = int(os.environ.get("DRAIN_N", "200000"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """Seconds of CPU used so far by one process."""
    st = open("/proc/%d/stat" % pid).read()
    f = st[st.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / TICK


def worker_cpu(master):
    """Seconds of CPU used so far by the children of the nginx master."""
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        if int(f[1]) == master:
            total += int(f[11]) + int(f[12])
    return total / TICK


def wrk(g, tmp, lines, path="/mq"):
    body = b"\n".join([b"x" * 100] * lines)
    (tmp / "body").write_bytes(body)
    lua = tmp / "pub.lua"
    lua.write_text('local f = io.open("%s", "rb")\nwrk.method = "POST"\n'
                   'wrk.body = f:read("*a")\nf:close()\n'
                   'wrk.headers["Content-Type"] = "%s"\n'
                   % (tmp / "body", "application/x-ndjson" if lines > 1
                      else "text/plain"))
    out = subprocess.run(["wrk", "-t", "2", "-c", "50", "-d", "%ds" % SECS,
                          "-s", str(lua), g.url("%s?topic=cpu%d" % (path, lines))],
                         capture_output=True, text=True).stdout
    for l in out.splitlines():
        if "requests in" in l:
            return int(l.split()[0]) * lines
    raise SystemExit("wrk: " + out)


def drain(g, nodes):
    q = "cpudrain"
    per = DRAIN_N // len(nodes)
    for n in nodes:
        c = memqlib.Client(n.addr)
        for i in range(0, per, 1000):
            c.sock.sendall(b"".join(b"set %s 0 0 100 noreply\r\n%s\r\n"
                                    % (q.encode(), b"y" * 100)
                                    for _ in range(min(1000, per - i))))
        c.close()
    t0 = time.monotonic()
    r = subprocess.run(["curl", "-s", g.url("/mq?topic=" + q)],
                       capture_output=True)
    took = time.monotonic() - t0
    got = r.stdout.count(b"\n")
    if got != per * len(nodes):
        raise SystemExit("drain: %d of %d" % (got, per * len(nodes)))
    return got, took


def run(name, module):
    gwutil.MODULE = module
    tmp = Path(tempfile.mkdtemp(prefix="gwcpu."))
    nodes = [memqlib.Memqd(tmp / ("n%d" % i), args=["--sync", "none"])
             for i in range(3)]
    for n in nodes:
        n.start()
    g = gwutil.Gateway(tmp / "nginx", nodes, loc_extra=
                       "client_max_body_size 1m; access_log off;",
                       server_extra="location = /r201 { access_log off; "
                       "return 201; }")
    g.start()
    try:
        rows = []
        def node_cpu():
            return sum(proc_cpu(n.proc.pid) for n in nodes)

        for label, lines, path in (("single", 1, "/mq"), ("r201", 1, "/r201"),
                                   ("batch", 100, "/mq")):
            c0, t0 = worker_cpu(g.proc.pid), time.monotonic()
            n0 = node_cpu()
            msgs = wrk(g, tmp, lines, path)
            cpu, took = worker_cpu(g.proc.pid) - c0, time.monotonic() - t0
            rows.append((label, msgs, took, cpu, node_cpu() - n0))
        c0, n0 = worker_cpu(g.proc.pid), node_cpu()
        msgs, took = drain(g, nodes)
        rows.append(("drain", msgs, took, worker_cpu(g.proc.pid) - c0,
                     node_cpu() - n0))
        for label, msgs, took, cpu, ncpu in rows:
            print("%-8s %-7s %9d msgs %10.0f msgs/s %7.2f us cpu/msg "
                  "%6.2f node us/msg"
                  % (name, label, msgs, msgs / took, cpu * 1e6 / msgs,
                     ncpu * 1e6 / msgs))
        sys.stdout.flush()
    finally:
        g.stop()
        for n in nodes:
            n.stop()


def main():
    builds = [a.split("=", 1) for a in sys.argv[1:]]
    if not builds:
        raise SystemExit(__doc__)
    for _ in range(ROUNDS):
        for name, module in builds:
            run(name, module)


if __name__ == "__main__":
    main()
