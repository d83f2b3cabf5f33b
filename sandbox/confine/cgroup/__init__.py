"""Layer 3: one cgroup per session: memory, pids and cpu limits, and a kill for the whole tree.

The kernel offers two interfaces and hosts mix them, so the layer has two small
implementations behind the same functions:

- cgroup v2, one unified tree: a single directory per session holding memory.max,
  memory.swap.max, pids.max, cpu.weight and cpu.max; ``cgroup.kill`` ends every process.
- cgroup v1, one tree per controller: a directory per session in each of the memory,
  pids and cpu trees, plus cpuacct (cpu time), freezer (a kill no fork can outrun) and
  cpuset (see ``sandbox/core_watch.py``) when those are mounted.

v2 is chosen when its tree offers the memory and pids controllers where the groups go,
else v1 when both are mounted; otherwise ``apply`` reports why the layer is inactive.

Where the groups go: ``<parent>/<session_key>`` in each tree.  A relative parent (the
default, ``codesherpa``) sits under the cgroup the calling process is in, so a service
that systemd or a container already limits keeps its sessions inside those limits.  The
worker and the service must then share a cgroup, as they do when the worker descends
from the service.  An absolute parent (``/codesherpa``) starts at the top of the mounted
tree; on a v2 host whose service group holds processes it is the way out, since v2 does
not let a group with processes hand controllers to its children.

At the end of a session read ``usage()`` and ``oom_killed()`` first, then call
``kill_and_remove()``: the counters live in the directories it removes.

The modules: ``discovery`` (finding the trees, choosing v1 or v2), ``groups`` (what
both versions do to a session's groups), ``v1`` and ``v2``, ``limits`` (the tables of
control files written and read), ``layer`` (the functions below), and beneath them
``tree`` and ``files``.  The CPU switches that hold a busy session are in
``sandbox/cpu_demotion.py``, beside ``sandbox/core_watch.py`` that uses them.
"""

from sandbox.confine.cgroup.discovery import PARENT_GROUP, select_version
from sandbox.confine.cgroup.groups import CgroupVersion, OomKillCounter
from sandbox.confine.cgroup.layer import (
    apply,
    kill_and_remove,
    oom_killed,
    probe,
    remove_all_sessions,
    session_paths,
    usage,
)
from sandbox.confine.cgroup.limits import CPU_PERIOD_US, CPU_QUOTA_CPUS
from sandbox.confine.cgroup.tree import Tree
from sandbox.confine.cgroup.v1 import CgroupV1
from sandbox.confine.cgroup.v2 import CgroupV2
from sandbox.cpu_demotion import (
    CpuPressure,
    all_cores_but_the_first,
    may_restore_policies,
    parse_cpu_list,
)

__all__ = [
    "CPU_PERIOD_US",
    "CPU_QUOTA_CPUS",
    "PARENT_GROUP",
    "CgroupV1",
    "CgroupV2",
    "CgroupVersion",
    "CpuPressure",
    "OomKillCounter",
    "Tree",
    "all_cores_but_the_first",
    "apply",
    "kill_and_remove",
    "may_restore_policies",
    "oom_killed",
    "parse_cpu_list",
    "probe",
    "remove_all_sessions",
    "select_version",
    "session_paths",
    "usage",
]
