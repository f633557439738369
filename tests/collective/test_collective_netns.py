"""A collective group member's machine cut off mid-operation: machines made
of network namespaces (tests/cluster/netns.py), a member on each, and
machine b's cable pulled (``ip link set down``) while rank 0 on machine a
waits in an allreduce that rank 1 never calls. A vanished machine sends no
FIN or RST, so nothing closes: rank 0 must notice by itself. The group's
timeout_s is 300 s, far beyond the tests' own timeouts, so passing shows
that detection did not wait the group out. Each case pins the mechanism
that must notice (the message says which):

- ring, nothing of rank 0's in flight: TCP keepalive (the head would take
  120 s to declare b dead here, so the node view cannot come first);
- ring, rank 0's 16 MB half stuck behind b's full receive window (the
  kernel does not send keepalive probes then): b leaving shoal's view of
  nodes (declared dead after 2 s);
- gloo: the group's watchdog, through the node view.
"""
from __future__ import annotations

import pytest

from ..cluster.netns import requires_netns
from ..cluster.test_netns_workloads import make_cluster  # noqa: F401 - a fixture
from ..conftest import wait_for

pytestmark = [requires_netns, pytest.mark.heavy]

CUT_ALLREDUCE = '''
import shoal.collective as col
wait_linked(["a", "b"])
BACKEND = ARGS["backend"]

@shoal.remote(num_cpus=0)
class Member:
    def join(self, rank):
        col.init_collective_group(2, rank, backend=BACKEND, group_name="g", timeout_s=300)
        return col.get_backend("g"), machine()

    def allreduce(self, n):
        """Touch ARGS["started"] once this member's part is on its way (on
        the ring: posted, and with ARGS["flush"] handed to the kernel, which
        b's kernel then acknowledges at once), then wait in the allreduce."""
        if BACKEND == "ring":
            from shoal.collective.ring import RingGroup
            recv = RingGroup._recv

            def marked(group, *args, **kwargs):
                RingGroup._recv = recv
                if ARGS["flush"]:
                    group._flush()
                touch(ARGS["started"])
                return recv(group, *args, **kwargs)
            RingGroup._recv = marked
        else:
            touch(ARGS["started"])
        try:
            col.allreduce(np.ones(n), group_name="g")
        except Exception as e:
            return type(e).__name__, str(e)
        return "returned", ""

members = [Member.options(resources={"at_a": 0.01}).remote(),
           Member.options(resources={"at_b": 0.01}).remote()]
emit("joined", shoal.get([m.join.remote(r) for r, m in enumerate(members)], timeout=90))
emit("result", shoal.get(members[0].allreduce.remote(ARGS["n"]), timeout=250))
'''


@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend, n, node_timeout_s, noticed_by", [
    ("ring", 1000, "120", "rank 1's machine stopped answering (no reply to TCP keepalive"),
    ("ring", 1 << 22, "2", "was lost with its node"),
    ("gloo", 1000, "2", "was lost with its node"),
], ids=["ring-keepalive", "ring-node-view", "gloo-watchdog"])
def test_a_member_whose_machine_is_cut_off_fails_the_others_allreduce(
        make_cluster, tmp_path, backend, n, node_timeout_s, noticed_by):  # noqa: F811
    if backend == "gloo":
        pytest.importorskip("torch", reason="the gloo backend is torch.distributed's")
    c = make_cluster(["a", "b"])
    env = c.env
    c.env = lambda *args, **kwargs: dict(env(*args, **kwargs),
                                         SHOAL_NODE_TIMEOUT_S=node_timeout_s)
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2)
    c.wait_alive()
    started = tmp_path / "started"
    # the keepalive case flushes first: nothing of rank 0's is left in flight
    d = c.driver("a", CUT_ALLREDUCE, backend=backend, n=n, started=str(started),
                 flush="keepalive" in noticed_by)
    (backend_0, machine_0), (backend_1, machine_1) = d.result("joined", timeout=100)
    assert backend_0 == backend_1 == backend and machine_0 != machine_1
    wait_for(started.exists, timeout=60, interval=0.05, what="rank 0 to wait in its allreduce")
    c.fabric.link("b", False)
    kind, message = d.result("result", timeout=120)
    assert kind == "CollectiveError", (kind, message)
    assert "rank 1" in message and noticed_by in message, message
    assert "timed out after" not in message, message        # not the group's timeout
