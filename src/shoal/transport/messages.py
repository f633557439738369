"""Every message between processes, declared once.

A message is a tuple whose first element is its type code below; the rest are
its fields, in the order documented here. Tuples of builtins pickle fast, so
the hot messages (SUBMIT, EXECUTE, DONE, REFS) stay cheap. PROTOCOL_VERSION
changes whenever a layout changes; HELLO carries it so a mismatched worker is
refused instead of misread.

Object values travel as ``(kind, payload, contained)`` (see
``serialization``): kind INLINE carries the packed bytes, kind SHM an
``(offset, size, layout)`` location in the shared-memory arena, kind ERROR a
pickled exception; ``contained`` lists the ids of refs nested in the value.

Task specs travel as the tuple made by ``TaskSpec.to_wire`` (scheduler/task.py).
"""

PROTOCOL_VERSION = 4

# worker -> node --------------------------------------------------------------
HELLO = 1          # (HELLO, version, worker_id, pid)
SUBMIT = 2         # (SUBMIT, spec_wire)                 task, actor creation or actor call
DONE = 3           # (DONE, task_id, results, retryable, failure, start, end)
                   #   results: [(object_id, value)]; failure: None or (type, message, traceback);
                   #   start, end: the run by time.time(), 0.0 if it never ran
GEN_ITEM = 4       # (GEN_ITEM, task_id, index, value)   one streamed generator item
PUT = 5            # (PUT, object_id, value)
REFS = 6           # (REFS, incs, decs)                  local ref counts that crossed 0
CALL = 7           # (CALL, request_id, op, args)        a node service call; REPLY answers
REVOKED = 8        # (REVOKED, task_ids)                 queued tasks given back after REVOKE
EXPORT = 10        # (EXPORT, function_id, blob)         a function or class, pickled once
ACTOR_READY = 11   # (ACTOR_READY, actor_id)
ACTOR_EXIT = 12    # (ACTOR_EXIT, actor_id)              exit_actor() was called
METRICS = 13       # (METRICS, updates)                  user metrics changed (util/metrics.py):
                   #   [(name, tags, kind, description, boundaries, value)]

# node -> worker --------------------------------------------------------------
EXECUTE = 20       # (EXECUTE, spec_wire, function_blob|None, dep_values, assigned)
REPLY = 21         # (REPLY, request_id, ok, value)
CANCEL = 22        # (CANCEL, task_id)                   interrupt the task if it runs
EXIT = 23          # (EXIT,)                             finish and exit
REVOKE = 24        # (REVOKE, task_ids)                  give back these tasks if not started
OUTPUT = 25        # (OUTPUT, to_stderr, text[, job_id])  workers' output, to drivers (job_id on links: None for all)
NODE_ID = 26       # (NODE_ID, node_id)                  the node rejoined under a new id

# node <-> node (a peer link, node/peers.py; CALL, REPLY, EXPORT, OUTPUT too) ---
PUSH = 30          # (PUSH, [(object_id, value)])       copies the receiver now borrows
RELEASE = 31       # (RELEASE, [(object_id, n)])        borrowed copies the receiver freed
FORWARD = 32       # (FORWARD, spec_wire, values, request_id) run this task here; values as
                   #   PUSH; answered by a REPLY to request_id with the returns' values
PACKAGE = 33       # (PACKAGE, package_id, bytes)       a driver's working directory (runtime_env.py)

# object value kinds ----------------------------------------------------------
INLINE = 0
SHM = 1
ERROR = 2
SPILLED = 3     # on the node's disk: (path, size, layout); restored before it is shipped
REMOTE = 4      # in another node's store: (node_id, size, layout); fetched when needed
PENDING = 5     # not made yet; the node that sent it answers a peer_wait when it is
