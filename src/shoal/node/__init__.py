"""The node: one per machine. It owns the machine's worker processes, the
shared-memory object store, the object table and local scheduling.

In the embedded runtime (``shoal.init()`` with no address) the node lives in
the driver's process, on its own I/O thread, and the driver calls it
directly; workers talk to it over inherited socketpairs.
"""
