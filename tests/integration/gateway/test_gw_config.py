"""Directives: bad values are clear `nginx -t` errors naming the directive
and the value (DESIGN §2; STYLE §6: rejected at load time)."""

import pytest

from gwutil import Gateway

NODE = "127.0.0.1:22201"

LOC = """
            memq_pass main;
            memq_key $arg_topic;
"""


@pytest.mark.parametrize("kw,expect", [
    ({"cluster_extra": "keepalive many;"},
     'invalid number "many" in "keepalive"'),
    ({"cluster_extra": "max_fails -1;"}, 'invalid number "-1"'),
    ({"cluster_extra": "keepalive_timeout soon;"},
     'invalid time "soon" in "keepalive_timeout"'),
    ({"cluster_extra": "fail_timeout 0;"}, 'invalid time "0"'),
    ({"cluster_extra": "connect_timeout 2s;"},
     '"connect_timeout" directive is duplicate in memq_cluster'),
    ({"cluster_extra": "node nowhere;"}, 'in "node nowhere"'),
    ({"cluster_extra": "node 127.0.0.1:22202 weight=0;"},
     'invalid parameter "weight=0" of "node"'),
    # node choice multiplies weights by owed replies and sums them: a
    # weight past 1000 (memqd --weight's limit) is refused, not wrapped
    ({"cluster_extra": "node 127.0.0.1:22202 weight=1001;"},
     'invalid parameter "weight=1001" of "node"'),
    ({"cluster_extra": "node 127.0.0.1:22202 weight=4611686018427387904;"},
     'invalid parameter "weight=4611686018427387904" of "node"'),
    ({"cluster_extra": "node %s;" % NODE}, 'duplicate node in "node'),
    ({"cluster_extra": "nodes 1.2.3.4:5;"},
     'unknown directive "nodes" in memq_cluster'),
    ({"cluster_extra": "keepalive;"}, 'invalid number of arguments'),
    ({"loc": LOC + "memq_batch 0;"}, "memq_batch"),
    ({"loc": LOC + "memq_batch 1001;"}, "memq_batch"),
    ({"loc": LOC + "memq_batch 64; memq_batch 32;"}, "is duplicate"),
    ({"loc": LOC + "memq_wait_max forever;"}, "memq_wait_max"),
    ({"loc": LOC + "memq_inflate maybe;"}, "memq_inflate"),
    ({"loc": LOC + "memq_compress_flag 0;"}, "memq_compress_flag"),
    ({"loc": LOC + "memq_inflate_max_size huge;"}, "memq_inflate_max_size"),
    ({"loc": LOC + "memq_compress_min_size -4k;"},
     "memq_compress_min_size"),
    ({"loc": "memq_pass nope; memq_key $arg_topic;"},
     'unknown memq_cluster "nope" in "memq_pass"'),
    ({"loc": "memq_pass main;"}, '"memq_pass main" needs "memq_key"'),
    ({"loc": LOC + "memq_pass main;"}, "is duplicate"),
])
def test_bad_directive(tmp_path, kw, expect):
    g = Gateway(tmp_path, [NODE], **kw)
    ok, out = g.test_conf()
    assert not ok, out
    assert "[emerg]" in out and expect in out, out


def test_cluster_needs_nodes(tmp_path):
    g = Gateway(tmp_path, [])
    ok, out = g.test_conf()
    assert not ok
    assert 'memq_cluster "main" has no "node" and no "nodes_file"' in out


def test_good_config(tmp_path):
    g = Gateway(tmp_path, [NODE, "127.0.0.1:22202"],
                weights={"127.0.0.1:22202": 2},
                cluster_extra="keepalive 32; keepalive_timeout 60s; "
                              "max_fails 3; fail_timeout 10s; "
                              "nodes_file %s/x.nodes;" % tmp_path,
                loc=LOC + "memq_wait_max 30s; memq_batch 64; "
                          "memq_inflate on; memq_compress_flag 2; "
                          "memq_inflate_max_size 16m; "
                          "memq_compress_min_size 4k; "
                          "memq_sse_heartbeat 15s;")
    ok, out = g.test_conf()
    assert ok, out
