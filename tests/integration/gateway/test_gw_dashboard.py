"""
memq_dashboard without a browser: the page as served (self-contained, the
status URL in place, headers), methods, and configurations refused at load
(a URL that could leave its attribute, a location shared with memq_pass or
memq_status).  The page at work in Chromium: test_gw_browser.py.
"""

import re

import pytest
import requests

from gwutil import SLOW, Gateway, ROOT


def test_page_served(gateway_factory, nodes3):
    gw = gateway_factory(nodes3, server_extra="""
        location = / { memq_dashboard; }
        location = /ops/ { memq_dashboard http://127.0.0.1:1/st?x=1; }""")
    r = requests.get(gw.url("/"), timeout=10 * SLOW)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-cache"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    page = r.text
    assert '<meta name="memq-status" content="/mq/status">' in page
    assert "@MEMQ_STATUS_URL@" not in page

    # the page as written in the repository, marker replaced: nothing else
    src = (ROOT / "ngx_memq" / "dashboard.html").read_text()
    assert page == src.replace("@MEMQ_STATUS_URL@", "/mq/status")
    assert int(r.headers["Content-Length"]) == len(page.encode())

    # self-contained: no resource from anywhere
    assert not re.search(r"<(script|link|img|iframe)[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*href=\"(?!data:)", page)
    assert "@import" not in page

    r = requests.get(gw.url("/ops/"), timeout=10 * SLOW)
    assert '<meta name="memq-status" content="http://127.0.0.1:1/st?x=1">' \
        in r.text

    r = requests.head(gw.url("/"), timeout=10 * SLOW)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["Content-Length"]) == len(page.encode())
    r = requests.post(gw.url("/"), data="x", timeout=10 * SLOW)
    assert r.status_code == 405


@pytest.mark.parametrize("loc, expect", [
    ('memq_dashboard \'/a"b\';', 'invalid status URL'),
    ("memq_dashboard '/a<b';", 'invalid status URL'),
    ("memq_dashboard '/a b';", 'invalid status URL'),
    ("memq_dashboard ''; ", 'invalid status URL'),
    ("memq_dashboard /a /b;", 'invalid number of arguments'),
    ("memq_dashboard; memq_dashboard;", 'is duplicate'),
    ("memq_dashboard; memq_status;", 'is duplicate'),
    ("memq_status; memq_dashboard;", 'cannot share a location'),
    ("memq_dashboard; memq_pass main;", 'is duplicate'),
])
def test_bad_dashboard_refused_at_load(tmp_path, loc, expect):
    g = Gateway(tmp_path, ["127.0.0.1:22201"],
                server_extra="location = /d { %s }" % loc)
    ok, out = g.test_conf()
    assert not ok, out
    assert "[emerg]" in out and expect in out, out
