"""The Debian packages (DESIGN §6, Operations): `make deb` builds memqd,
libnginx-mod-http-memq and memq-tools; lintian finds no error; they
install with dpkg -i on this machine; memqd runs from the unit's ExecStart
as the memq user and says READY; memq-bench and Debian's nginx with the
module (loaded through /etc/nginx/modules-enabled) talk to it; nginx -t
passes with the module enabled; dpkg --purge leaves the machine as it
was.

The tests of this file run in order on one installation (module fixture
`installed`), the last one purges; the fixture purges too if a test
failed first.  They change the machine's package set, so they need root
(and are skipped without it).  `make deb` does nothing when build/deb is
newer than the sources (scripts/build-deb.sh).
"""

import os
import grp
import pwd
import re
import resource
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from memqlib import ROOT, SLOW, Client, free_port, qname, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="installs packages: needs root")

PACKAGES = ["memqd", "libnginx-mod-http-memq", "memq-tools"]
OUT = ROOT / "build" / "deb"
UNIT = Path("/lib/systemd/system/memqd.service")
CONF = Path("/etc/memq/memqd.conf")
MOD_SO = Path("/usr/lib/nginx/modules/ngx_http_memq_module.so")
MOD_AVAILABLE = Path("/usr/share/nginx/modules-available/mod-http-memq.conf")
MOD_ENABLED = Path("/etc/nginx/modules-enabled/50-mod-http-memq.conf")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/memqd.service")
DATA = Path("/var/lib/memq")

# files each package must install
FILES = {
    "memqd": ["/usr/sbin/memqd", str(UNIT), str(CONF),
              "/usr/share/man/man8/memqd.8.gz",
              "/usr/share/doc/memqd/copyright"],
    "libnginx-mod-http-memq": [str(MOD_SO), str(MOD_AVAILABLE)],
    "memq-tools": ["/usr/bin/memq-bench",
                   "/usr/share/man/man1/memq-bench.1.gz",
                   "/usr/bin/memqctl",
                   "/usr/share/man/man1/memqctl.1.gz"],
}


def run(args, timeout=60, **kw):
    return subprocess.run(args, capture_output=True, text=True,
                          timeout=timeout * SLOW, stdin=subprocess.DEVNULL,
                          **kw)


def dpkg(*args):
    """dpkg ARGS, waiting (with a deadline) while another dpkg or apt on
    this machine holds the lock."""
    end = time.monotonic() + 120 * SLOW
    while True:
        r = run(["dpkg"] + list(args), timeout=120)
        if r.returncode == 0 or "lock" not in r.stderr or \
                time.monotonic() > end:
            return r
        time.sleep(0.5)


def status(pkg):
    r = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg])
    return r.stdout.strip() if r.returncode == 0 else "not known"


def installed_any():
    return [p for p in PACKAGES if status(p).startswith(("ii", "rc", "iF",
                                                         "iU", "hi"))]


def purge():
    left = installed_any()
    if left:
        return dpkg("--purge", *left)
    return None


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def nginx_t(conf=None):
    args = ["nginx", "-t", "-q"]
    if conf is not None:
        args += ["-c", str(conf)]
    return run(args)


