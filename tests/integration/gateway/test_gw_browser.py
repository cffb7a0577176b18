"""
The dashboard and the EventSource tour in headless Chromium (Debian's
chromium, driven over the DevTools protocol; cdp.py).  Assertions are on
the DOM of the live pages:

- the dashboard lists the nodes, shows a queue's depth after publishes,
  and marks a node down when it is killed (and up again after a restart,
  its error kept as history);
- conf/www/tour.html served by the gateway itself (the demo's setup,
  no memq_cors) publishes and consumes;
- the same page served by a second nginx server (another origin)
  consumes through EventSource and publishes through fetch when the
  gateway has memq_cors for that origin, and is refused without it, the
  message staying queued.
"""

import pytest

import cdp
from gwutil import ROOT, free_port, node_addr, node_items, qname

pytestmark = pytest.mark.skipif(not cdp.have_chromium(),
                                reason="chromium is not installed")

FAST_RETRY = "max_fails 1; fail_timeout 1s;"
DASHBOARD = "location = / { memq_dashboard; }"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with cdp.Browser(tmp_path_factory.mktemp("browser")) as b:
        yield b


def text_of(sel):
    return ("(function () { var e = document.querySelector(%r); "
            "return e ? e.textContent.trim() : null; })()" % sel)


def test_dashboard_live(browser, gateway_factory, nodes3):
    gw = gateway_factory(nodes3, cluster_extra=FAST_RETRY,
                         server_extra=DASHBOARD)
    gw.expect_errors()
    addrs = [node_addr(n) for n in nodes3]
    page = browser.open(gw.url("/?refresh=0.3"))

    page.wait("Array.from(document.querySelectorAll('tr[data-node]'))"
              ".map(function (e) { return e.dataset.node + ' '"
              " + e.dataset.state; })",
              [a + " up" for a in addrs])
    assert page.eval(text_of("section[data-cluster] h2")) == "cluster main"

    q = qname("dash")
    for i in range(5):
        assert gw.publish(q, "m%d" % i).status_code == 201
    page.wait(text_of('tr[data-queue="%s"] td.depth' % q), "5")
    # a rate once two samples saw the queue
    page.wait(text_of('tr[data-queue="%s"] td.rate-in' % q),
              lambda v: v is not None and v[0].isdigit())
    assert page.eval("document.getElementById('problem').className") == ""

    # a node that holds some of them killed: the page shows it down with
    # its error
    victim = next(n for n in nodes3 if node_items(n, q)[0] > 0)
    port = victim.port
    victim.kill()
    row = 'tr[data-node="%s"]' % node_addr(victim)
    page.wait("document.querySelector('%s').dataset.state" % row, "down")
    assert page.eval(text_of(row + " td.err .current"))
    # its messages are out of the sum while it is away
    page.wait(text_of('tr[data-queue="%s"] td.depth' % q),
              lambda v: v is not None and int(v) < 5)

    # back: up again, the error kept as history with its time
    victim.start(port=port)
    page.wait("document.querySelector('%s').dataset.state" % row, "up")
    page.wait(text_of(row + " td.err .current"), None)
    assert page.eval(text_of(row + " td.err")).startswith("last: ")
    page.wait(text_of('tr[data-queue="%s"] td.depth' % q), "5")
    page.leave()


def tour_server(port):
    return ("server { listen 127.0.0.1:%d; location / { root %s; } }"
            % (port, ROOT / "conf" / "www"))


def tour_url(port, gw, q):
    return ("http://127.0.0.1:%d/tour.html?gateway=%s&topic=%s&listen=1"
            % (port, gw.url(""), q))


MESSAGES = ("Array.from(document.querySelectorAll('#messages li'))"
            ".map(function (l) { return l.firstChild.textContent.trim(); })")


def test_other_origin_with_cors(browser, nodes3, gateway_factory):
    port = free_port()
    gw = gateway_factory(nodes3, http_extra=tour_server(port),
                         loc_extra="memq_cors http://127.0.0.1:%d;" % port)
    q = qname("cors")
    page = browser.open(tour_url(port, gw, q))
    page.wait(text_of("#es-state"), "open")

    assert gw.publish(q, "hello from curl").status_code == 201
    page.wait(MESSAGES, ["hello from curl"])

    # the page publishes too (fetch POST from its origin)
    page.eval("document.getElementById('body').value = 'from the page'; "
              "document.getElementById('publish').click()")
    page.wait(text_of("#publish-result"),
              lambda v: v is not None and '"queued":1' in v)
    page.wait(MESSAGES, ["hello from curl", "from the page"])
    # (nodes3 comes before gateway_factory: nginx stops first, with the
    # stream Chromium may still drain after the page left)
    page.leave()


def test_other_origin_without_cors(browser, gateway_factory, nodes3):
    port = free_port()
    gw = gateway_factory(nodes3, http_extra=tour_server(port))
    gw.expect_errors()
    q = qname("nocors")
    assert gw.publish(q, "stays").status_code == 201

    page = browser.open(tour_url(port, gw, q))
    # refused: the browser gives up on the stream
    page.wait(text_of("#es-state"), "closed")
    assert page.eval(MESSAGES) == []
    page.eval("document.getElementById('body').value = 'forged'; "
              "document.getElementById('publish').click()")
    page.wait(text_of("#publish-result"),
              lambda v: v is not None and v.startswith("failed"))

    # the gateway refused before taking anything: the message is still
    # there, and the page's publish did not get in
    gw.wait_access(lambda l: l.startswith("403 ") and q in l,
                   what="the page's consume refused")
    r = gw.consume(q)
    assert r.status_code == 200 and r.content == b"stays\n"
    page.leave()


def test_tour_same_origin(browser, nodes3, gateway_factory):
    gw = gateway_factory(nodes3, server_extra="location = /tour.html "
                         "{ root %s; }" % (ROOT / "conf" / "www"))
    q = qname("tour")
    page = browser.open(gw.url("/tour.html?topic=%s&listen=1" % q))
    page.wait(text_of("#es-state"), "open")
    # a same-origin POST carries Origin too: the gateway's own is allowed
    page.eval("document.getElementById('body').value = 'first'; "
              "document.getElementById('publish').click()")
    page.wait(MESSAGES, ["first"])
    assert gw.publish(q, "second").status_code == 201
    page.wait(MESSAGES, ["first", "second"])
    # (nodes3 comes before gateway_factory: nginx stops first, with the
    # stream Chromium may still drain after the page left)
    page.leave()
