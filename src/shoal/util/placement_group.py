"""Placement groups: reserve gangs of resources that start together.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    shoal.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)

A group's bundles are reserved atomically (all or none) by the node(s);
tasks and actors scheduled into a bundle use the bundle's resources, not the
node's free ones. Ray's names and semantics throughout.
"""
from __future__ import annotations

import numbers

from ..core import get_core
from ..exceptions import GetTimeoutError
from ..object_ref import ObjectRef
from ..scheduler.task import new_task_id, object_id_for

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    __slots__ = ("_id",)

    def __init__(self, id: bytes):
        self._id = id

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle to a placement group; picklable, pass it to tasks freely."""

    def __init__(self, id: PlacementGroupID | bytes, bundles: list[dict] | None = None):
        self.id = id if isinstance(id, PlacementGroupID) else PlacementGroupID(id)
        self._bundles = bundles

    @property
    def bundle_specs(self) -> list[dict]:
        if self._bundles is None:
            self._bundles = get_core().request("pg_info", self.id.binary(), None)["bundles"]
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    @property
    def is_empty(self) -> bool:
        return self.bundle_count == 0

    def ready(self) -> ObjectRef:
        """A ref that resolves (to this group) once every bundle is reserved."""
        return ObjectRef(object_id_for(self.id.binary(), 1))

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is placed; False if it is not within the timeout.
        Raises if it can never be placed or was removed."""
        from ..api import get
        try:
            get(self.ready(), timeout=timeout_seconds)
            return True
        except GetTimeoutError:
            return False

    def __reduce__(self):
        return (PlacementGroup, (self.id.binary(), self._bundles))

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"PlacementGroup({self.id.hex()})"


def _check_bundles(bundles) -> list[dict]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError(f"bundles must be a non-empty list of dicts of resource amounts, "
                         f"got {bundles!r}")
    out = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict):
            raise ValueError(f"bundle {i} must be a dict of resource amounts, got {b!r}")
        clean = {}
        for k, v in b.items():
            if not isinstance(k, str) or not isinstance(v, numbers.Real) or isinstance(v, bool) \
                    or v < 0:
                raise ValueError(f"bundle {i}: resources must map names to non-negative "
                                 f"numbers, got {k!r}: {v!r}")
            if k == "GPU" and v > 1 and v != int(v):
                raise ValueError(f"bundle {i}: GPU amounts above 1 must be whole, got {v!r}")
            if v > 0:
                clean[k] = float(v)
        if not clean:
            raise ValueError(f"bundle {i} is empty ({b!r}): every bundle must reserve some "
                             f"resource")
        out.append(clean)
    return out


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id=None,
                    bundle_label_selector=None) -> PlacementGroup:
    """Ask for ``bundles`` to be reserved with ``strategy``; returns at once.
    ``shoal.get(pg.ready())`` or ``pg.wait(timeout)`` waits for the reservation."""
    bundles = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    core = get_core()
    pg_id = new_task_id()
    core.request("pg_create", pg_id, bundles, strategy, name, core.namespace,
                 lifetime == "detached")
    return PlacementGroup(pg_id, bundles)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's reservation; tasks and actors running in it are
    killed, and queued ones fail. Removing twice is harmless."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"expected a PlacementGroup, got {placement_group!r}")
    get_core().request("pg_remove", placement_group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group created with this name (in this namespace)."""
    core = get_core()
    info = core.request("pg_info", None, (core.namespace, placement_group_name))
    return PlacementGroup(bytes.fromhex(info["placement_group_id"]), info["bundles"])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The state of one group, or {id hex: state} of all of them."""
    core = get_core()
    if placement_group is not None:
        return core.request("pg_info", placement_group.id.binary(), None)
    return core.request("pg_table")


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in, or None."""
    core = get_core()
    wire = core.context.placement or core.actor_placement
    if wire is None:
        return None
    return PlacementGroup(wire[1])
