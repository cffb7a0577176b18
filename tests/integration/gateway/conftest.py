"""
Fixtures for the gateway tests.

  gateway_factory  start(nodes, **options) -> Gateway: real nginx with the
                   memq module on a free port in a fresh prefix; every one
                   started is stopped at teardown and its error log checked
                   (no [alert], [emerg], [crit], crashed worker).
  nodes3           three real memqd nodes (memqd_factory of the parent
                   conftest: they are stopped and checked there).
  gw               a gateway in front of nodes3.
  netlab_factory   make(n) -> NetLab (netns_util): n hosts in network
                   namespaces, deleted at teardown; skips the test where
                   namespaces cannot be made.  Ask for it before
                   gateway_factory, so that nginx inside stops first.
"""

import pytest

from gwutil import Gateway
from netns_util import NetLab, NetlabUnavailable


@pytest.fixture
def gateway_factory(tmp_path):
    gws = []

    def start(nodes, **kw):
        g = Gateway(tmp_path / ("nginx%d" % len(gws)), nodes, **kw)
        gws.append(g)
        g.start()
        return g

    yield start

    errors = []
    for g in gws:
        try:
            g.stop()
            g.check_log()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def nodes3(memqd_factory):
    return [memqd_factory() for _ in range(3)]


@pytest.fixture
def gw(gateway_factory, nodes3):
    return gateway_factory(nodes3)


@pytest.fixture
def netlab_factory():
    labs = []

    def make(n):
        try:
            lab = NetLab.create(n)
        except NetlabUnavailable as e:
            pytest.skip("cannot create network namespaces here: %s" % e)
        labs.append(lab)
        return lab

    yield make

    problems = []
    for lab in labs:
        problems += lab.close()
    assert not problems, "netns teardown: %s" % problems
