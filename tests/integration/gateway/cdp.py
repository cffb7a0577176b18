"""
Headless Chromium driven over the DevTools protocol, standard library only.

  with Browser(tmp) as b:
      page = b.open("http://127.0.0.1:8080/")
      page.wait("document.querySelectorAll('tr[data-node]').length", 3)

Browser starts Debian's chromium with --remote-debugging-port=0 and reads
the port it chose from DevToolsActivePort; open() makes a new tab through
the /json/new endpoint and speaks to it over a WebSocket (RFC 6455, client
frames masked) with Runtime.evaluate.  Tests assert on the DOM through
expressions; nothing is saved to disk beyond the profile directory.
"""

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import gwutil

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or \
    shutil.which("chromium-browser")


class WebSocket:
    """A minimal client: text frames out, text frames in."""

    def __init__(self, url, timeout=10.0):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port),
                                             timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n"
               % (u.path, u.hostname, u.port, key))
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("websocket handshake: closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise AssertionError("websocket handshake: %r" % head[:200])

    def send(self, text):
        data = text.encode()
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + body)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._need(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._need(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._need(8))[0]
            payload = self._need(n)
            op = b0 & 0x0F
            if op == 0x8:
                raise AssertionError("websocket closed by the browser")
            if op in (0x9, 0xA):
                continue
            msg += payload
            if b0 & 0x80:
                return msg.decode()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Page:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []
        self.call("Inspector.enable")
        self.call("Page.enable")

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method,
                                 "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if "method" in m:
                self.events.append((m["method"], str(m.get("params"))[:300]))
            if m.get("id") == mid:
                if "error" in m:
                    raise AssertionError("%s: %r" % (method, m["error"]))
                return m.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError("%s: %r" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait(self, expr, want=True, timeout=15.0):
        """Waits until expr evaluates to want (or, when want is a
        function, to a value it accepts); returns that value."""
        ok = want if callable(want) else (lambda v: v == want)
        last = []

        def check():
            v = self.eval(expr)
            last[:] = [v]
            return ok(v)
        try:
            gwutil.wait_for(check, timeout=timeout, what=expr)
        except AssertionError as e:
            text = self.eval("location.href + ' ' + (document.body ? document.body.getAttribute('data-samples') + ' ' + document.body.textContent : '')")
            raise AssertionError("%s (last value %r); the page says:\n%s\n"
                                 "events: %r"
                                 % (e, last, (text or "")[:3000],
                                    self.events[-20:])) from None
        return last[0]

    def leave(self):
        """Navigates away, so the page holds no connection (streams)
        when the servers stop."""
        self.call("Page.navigate", url="about:blank")
        self.wait("location.href", "about:blank")

    def close(self):
        self.ws.close()


class Browser:
    def __init__(self, tmp):
        self.dir = Path(tmp) / "chromium"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.port = None
        self.pages = []

    def __enter__(self):
        port_file = self.dir / "DevToolsActivePort"
        if port_file.exists():
            port_file.unlink()
        self.log = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             "--user-data-dir=" + str(self.dir), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("chromium exited: %s" % (
                    (self.dir / "stderr.log").read_text()[-2000:]))
            try:
                return port_file.read_text().split("\n")[0].strip() or None
            except FileNotFoundError:
                return None
        self.port = int(gwutil.wait_for(ready, timeout=30,
                                        what="chromium DevTools port"))
        return self

    def open(self, url):
        req = urllib.request.Request(
            "http://127.0.0.1:%d/json/new?%s" % (self.port,
                                                 urllib.parse.quote(url, safe="")),
            method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            target = json.loads(r.read())
        page = Page(target["webSocketDebuggerUrl"])
        self.pages.append(page)
        return page

    def __exit__(self, *exc):
        for p in self.pages:
            p.close()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return False


def have_chromium():
    return CHROMIUM is not None and os.access(CHROMIUM, os.X_OK)


__all__ = ["Browser", "have_chromium", "CHROMIUM"]
