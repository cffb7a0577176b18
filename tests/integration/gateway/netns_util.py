"""
Hosts in network namespaces for the gateway tests.

  NetLab     n namespaces ("hosts"), each joined to the root namespace by a
             veth pair with a /30 of its own inside 10.213.B.0/24, B chosen
             per run (under a lock file, among the /24s no interface or
             route of this machine uses).  An `unreachable` route for the
             whole /24 (high metric) sits under the /30 routes, so traffic
             for a host whose route is gone fails here instead of following
             the default route out of the machine.
             cut(i) takes the host's own end of the link down (its NIC
             goes away: the root side keeps its route, marked linkdown, and
             packets to the host are dropped, so peers see timeouts, not
             refusals); restore(i) brings it up again.
             close() deletes the veths, the route and the namespaces and
             kills no process (the fixtures stop what they started before
             it runs; a process still inside is reported); it runs from
             fixture teardown, also after a failure, and never raises.
  NsMemqd    a Memqd (memqlib) run with `ip netns exec NS`, listening on the
             host's address.
  EtcdServer a single-member etcd in the root namespace that the hosts
             reach over their links and the gateway over loopback.
  NetlabUnavailable  raised by NetLab.create when namespaces cannot be made
             (no CAP_NET_ADMIN, no netns support): the caller skips.
  set_port_range(host, first, last)  the host's ephemeral port range
             (net.ipv4.ip_local_port_range is per namespace).
  PortHolder connections from inside a host to one address until connect()
             says EADDRNOTAVAIL: no local port is left for that address;
             release() resets them (no TIME_WAIT), which frees the ports
             at once.

Every command has a timeout; nothing waits without a deadline.
"""

import base64
import fcntl
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

import gwutil

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
LOCK = "/run/lock/memq-netns.lock" if os.path.isdir("/run/lock") \
    else "/tmp/memq-netns.lock"
NET_PREFIX = "10.213"


class NetlabUnavailable(Exception):
    pass


def ip(*args, ns=None, check=True, timeout=10):
    argv = [IP]
    if ns is not None:
        argv += ["netns", "exec", ns, IP]
    argv += [str(a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d: %s" % (" ".join(argv),
                                                 p.returncode,
                                                 (p.stderr or p.stdout)
                                                 .strip()))
    return p


class Host:
    """One namespace: name, the two veth ends and their addresses."""

    def __init__(self, lab, i):
        self.index = i
        self.ns = "mq-h%d-%s" % (i + 1, lab.tag)
        self.root_if = "mq%sr%d" % (lab.tag, i)     # <= 15 characters
        self.ns_if = "mq%sn%d" % (lab.tag, i)
        base = 4 * i
        self.root_addr = "%s.%d.%d" % (NET_PREFIX, lab.octet, base + 1)
        self.addr = "%s.%d.%d" % (NET_PREFIX, lab.octet, base + 2)
        self.cut_now = False

    def __repr__(self):
        return "Host(%s %s)" % (self.ns, self.addr)


