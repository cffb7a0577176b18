"""Client acknowledgement from a browser (headless Chromium over the
DevTools protocol, cdp.py): an EventSource in client mode shows each
message and acknowledges it with fetch(..., {method: "POST"}); the page is
reloaded half-way.  Every message is shown, once, or again after its lease
ran out when the reload came before its acknowledgement was answered; a
message whose acknowledgement was answered never comes back; none is lost.
"""

import pytest

import cdp
import gwutil
from gwutil import fill, qname
from test_gw_client_ack import leased, waiting

pytestmark = pytest.mark.skipif(not cdp.have_chromium(),
                                reason="chromium is not installed")

TOTAL = 40
LEASE = 2

# one message shown and acknowledged every 40 ms, so the reload lands
# with messages received and not shown, shown and acknowledgement in flight
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client mode</title></head>
<body><ol id="shown"></ol>
<script>
var topic = new URLSearchParams(location.search).get("topic");
window.shown = [];
window.acked = [];
var pending = [];
window.es = new EventSource("/mq?format=sse&ack=client&lease=%(lease)d"
                         + "&wait=10&topic=" + topic);
window.es.onmessage = function (e) {
    pending.push({id: e.lastEventId, data: e.data});
};
window.timer = setInterval(function () {
    var m = pending.shift();
    if (!m) {
        return;
    }
    var li = document.createElement("li");
    li.textContent = m.data;
    document.getElementById("shown").appendChild(li);
    window.shown.push(m);
    fetch("/mq?op=ack&topic=" + topic, {method: "POST", body: m.id})
        .then(function (r) { return r.json(); })
        .then(function (j) { if (j.acked === 1) { window.acked.push(m); } });
}, 40);
</script></body></html>
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with cdp.Browser(tmp_path_factory.mktemp("browser")) as b:
        yield b


def test_reload_half_way_loses_nothing(browser, gateway_factory,
                                       memqd_factory, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "client.html").write_text(PAGE % {"lease": LEASE})
    nodes = [memqd_factory(), memqd_factory()]
    g = gateway_factory(nodes, server_extra="location = /client.html "
                        "{ root %s; } location = /favicon.ico "
                        "{ return 204; }" % www)
    q = qname("browser")
    sent = {m.decode() for m in fill(nodes, q, TOTAL, fmt="b%02d")}

    page = browser.open(g.url("/client.html?topic=%s" % q))
    page.wait("window.shown ? window.shown.length >= %d : false"
              % (TOTAL // 2))
    # what the first page showed and knew acknowledged, read in the same
    # task that stops it and reloads it: it shows nothing more (an
    # acknowledgement in flight may still be answered)
    first = page.eval("(function () { clearInterval(window.timer); "
                      "window.es.close(); var r = {shown: window.shown, "
                      "acked: window.acked}; location.reload(); "
                      "return r; })()")
    first_stream = g.wait_access(lambda l: "ack=client" in l, timeout=15,
                                 what="the first page's stream closed")
    shown_before = [m["data"] for m in first["shown"]]
    acked_before = {m["data"] for m in first["acked"]}
    assert len(shown_before) < TOTAL, "the reload came too late"

    # the second page: the messages never delivered at once, the ones the
    # first page did not acknowledge after their lease; it acknowledges
    # everything it shows, so the queue ends empty
    def settled():
        if waiting(nodes, q) or leased(nodes, q):
            return None
        v = page.eval("window.shown && window.shown.length === "
                      "window.acked.length ? window.shown.map("
                      "function (m) { return m.data; }) : null")
        return v

    shown_after = gwutil.wait_for(settled, timeout=30,
                                  what="every message shown and acked")
    # the second stream is closed by the browser before the nodes stop
    page.eval("window.es.close()")
    g.wait_access(lambda l: l.startswith("499 ") and "ack=client" in l
                  and l != first_stream, timeout=15,
                  what="the second page's stream closed")
    page.leave()
    assert set(shown_before) | set(shown_after) == sent, "lost: %r" % (
        sent - set(shown_before) - set(shown_after))
    # an acknowledgement answered is final: never shown again
    assert not acked_before & set(shown_after)
    # shown again only after the first page showed it without an
    # answered acknowledgement (it came back when its lease ran out)
    again = set(shown_before) & set(shown_after)
    assert again <= set(shown_before) - acked_before
    assert len(set(shown_before)) == len(shown_before)
