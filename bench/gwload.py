#!/usr/bin/python3
"""
bench/gwload.py: HTTP clients for bench/gateway.sh (ngx_http_memq_module).

Plain sockets and the standard library only, so the client costs as little
CPU as Python allows (the byte work, recv and counting newlines, is done in
C by the interpreter).  Every subcommand prints one line starting with a
keyword (DRAIN, WAKEUP, LONGPOLL, SLOW, RSS) of key=value fields.

  drain     K concurrent GET streams (drain mode, wait=0, ndjson) of one
            queue; counts the messages (one ndjson line each) of all of them;
            with --ack-client the streams ask ack=client and every stream
            acknowledges its ids with POST op=ack lists of --ack-batch ids
            (--ack-inflight POSTs in flight per stream, each on a
            keep-alive connection of its own); the time runs to the last
            acknowledgement
  wakeup    a consumer waits with wait=30&max=1, a message is published
            (POST through the gateway, or `set` straight to a node), the
            time from the publish being sent to the line arriving; N rounds
  longpoll  N idle long polls (wait=30 on an empty queue) held open while
            the nginx workers' VmRSS is read
  slow      one drain of a large backlog read 1 KiB every 10 ms; workers'
            VmRSS sampled every 0.5 s
  rss       the workers' VmRSS, summed

Worker RSS: the sum of VmRSS of every process whose parent is the nginx
master (--master PID).
"""

import argparse
import json
import os
import re
import resource
import selectors
import socket
import statistics
import sys
import time


# -- nginx workers' memory

def worker_pids(master):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, split after ')'
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[1]) == master:
            pids.append(int(d))
    return pids


def workers_rss_kb(master):
    total = 0
    for pid in worker_pids(master):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def workers_cpu_secs(master):
    """user + system CPU seconds of the nginx workers so far."""
    ticks = 0
    for pid in worker_pids(master):
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- HTTP/1.1 response reader: headers, then chunked (or sized) body;
#    counts LF in the body, i.e. ndjson messages

class Stream:
    def __init__(self, port, path):
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.req = ("GET %s HTTP/1.1\r\nHost: bench\r\n"
                    "Connection: close\r\n\r\n" % path).encode()
        self.sent = False
        self.head = b""
        self.status = None
        self.chunked = False
        self.left = -1        # content-length left (not chunked)
        self.buf = b""        # unparsed chunk framing
        self.in_chunk = 0     # data bytes left in the current chunk
        self.skip = 0         # CRLF after a chunk's data
        self.lines = 0
        self.body = 0
        self.done = False
        self.first = None     # time the first body line arrived
        self.ids = None       # client mode: ids not yet acknowledged
        self.tail = b""       # client mode: a line not complete yet

    def feed(self, data):
        if self.status is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            head, data = self.head[:i].decode("latin1"), self.head[i + 4:]
            self.head = b""
            self.status = int(head.split()[1])
            for h in head.split("\r\n")[1:]:
                k, _, v = h.partition(":")
                k = k.strip().lower()
                if k == "transfer-encoding" and "chunked" in v:
                    self.chunked = True
                elif k == "content-length":
                    self.left = int(v)
        if not self.chunked:
            self.count(data)
            if self.left >= 0:
                self.left -= len(data)
                if self.left <= 0:
                    self.done = True
            return
        pos, n = 0, len(data)
        while pos < n and not self.done:
            if self.in_chunk:
                take = min(self.in_chunk, n - pos)
                self.count(data[pos:pos + take])
                self.in_chunk -= take
                pos += take
                if self.in_chunk == 0:
                    self.skip = 2
                continue
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            # a chunk-size line, possibly split across reads (only then is
            # anything copied: a read holds many chunks)
            if self.buf:
                data = self.buf + data[pos:]
                self.buf = b""
                pos, n = 0, len(data)
            i = data.find(b"\r\n", pos)
            if i < 0:
                self.buf = data[pos:]
                break
            size = int(data[pos:i].split(b";")[0], 16)
            pos = i + 2
            if size == 0:
                self.done = True
                break
            self.in_chunk = size

    def count(self, data):
        if data and self.ids is not None:
            data = self.tail + data
            end = data.rfind(b"\n") + 1
            self.tail = data[end:]
            self.ids.extend(ID_RE.findall(data, 0, end))
            data = data[:end]
        if data:
            c = data.count(b"\n")
            if c and self.first is None:
                self.first = time.perf_counter()
            self.lines += c
            self.body += len(data)