@pytest.fixture(scope="module")
def debs():
    r = run(["make", "-s", "deb"], timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, "make deb failed:\n%s\n%s" % (r.stdout,
                                                          r.stderr[-4000:])
    built = (OUT / ".built").read_text().split()
    paths = {}
    for pkg in PACKAGES:
        m = [OUT / f for f in built if f.startswith(pkg + "_")]
        assert len(m) == 1, (pkg, built)
        paths[pkg] = m[0]
    return paths


@pytest.fixture(scope="module")
def installed(debs):
    """The three packages installed with dpkg -i; the state of the
    machine before, for the purge test to compare with."""
    r = purge()                     # leftovers of an interrupted run
    assert r is None or r.returncode == 0, r
    assert status("nginx").startswith("ii"), "Debian's nginx is not installed"
    assert nginx_t().returncode == 0, "stock nginx config fails before"
    before = {
        "modules_enabled": sorted(os.listdir("/etc/nginx/modules-enabled")),
        "memq_user": user_exists("memq"),
        "memq_group": group_exists("memq"),
    }
    assert not DATA.exists() and not CONF.exists(), \
        "memq files present without the packages"
    r = dpkg("-i", *[str(p) for p in debs.values()])
    assert r.returncode == 0, "dpkg -i failed:\n%s%s" % (r.stdout, r.stderr)
    try:
        yield before
    finally:
        purge()


def unit_settings():
    """[Service] and other keys of the installed unit, as {key: [values]}."""
    out = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def gateway_round_trip(tmp_path, node_port, topic):
    """Debian's nginx with the packaged module, loaded only through
    /etc/nginx/modules-enabled, publishes to and drains the installed
    memqd."""
    import requests

    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    port = free_port()
    conf = tmp_path / "gateway.conf"
    conf.write_text("""
include /etc/nginx/modules-enabled/*.conf;
user root;
worker_processes 1;
error_log {t}/error.log info;
pid {t}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    memq_cluster main {{ node 127.0.0.1:{node}; }}
    server {{
        listen 127.0.0.1:{port};
        location /mq {{ memq_pass main; memq_key $arg_topic; }}
    }}
}}
""".format(t=tmp_path, node=node_port, port=port))
    # the default prefix: the snippet's "modules/..." is relative to it
    err = tmp_path / "nginx.stderr"
    with open(err, "wb") as f:
        p = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    url = "http://127.0.0.1:%d/mq?topic=%s" % (port, topic)
    try:
        def publish():
            assert p.poll() is None, err.read_text()
            try:
                return requests.post(url, data=b"through the gateway",
                                     timeout=5 * SLOW)
            except requests.ConnectionError:
                return None
        r = wait_for(publish, timeout=10, what="nginx with the module")
        assert r.status_code == 201, r.text
        assert r.json() == {"queued": 1, "node": "127.0.0.1:%d" % node_port}
        r = requests.get(url, timeout=10 * SLOW)
        assert r.status_code == 200
        assert r.text == "through the gateway\n"
    finally:
        p.terminate()
        p.wait(10 * SLOW)
    log = (tmp_path / "error.log").read_text()
    assert not re.search(r"\[(error|crit|alert|emerg)\]", log), log


# --------------------------------------------------------------- build

def test_lintian_finds_no_errors(debs):
    changes = sorted(OUT.glob("memq_*.changes"))
    assert len(changes) == 1, changes
    r = run(["lintian", "--tag-display-limit", "0", str(changes[0])],
            timeout=300)
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("E:")]
    assert not errors, "lintian errors:\n" + r.stdout
    assert r.returncode == 0, r       # it ran (and failed on no error)


def test_packages_hold_their_files(debs):
    for pkg, path in debs.items():
        r = run(["dpkg-deb", "-c", str(path)])
        listed = {ln.split()[-1].lstrip(".") for ln in r.stdout.splitlines()}
        for f in FILES[pkg]:
            assert f in listed, "%s lacks %s" % (path.name, f)
    r = run(["dpkg-deb", "-f", str(debs["libnginx-mod-http-memq"]),
             "Depends"])
    # dh_nginx ties the module to the nginx ABI it was built for
    assert re.search(r"\bnginx-abi-[\d.]+-\d+", r.stdout), r.stdout


# --------------------------------------------------------- installation

def test_files_and_conffile(installed):
    for pkg, files in FILES.items():
        assert status(pkg) == "ii", (pkg, status(pkg))
        for f in files:
            assert os.path.isfile(f), "%s: %s missing" % (pkg, f)
    assert os.access("/usr/sbin/memqd", os.X_OK)
    r = run(["dpkg-query", "-W", "-f", "${Conffiles}", "memqd"])
    assert str(CONF) in r.stdout, "not a conffile: %r" % r.stdout
    assert "[memqd]" in CONF.read_text()
    # memqd enabled for boot by deb-systemd-helper
    assert WANTS.is_symlink() and os.readlink(WANTS) == str(UNIT)