class NetLab:
    def __init__(self):
        self.tag = "%04x%02x" % (os.getpid() & 0xffff, random.randrange(256))
        self.octet = None
        self.hosts = []
        self.route = None
        self.made_ns = []
        self.made_if = []

    # -- set-up

    @classmethod
    def create(cls, n=3):
        if os.geteuid() != 0:
            raise NetlabUnavailable("not root: network namespaces need "
                                    "CAP_NET_ADMIN")
        if not os.path.exists(IP):
            raise NetlabUnavailable("no `ip` command (iproute2)")
        lab = cls()
        try:
            lab._create(n)
        except BaseException:
            lab.close()
            raise
        return lab

    def _used_octets(self):
        text = ip("-4", "-o", "addr", "show").stdout + \
            ip("-4", "route", "show", "table", "all").stdout
        pat = re.compile(r"\b%s\.(\d+)\." % re.escape(NET_PREFIX))
        return {int(m) for m in pat.findall(text)}

    def _create(self, n):
        names = ["mq-h%d-%s" % (i + 1, self.tag) for i in range(n)]
        # the first namespace tells whether this machine can make them
        p = ip("netns", "add", names[0], check=False)
        if p.returncode != 0:
            raise NetlabUnavailable("`ip netns add` failed: %s"
                                    % (p.stderr.strip() or p.returncode))
        self.made_ns.append(names[0])
        # a /24 nobody uses, taken under a lock: the route below marks it
        with open(LOCK, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                used = self._used_octets()
                free = [b for b in range(1, 255) if b not in used]
                if not free:
                    raise AssertionError("no free %s.B.0/24" % NET_PREFIX)
                octet = random.choice(free)
                route = "%s.%d.0/24" % (NET_PREFIX, octet)
                ip("route", "add", "unreachable", route, "metric", "4000")
                self.octet, self.route = octet, route
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)
        for i in range(n):
            h = Host(self, i)
            if i > 0:
                ip("netns", "add", h.ns)
                self.made_ns.append(h.ns)
            ip("link", "add", h.root_if, "type", "veth", "peer", "name",
               h.ns_if, "netns", h.ns)
            self.made_if.append(h.root_if)
            ip("addr", "add", h.root_addr + "/30", "dev", h.root_if)
            ip("link", "set", h.root_if, "up")
            ip("link", "set", "lo", "up", ns=h.ns)
            ip("addr", "add", h.addr + "/30", "dev", h.ns_if, ns=h.ns)
            ip("link", "set", h.ns_if, "up", ns=h.ns)
            # no default route in the host: it reaches the root side of its
            # own link only (where etcd, if any, listens)
            self.hosts.append(h)
        for h in self.hosts:
            self.wait_link(h)

    def wait_link(self, h, timeout=10.0):
        """Until the root namespace reaches h's address through its own
        veth (carrier up, route in place)."""
        end = time.monotonic() + timeout * gwutil.SLOW
        while True:
            link = ip("-o", "link", "show", h.root_if).stdout
            route = ip("route", "get", h.addr, check=False).stdout
            if "LOWER_UP" in link and "NO-CARRIER" not in link and \
                    ("dev %s " % h.root_if) in route:
                return
            if time.monotonic() > end:
                raise AssertionError("link to %s not up in %.1fs: %s / %s"
                                     % (h, timeout * gwutil.SLOW, link,
                                        route))
            time.sleep(0.02)

    # -- faults

    def cut(self, i):
        h = self.hosts[i]
        ip("link", "set", h.ns_if, "down", ns=h.ns)
        h.cut_now = True

    def restore(self, i):
        h = self.hosts[i]
        ip("link", "set", h.ns_if, "up", ns=h.ns)
        h.cut_now = False
        self.wait_link(h)

    # -- teardown

    def close(self):
        """Deletes everything this lab made; returns a list of problems
        (it never raises, so the rest of the teardown still runs)."""
        problems = []

        def run(what, *args, ok=()):
            try:
                p = ip(*args, check=False)
                if p.returncode != 0 and not any(o in p.stderr for o in ok):
                    problems.append("%s: %s" % (what, p.stderr.strip()))
                return p
            except (OSError, subprocess.SubprocessError) as e:
                problems.append("%s: %r" % (what, e))
                return None

        for ifname in self.made_if:
            # deleting one end of a veth deletes both
            run("link del " + ifname, "link", "del", ifname,
                ok=("Cannot find",))
        self.made_if = []
        if self.route:
            run("route del " + self.route, "route", "del", "unreachable",
                self.route, "metric", "4000")
            self.route = None
        for ns in self.made_ns:
            p = run("netns pids " + ns, "netns", "pids", ns)
            left = p.stdout.split() if p is not None else []
            if left:
                problems.append("processes left in %s: %s" % (ns, left))
            run("netns del " + ns, "netns", "del", ns)
        self.made_ns = []
        return problems