ID_RE = re.compile(rb'\{"id":"([^"]+)')


class Acker:
    """POST op=ack lists for a stream, one request in flight, on a
    keep-alive connection of its own."""

    def __init__(self, port, path, topic, sel):
        self.port = port
        self.path = "%s?topic=%s&op=ack" % (path, topic)
        self.sel = sel
        self.sock = None
        self.inflight = 0
        self.buf = b""
        self.acked = 0
        self.not_found = 0
        self.errors = 0

    def send(self, ids):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
        body = b"\n".join(ids)
        req = ("POST %s HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n"
               "\r\n" % (self.path, len(body))).encode() + body
        self.sock.setblocking(True)
        self.sock.sendall(req)
        self.sock.setblocking(False)
        self.inflight = len(ids)
        self.sel.register(self.sock, selectors.EVENT_READ, self)

    def readable(self):
        try:
            d = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not d:
            self.errors += 1
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            self.inflight = 0
            return
        self.buf += d
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = self.buf[:i].decode("latin1")
        n = int(re.search(r"(?i)content-length: *(\d+)", head).group(1))
        if len(self.buf) < i + 4 + n:
            return
        body = self.buf[i + 4:i + 4 + n]
        self.buf = self.buf[i + 4 + n:]
        if " 200 " not in head.split("\r\n")[0] + " ":
            self.errors += 1
        else:
            r = json.loads(body)
            self.acked += r["acked"]
            self.not_found += r["not_found"]
        self.inflight = 0
        self.sel.unregister(self.sock)


def cmd_drain(a):
    raise_nofile()
    sel = selectors.DefaultSelector()
    path = "%s?topic=%s" % (a.path, a.topic)
    if a.max:
        path += "&max=%d" % a.max
    if a.ack_client:
        path += "&ack=client&lease=%g" % a.lease
    cpu0 = workers_cpu_secs(a.master) if a.master else 0
    self0 = time.process_time()
    t0 = time.perf_counter()
    streams = []
    ackers = []
    for _ in range(a.consumers):
        s = Stream(a.port, path)
        streams.append(s)
        sel.register(s.sock, selectors.EVENT_WRITE, s)
        if a.ack_client:
            s.ids = []
            s.ack_pos = 0
            s.ackers = [Acker(a.port, a.path, a.topic, sel)
                        for _ in range(a.ack_inflight)]
            ackers.extend(s.ackers)

    def ack_more(final):
        busy = 0
        for s in streams:
            if s.ids is None:
                continue
            for k in s.ackers:
                left = len(s.ids) - s.ack_pos
                if not k.inflight and (left >= a.ack_batch
                                       or (final and left)):
                    k.send(s.ids[s.ack_pos:s.ack_pos + a.ack_batch])
                    s.ack_pos += a.ack_batch
                    if s.ack_pos >= len(s.ids):
                        # everything sent: start again (no copying)
                        s.ids.clear()
                        s.ack_pos = 0
                busy += bool(k.inflight)
        return busy

    live = len(streams)
    deadline = t0 + a.timeout
    while live or ack_more(True):
        if time.perf_counter() > deadline:
            break
        ack_more(False)
        for key, ev in sel.select(1.0):
            s = key.data
            if isinstance(s, Acker):
                s.readable()
                continue
            if ev & selectors.EVENT_WRITE and not s.sent:
                s.sock.send(s.req)
                s.sent = True
                sel.modify(s.sock, selectors.EVENT_READ, s)
                continue
            try:
                data = s.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                s.feed(data)
            if not data or s.done:
                sel.unregister(s.sock)
                s.sock.close()
                live -= 1
    t1 = time.perf_counter()
    lines = sum(s.lines for s in streams)
    bad = sum(1 for s in streams if s.status != 200 or not s.done)
    secs = t1 - t0
    rss = workers_rss_kb(a.master) if a.master else 0
    cpu = workers_cpu_secs(a.master) - cpu0 if a.master else 0
    acked = sum(k.acked for k in ackers)
    ack_errors = sum(k.errors + k.not_found for k in ackers)
    print("DRAIN consumers=%d msgs=%d secs=%.3f msgs_per_sec=%.0f "
          "mb_per_sec=%.2f bad_streams=%d timed_out=%d workers_rss_kb=%d"
          % (a.consumers, lines, secs, lines / secs if secs else 0,
             sum(s.body for s in streams) / secs / 1e6, bad, live, rss)
          + (" workers_cpu_us_per_msg=%.2f" % (cpu * 1e6 / lines)
             if a.master and lines else "")
          + (" client_cpu_us_per_msg=%.2f"
             % ((time.process_time() - self0) * 1e6 / lines) if lines else "")
          + (" ack=client acked=%d ack_errors=%d ack_batch=%d "
             "ack_inflight=%d" % (acked, ack_errors, a.ack_batch,
                                  a.ack_inflight) if a.ack_client else ""))
    if a.ack_client and (acked != lines or ack_errors):
        return 1
    return 0 if bad == 0 and live == 0 else 1