def test_system_user_and_data_dir(installed):
    u = pwd.getpwnam("memq")
    assert u.pw_uid < 1000, "not a system user: uid %d" % u.pw_uid
    assert u.pw_dir == str(DATA)
    assert u.pw_shell in ("/usr/sbin/nologin", "/bin/false"), u.pw_shell
    assert grp.getgrgid(u.pw_gid).gr_name == "memq"
    st = DATA.stat()
    assert (st.st_uid, st.st_gid) == (u.pw_uid, u.pw_gid)
    assert st.st_mode & 0o7777 == 0o750


def test_man_page_and_versions(installed):
    r = run(["man", "--warnings", "-l", "/usr/share/man/man8/memqd.8.gz"],
            env=dict(os.environ, MANWIDTH="80", LC_ALL="C"))
    assert r.returncode == 0 and "--max-item-size" in r.stdout, r
    assert r.stderr == "", r.stderr
    want = run(["dpkg-query", "-W", "-f", "${Version}", "memqd"]).stdout
    r = run(["/usr/sbin/memqd", "--version"])
    assert r.stdout == "memqd %s\n" % want.split("-")[0], r.stdout


def test_unit_is_notify_and_hardened(installed):
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["User"] == ["memq"]
    for key, want in (("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                      ("ReadWritePaths", str(DATA))):
        assert s.get(key) == [want], (key, s.get(key))
    assert int(s["LimitNOFILE"][0]) >= 10000 + 1024
    # systemd parses it: every key known, ExecStart executable, man page
    r = run(["systemd-analyze", "verify", str(UNIT)])
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_memqd_runs_from_unit_execstart(installed, tmp_path):
    """The unit's ExecStart, as its User= with its LimitNOFILE= and
    NoNewPrivileges= (systemd is not PID 1 here, so setpriv and prlimit
    stand in for it), with NOTIFY_SOCKET set; --listen on a free port is
    added (the command line wins over the conffile's 22201)."""
    if os.path.isdir("/run/systemd/system"):
        # systemd runs this machine: the postinst started the unit, which
        # is active only once READY=1 came; stop it to run it by hand
        r = run(["systemctl", "is-active", "memqd"])
        assert r.stdout.strip() == "active", r
        assert run(["systemctl", "stop", "memqd"]).returncode == 0

    s = unit_settings()
    execstart = shlex.split(s["ExecStart"][0])
    assert execstart[0] == "/usr/sbin/memqd" and str(CONF) in execstart
    # systemd raises the hard limit too; a container may not let root
    # go past its own, so at most that
    nofile = min(int(s["LimitNOFILE"][0]),
                 resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    user = s["User"][0]
    port = free_port()

    name = "memq-pkg-notify-%d" % os.getpid()
    note = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    note.bind("\0" + name)          # abstract: no file permissions
    note.settimeout(20 * SLOW)
    err = open(tmp_path / "memqd.stderr", "wb")
    p = subprocess.Popen(
        ["prlimit", "--nofile=%d:%d" % (nofile, nofile), "--",
         "setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups",
         "--no-new-privs", "--"] + execstart +
        ["--listen", "127.0.0.1:%d" % port],
        stdin=subprocess.DEVNULL, stdout=err, stderr=err,
        env=dict(os.environ, NOTIFY_SOCKET="@" + name))
    try:
        try:
            assert note.recv(256) == b"READY=1"
        except socket.timeout:
            pytest.fail("no READY=1; stderr:\n%s"
                        % (tmp_path / "memqd.stderr").read_text())

        # ready means serving, recovered, as memq, with the unit's limit
        c = Client(("127.0.0.1", port))
        assert c.cmd("version").startswith("VERSION memqd ")
        status_text = Path("/proc/%d/status" % p.pid).read_text()
        uid = pwd.getpwnam(user).pw_uid
        assert re.search(r"^Uid:\s+%d\s+%d" % (uid, uid), status_text, re.M)
        assert re.search(r"^NoNewPrivs:\s+1", status_text, re.M)
        limits = Path("/proc/%d/limits" % p.pid).read_text()
        assert re.search(r"Max open files\s+%d\s+%d" % (nofile, nofile),
                         limits), limits

        # the data goes to /var/lib/memq (the conffile's data_dir)
        q = qname()
        c.store(q, b"from the package")
        assert c.getdata(q) == b"from the package"
        files = [f for f in DATA.rglob("*") if f.is_file()]
        assert files, "nothing written below %s" % DATA
        assert all(f.stat().st_uid == uid for f in files)

        # memq-tools' memq-bench drives it
        r = run(["memq-bench", "-p", str(port), "-n", "200", "-c", "2",
                 "-q", q, "-Q"])
        assert r.returncode == 0 and "errors=0" in r.stdout, r
        r = run(["memq-bench", "-p", str(port), "-n", "200", "-c", "2",
                 "-q", q, "-m", "consume", "-Q"])
        assert r.returncode == 0 and "msgs=200 " in r.stdout, r
        c.close()

        gateway_round_trip(tmp_path, port, qname())

        p.terminate()
        assert note.recv(256) == b"STOPPING=1"
        assert p.wait(20 * SLOW) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        note.close()
        err.close()


def test_nginx_loads_module_from_modules_enabled(installed, tmp_path):
    """The module is enabled by a symlink in /etc/nginx/modules-enabled,
    the stock nginx.conf passes nginx -t with it, and a configuration
    that includes modules-enabled (as the stock one does) knows the
    module's directives; without the include it does not."""
    assert MOD_ENABLED.is_symlink()
    assert os.readlink(MOD_ENABLED) == str(MOD_AVAILABLE)
    assert "load_module modules/ngx_http_memq_module.so;" in \
        MOD_AVAILABLE.read_text()
    assert "include /etc/nginx/modules-enabled/*.conf;" in \
        Path("/etc/nginx/nginx.conf").read_text()

    r = nginx_t()
    assert r.returncode == 0, r.stderr

    body = ("pid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\n"
            "http {\n  access_log off;\n"
            "  memq_cluster main { node 127.0.0.1:22201; }\n}\n"
            % (tmp_path, tmp_path))
    with_mod = tmp_path / "with.conf"
    with_mod.write_text("include /etc/nginx/modules-enabled/*.conf;\n" + body)
    without = tmp_path / "without.conf"
    without.write_text(body)
    r = nginx_t(with_mod)
    assert r.returncode == 0, r.stderr
    r = nginx_t(without)
    assert r.returncode != 0 and 'unknown directive "memq_cluster"' in \
        r.stderr, r.stderr


def test_purge_leaves_the_machine_as_before(installed):
    r = dpkg("--purge", *PACKAGES)
    assert r.returncode == 0, r.stdout + r.stderr
    for pkg in PACKAGES:
        assert status(pkg) in ("un", "not known", ""), (pkg, status(pkg))
    for files in FILES.values():
        for f in files:
            assert not os.path.exists(f), "%s left after purge" % f
    dsh = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    for path in (MOD_ENABLED, Path(str(MOD_ENABLED) + ".removed"), WANTS,
                 DATA, CONF.parent, dsh / "memqd.service.dsh-also",
                 dsh / "multi-user.target.wants" / "memqd.service"):
        assert not os.path.lexists(path), "%s left after purge" % path
    assert user_exists("memq") == installed["memq_user"]
    assert group_exists("memq") == installed["memq_group"]
    assert sorted(os.listdir("/etc/nginx/modules-enabled")) == \
        installed["modules_enabled"]
    # Debian's nginx stays, and its stock configuration still passes
    assert status("nginx").startswith("ii")
    r = nginx_t()
    assert r.returncode == 0, r.stderr
    assert not installed_any()
