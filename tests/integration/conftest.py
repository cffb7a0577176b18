"""
Fixtures for the memqd integration suite (helpers: memqlib.py).

  memqd_factory  start(args=(), config=None, data_dir=None, env=None) ->
                 Memqd; starts a real memqd on a free loopback port in a
                 fresh data dir (or the one given), waits until `version`
                 answers, and stops every server it started at teardown with
                 SIGTERM, asserting exit status 0, nothing on stdout and,
                 under MEMQ_SANITIZED, a clean sanitizer report.
  server         one default memqd, or the one named by MEMQD_ADDR.
  client         a raw-socket Client connected to `server`.
  connect        factory: connect(server=None) -> Client (closed at teardown).
  pmc            factory: pmc(server=None) -> pymemcache Client.

See memqlib.py for the environment variables (MEMQD, MEMQ_SANITIZED,
MEMQD_ADDR).
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from memqlib import *          # noqa: E402,F401,F403  (re-exported)
from memqlib import (EXTERNAL, SLOW, Client, Memqd)  # noqa: E402

_THIS = sys.modules.get(__name__)


def pytest_collectstart(collector):
    """Test files in this directory may still say `from conftest import
    ...`: pytest registers every conftest.py under the one module name
    "conftest", and the one of a subdirectory (gateway/) loads later and
    takes that name.  Point it back at this file while a test module of
    this directory is imported."""
    if isinstance(collector, pytest.Module) and _THIS is not None and \
            Path(str(collector.path)).parent == HERE:
        sys.modules["conftest"] = _THIS


def require_local():
    if EXTERNAL:
        pytest.skip("needs its own memqd (MEMQD_ADDR is set)")


@pytest.fixture
def memqd_factory(tmp_path):
    servers = []

    def start(args=(), config=None, data_dir=None, env=None, wait=True):
        require_local()
        d = tmp_path / ("srv%d" % len(servers))
        d.mkdir()
        s = Memqd(d, data_dir=data_dir, args=args, config=config, env=env)
        servers.append(s)
        if wait:
            s.start()
        return s

    yield start

    errors = []
    for s in servers:
        try:
            if s.proc is not None:
                s.stop_checked()
            else:
                s.check_sanitizer()
            s.check_stdout_empty()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def server(memqd_factory, tmp_path):
    if EXTERNAL:
        return Memqd(tmp_path, external=EXTERNAL)
    return memqd_factory()


@pytest.fixture
def connect(server):
    clients = []

    def make(srv=None, timeout=5.0):
        c = Client((srv or server).addr, timeout)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(connect):
    return connect()


@pytest.fixture
def pmc(server):
    from pymemcache.client.base import Client as PmcClient
    made = []

    def make(srv=None, **kw):
        srv = srv or server
        kw.setdefault("connect_timeout", 5 * SLOW)
        kw.setdefault("timeout", 5 * SLOW)
        c = PmcClient(srv.addr, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