def recv_until(sock, pred, buf=b""):
    while not pred(buf):
        d = sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        buf += d
    return buf


def http_body_complete(buf):
    """A whole response with Content-Length in buf?"""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return False
    for h in buf[:i].split(b"\r\n"):
        if h.lower().startswith(b"content-length:"):
            return len(buf) - i - 4 >= int(h.split(b":")[1])
    return True


def cmd_wakeup(a):
    pub = socket.create_connection(("127.0.0.1", a.pub_port))
    pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b"x" * 100
    lat = []
    errors = 0
    for r in range(a.rounds):
        c = socket.create_connection(("127.0.0.1", a.port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(("GET %s?topic=%s&wait=30&max=1 HTTP/1.1\r\nHost: b\r\n"
                   "Connection: close\r\n\r\n" % (a.path, a.topic)).encode())
        s = Stream(a.port, "")
        s.sock.close()
        # headers come once every node answered the first (never waiting)
        # request; then the module parks a long poll on each node
        while s.status is None:
            d = c.recv(65536)
            if not d:
                raise EOFError("consumer closed before headers")
            s.feed(d)
        time.sleep(a.settle)
        t0 = time.perf_counter()
        if a.via == "gateway":
            pub.sendall(("POST %s?topic=%s HTTP/1.1\r\nHost: b\r\n"
                         "Content-Length: %d\r\n\r\n"
                         % (a.path, a.topic, len(body))).encode() + body)
        else:
            pub.sendall(b"set %s 0 0 %d\r\n%s\r\n"
                        % (a.topic.encode(), len(body), body))
        while s.lines == 0:
            d = c.recv(65536)
            if not d:
                break
            s.feed(d)
        t1 = s.first if s.first else time.perf_counter()
        if s.lines == 1:
            lat.append(t1 - t0)
        else:
            errors += 1
        if a.via == "gateway":
            reply = recv_until(pub, http_body_complete)
            if b" 201 " not in reply.split(b"\r\n")[0]:
                errors += 1
        else:
            reply = recv_until(pub, lambda b: b.endswith(b"\r\n"))
            if reply != b"STORED\r\n":
                errors += 1
        # max=1: the stream ends by itself
        while not s.done:
            d = c.recv(65536)
            if not d:
                break
            s.feed(d)
        c.close()
    if a.dump:
        with open(a.dump, "w") as f:
            f.write("".join("%.0f\n" % (x * 1e6) for x in lat))
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1e6

    print("WAKEUP via=%s rounds=%d ok=%d errors=%d p50_us=%.0f p90_us=%.0f "
          "p99_us=%.0f max_us=%.0f mean_us=%.0f"
          % (a.via, a.rounds, len(lat), errors, pct(50), pct(90), pct(99),
             lat[-1] * 1e6, statistics.mean(lat) * 1e6))
    return 0 if errors == 0 else 1


def cmd_longpoll(a):
    raise_nofile()
    idle = workers_rss_kb(a.master)
    socks = []
    req = ("GET %s?topic=%s&wait=30 HTTP/1.1\r\nHost: b\r\n"
           "Connection: close\r\n\r\n" % (a.path, a.topic)).encode()
    sel = selectors.DefaultSelector()
    for _ in range(a.count):
        c = socket.create_connection(("127.0.0.1", a.port))
        c.sendall(req)
        c.setblocking(False)
        socks.append(c)
        sel.register(c, selectors.EVENT_READ, [b""])
    # all open when every one has its headers
    have = 0
    end = time.monotonic() + 20
    while have < a.count and time.monotonic() < end:
        for key, _ in sel.select(1.0):
            d = key.fileobj.recv(65536)
            key.data[0] += d
            if b"\r\n\r\n" in key.data[0] or not d:
                sel.unregister(key.fileobj)
                if key.data[0].startswith(b"HTTP/1.1 200"):
                    have += 1
    time.sleep(a.hold)
    held = workers_rss_kb(a.master)
    for c in socks:
        c.close()
    time.sleep(1.0)
    after = workers_rss_kb(a.master)
    print("LONGPOLL polls=%d open=%d idle_kb=%d held_kb=%d after_close_kb=%d"
          % (a.count, have, idle, held, after))
    return 0 if have == a.count else 1


def cmd_slow(a):
    start = workers_rss_kb(a.master)
    c = socket.create_connection(("127.0.0.1", a.port))
    c.sendall(("GET %s?topic=%s HTTP/1.1\r\nHost: b\r\n"
               "Connection: close\r\n\r\n" % (a.path, a.topic)).encode())
    s = Stream(a.port, "")
    s.sock.close()
    samples = [start]
    t0 = time.monotonic()
    next_sample = t0 + 0.5
    while time.monotonic() - t0 < a.secs:
        d = c.recv(a.read)
        if not d:
            break
        s.feed(d)
        time.sleep(a.every)
        if time.monotonic() >= next_sample:
            samples.append(workers_rss_kb(a.master))
            next_sample += 0.5
    end = workers_rss_kb(a.master)
    samples.append(end)
    c.close()
    time.sleep(1.0)
    after = workers_rss_kb(a.master)
    print("SLOW secs=%.1f msgs_read=%d bytes_read=%d start_kb=%d peak_kb=%d "
          "end_kb=%d after_close_kb=%d samples=%d"
          % (time.monotonic() - t0, s.lines, s.body, start, max(samples),
             end, after, len(samples)))
    return 0


def cmd_rss(a):
    print("RSS workers=%d kb=%d" % (len(worker_pids(a.master)),
                                    workers_rss_kb(a.master)))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("drain")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--path", default="/mq")
    d.add_argument("--topic", required=True)
    d.add_argument("--consumers", type=int, default=1)
    d.add_argument("--max", type=int, default=0)
    d.add_argument("--timeout", type=float, default=120)
    d.add_argument("--ack-client", action="store_true",
                   help="ack=client, ids acknowledged with op=ack lists")
    d.add_argument("--ack-batch", type=int, default=1000)
    d.add_argument("--ack-inflight", type=int, default=1,
                   help="op=ack POSTs in flight per stream")
    d.add_argument("--lease", type=float, default=60)
    d.add_argument("--master", type=int, default=0,
                   help="nginx master: report the workers' VmRSS after")

    w = sub.add_parser("wakeup")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--path", default="/mq")
    w.add_argument("--topic", required=True)
    w.add_argument("--rounds", type=int, default=200)
    w.add_argument("--via", choices=("gateway", "node"), default="gateway")
    w.add_argument("--pub-port", type=int, required=True,
                   help="gateway port, or the memqd port with --via node")
    w.add_argument("--dump", help="file for every latency, us, in order")
    w.add_argument("--settle", type=float, default=0.03,
                   help="seconds between the headers and the publish")

    lp = sub.add_parser("longpoll")
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("--path", default="/mq")
    lp.add_argument("--topic", required=True)
    lp.add_argument("--count", type=int, default=1000)
    lp.add_argument("--hold", type=float, default=2.0)
    lp.add_argument("--master", type=int, required=True)

    sl = sub.add_parser("slow")
    sl.add_argument("--port", type=int, required=True)
    sl.add_argument("--path", default="/mq")
    sl.add_argument("--topic", required=True)
    sl.add_argument("--read", type=int, default=1024)
    sl.add_argument("--every", type=float, default=0.01)
    sl.add_argument("--secs", type=float, default=20)
    sl.add_argument("--master", type=int, required=True)

    r = sub.add_parser("rss")
    r.add_argument("--master", type=int, required=True)

    a = p.parse_args()
    return {"drain": cmd_drain, "wakeup": cmd_wakeup,
            "longpoll": cmd_longpoll, "slow": cmd_slow,
            "rss": cmd_rss}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
