"""Where object values live.

``arena``: one shared-memory file (memfd) mapped by every process of a node;
large values are written into it once and read as zero-copy views.
``allocator``: which parts of the arena are free (node side, no I/O).
``table``: each object's lifecycle and reference counts (node side, no I/O).
"""
