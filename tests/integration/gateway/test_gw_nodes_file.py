"""nodes_file: read at start, watched every second (mtime and size), no
reload needed; comments and blank lines; a missing file is a warning; a node
in two sources is listed once (DESIGN §2, §3)."""

import os

from gwutil import fill, node_addr, qname, total_items, wait_for


def _write(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _addrs(g):
    return {n["addr"]: n for n in g.status().json()["clusters"][0]["nodes"]}


def test_node_added_and_removed_at_run_time(gateway_factory, memqd_factory,
                                            tmp_path):
    a, b = memqd_factory(), memqd_factory()
    nf = tmp_path / "main.nodes"
    g = gateway_factory([a], cluster_extra="nodes_file %s;" % nf)
    assert "[warn]" in g.error_text() and "missing" in g.error_text()
    assert set(_addrs(g)) == {node_addr(a)}

    _write(nf, "# the memq nodes\n\n%s weight=2   # new\n%s\n"
           % (node_addr(b), node_addr(a)))
    wait_for(lambda: node_addr(b) in _addrs(g), timeout=5,
             what="file node in the status")
    st = _addrs(g)
    assert len(st) == 2
    assert st[node_addr(b)]["source"] == "file"
    assert st[node_addr(b)]["weight"] == 2
    assert st[node_addr(a)]["source"] == "static"

    # both workers use it: publishes reach the new node, streams read it
    def both_used():
        q = qname()
        nodes = set()
        for i in range(12):
            r = g.publish(q, b"m")
            assert r.status_code == 201
            nodes.add(r.json()["node"])
        return nodes == {node_addr(a), node_addr(b)}
    wait_for(both_used, timeout=5, what="publishes on both nodes")
    # each worker re-reads the file on its own timer: drain until every
    # message came (a worker that has not yet seen the file reads only a)
    q = qname()
    sent = fill([a, b], q, 20)
    got = set()

    def drained():
        got.update(g.lines(q))
        return got == sent
    wait_for(drained, timeout=5, what="messages of both nodes drained")
    assert total_items([a, b], q) == 0

    _write(nf, "# emptied\n")
    wait_for(lambda: node_addr(b) not in _addrs(g), timeout=5,
             what="file node gone from the status")

    def only_a():
        q = qname()
        return all(g.publish(q, b"m").json()["node"] == node_addr(a)
                   for i in range(6))
    wait_for(only_a, timeout=5, what="publishes on the static node only")


def test_file_only_cluster(gateway_factory, memqd_factory, tmp_path):
    a = memqd_factory()
    nf = tmp_path / "only.nodes"
    _write(nf, "%s\n" % node_addr(a))
    g = gateway_factory([], cluster_extra="nodes_file %s;" % nf)
    q = qname()
    assert g.publish(q, b"via file").status_code == 201
    assert g.lines(q) == [b"via file"]


def test_bad_lines_are_warnings(gateway_factory, memqd_factory, tmp_path):
    a, b = memqd_factory(), memqd_factory()
    nf = tmp_path / "bad.nodes"
    _write(nf, "not an address\n%s weight=zero\n%s\n"
           % (node_addr(a), node_addr(b)))
    g = gateway_factory([a], cluster_extra="nodes_file %s;" % nf)
    assert set(_addrs(g)) == {node_addr(a), node_addr(b)}
    text = g.error_text()
    assert "bad line" in text or "bad node address" in text


def test_weight_past_1000_is_a_bad_line(gateway_factory, memqd_factory,
                                        tmp_path):
    """Weights 1-1000 as memqd --weight: a bigger one would wrap the
    node choice's sums (two nodes of weight 2^62 sum past the type)."""
    a, b, c = memqd_factory(), memqd_factory(), memqd_factory()
    nf = tmp_path / "heavy.nodes"
    _write(nf, "%s weight=4611686018427387904\n%s weight=1001\n"
           "%s weight=1000\n" % (node_addr(a), node_addr(b), node_addr(c)))
    g = gateway_factory([], cluster_extra="nodes_file %s;" % nf)
    st = _addrs(g)
    assert set(st) == {node_addr(c)}
    assert st[node_addr(c)]["weight"] == 1000
    text = g.error_text()
    assert 'bad line "%s weight=4611686018427387904"' % node_addr(a) in text
    assert 'bad line "%s weight=1001"' % node_addr(b) in text
