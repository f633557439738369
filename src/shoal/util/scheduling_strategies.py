"""Where a task or actor should run: ``scheduling_strategy=`` of ``.options()``.

Ray's strategies, with Ray's names and arguments:

- ``"DEFAULT"``: the node with free resources that holds the task's large
  arguments, else any node with room.
- ``"SPREAD"``: spread tasks/actors over the nodes that fit.
- ``NodeAffinitySchedulingStrategy(node_id, soft)``: on that node; if it is
  gone or can never fit the request, ``soft=True`` falls back to the default
  and ``soft=False`` fails the task (TaskUnschedulableError) or actor
  (ActorUnschedulableError).
- ``PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index,
  placement_group_capture_child_tasks)``: inside a bundle of a placement group.

On the wire a strategy is a small tuple (``to_wire``) kept in the spec's options.
"""
from __future__ import annotations


class PlacementGroupSchedulingStrategy:
    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None):
        from .placement_group import PlacementGroup
        if not isinstance(placement_group, PlacementGroup):
            raise TypeError("PlacementGroupSchedulingStrategy needs a PlacementGroup (from "
                            f"shoal.util.placement_group(...)), got {placement_group!r}")
        index = placement_group_bundle_index
        if not isinstance(index, int) or isinstance(index, bool) or index < -1:
            raise ValueError("placement_group_bundle_index must be an int >= -1 (-1: any "
                             f"bundle), got {index!r}")
        if index >= placement_group.bundle_count:
            raise ValueError(f"placement_group_bundle_index {index} is out of range: the "
                             f"placement group has {placement_group.bundle_count} bundle(s)")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def to_wire(self) -> tuple:
        return ("PG", self.placement_group.id.binary(), self.placement_group_bundle_index,
                bool(self.placement_group_capture_child_tasks))

    def __repr__(self):
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"bundle_index={self.placement_group_bundle_index})")


class NodeAffinitySchedulingStrategy:
    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        if isinstance(node_id, bytes):
            node_id = node_id.hex()
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a node id string (hex), got {node_id!r}")
        try:
            bytes.fromhex(node_id)
        except ValueError:
            raise ValueError(f"node_id {node_id!r} is not a node id (a hex string, as "
                             f"shoal.get_runtime_context().get_node_id() returns)") from None
        self.node_id = node_id
        self.soft = bool(soft)

    def to_wire(self) -> tuple:
        return ("NODE", bytes.fromhex(self.node_id), self.soft)

    def __repr__(self):
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


_NAMED = {"DEFAULT": None, "SPREAD": ("SPREAD",)}


def strategy_wire(options: dict):
    """The wire form of ``options``' scheduling strategy (None for DEFAULT),
    taking Ray's older ``placement_group=`` options into account. Raises
    ValueError/TypeError for anything that is not a strategy."""
    s = options.get("scheduling_strategy")
    pg = options.get("placement_group")
    if pg is not None and pg != "default":
        if s is not None:
            raise ValueError("pass either scheduling_strategy or placement_group, not both")
        s = PlacementGroupSchedulingStrategy(
            pg, options.get("placement_group_bundle_index", -1),
            options.get("placement_group_capture_child_tasks"))
    if s is None:
        return None
    if isinstance(s, str):
        if s not in _NAMED:
            raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a "
                             f"PlacementGroupSchedulingStrategy or a "
                             f"NodeAffinitySchedulingStrategy, got {s!r}")
        return _NAMED[s]
    if isinstance(s, (PlacementGroupSchedulingStrategy, NodeAffinitySchedulingStrategy)):
        return s.to_wire()
    raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a "
                     f"PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy, "
                     f"got {s!r}")