class NsMemqd(gwutil.base.Memqd):
    """memqd inside a host's namespace, on the host's address.  The process
    started is memqd itself (`ip netns exec` execs it), so stop() and
    kill() act on it directly."""

    PORT = 22201

    def __init__(self, tmp, host, args=()):
        super().__init__(tmp, args=args)
        self.netns = host.ns
        self.host = host.addr

    def argv(self):
        return [IP, "netns", "exec", self.netns] + super().argv()

    def start(self, timeout=10.0, port=None):
        return super().start(timeout, port=port or self.PORT)


PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def set_port_range(host, first, last):
    """Sets and reads back the host's ephemeral port range."""
    want = "%d %d" % (first, last)
    p = subprocess.run([IP, "netns", "exec", host.ns, "sh", "-c",
                        "echo '%s' > %s && cat %s" % (want, PORT_RANGE,
                                                      PORT_RANGE)],
                       capture_output=True, text=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    got = " ".join(p.stdout.split())
    assert p.returncode == 0 and got == want, (p.returncode, got, p.stderr)


# runs inside the host: connects to argv[1]:argv[2] until no local port is
# left, says how many it holds, holds them until stdin closes, then resets
# them
_HOLD = r"""
import errno, socket, struct, sys
held = []
while len(held) < 1000:
    s = socket.socket()
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:
            raise
        break
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


class PortHolder:
    def __init__(self, host, addr):
        self.host = host
        self.addr = addr
        self.proc = None
        self.held = 0

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(
            [IP, "netns", "exec", self.host.ns, sys.executable, "-c", _HOLD,
             self.addr[0], str(self.addr[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [],
                                    timeout * gwutil.SLOW)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.release()
            raise AssertionError("port holder in %s: %r" % (self.host.ns,
                                                            line))
        self.held = int(line)
        if self.held >= 1000:
            self.release()
            raise AssertionError("port holder: the port range is not small")
        return self

    def release(self, timeout=10.0):
        """Resets every connection held; returns once they are gone."""
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        p.stdin.close()
        try:
            rc = p.wait(timeout * gwutil.SLOW)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("port holder did not exit")
        finally:
            p.stdout.close()
        assert rc == 0, "port holder exited with %d" % rc


ETCD = shutil.which("etcd")


class EtcdServer:
    """A single-member etcd in the root namespace, listening on loopback
    (for the gateway) and on the root side of every host's link (for the
    memqd of that host), all on one port."""

    def __init__(self, tmp, lab):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.lab = lab
        self.log_path = self.tmp / "etcd.log"
        self.proc = None
        self.port = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def url_for(self, host):
        """The URL a host's memqd registers through."""
        return "http://%s:%d" % (host.root_addr, self.port)

    def start(self, timeout=20.0):
        for _ in range(3):
            self.port = gwutil.free_port()
            peer = "http://127.0.0.1:%d" % gwutil.free_port()
            data = self.tmp / ("data%d" % self.port)
            urls = [self.url] + [self.url_for(h) for h in self.lab.hosts]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [ETCD, "--name", "netns", "--data-dir", str(data),
                     "--listen-client-urls", ",".join(urls),
                     "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer,
                     "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", "netns=" + peer],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                if self.proc.poll() is not None and \
                        "address already in use" in self.log_text():
                    self.proc = None
                    continue
                raise
        raise AssertionError("etcd: no free ports after 3 attempts")

    def wait_ready(self, timeout):
        end = gwutil.deadline_after(timeout)
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited with %s:\n%s" % (
                    self.proc.returncode, self.log_text()[-3000:]))
            try:
                r = requests.post(self.url + "/v3/kv/range",
                                  json={"key": base64.b64encode(b"/")
                                        .decode()}, timeout=1)
                if r.status_code == 200:
                    return
                last = r.status_code
            except requests.RequestException as e:
                last = e
            time.sleep(0.05)
        raise AssertionError("etcd not ready in %.1fs (%r):\n%s" % (
            timeout * gwutil.SLOW, last, self.log_text()[-3000:]))

    def stop(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log_text(self):
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", "replace")
