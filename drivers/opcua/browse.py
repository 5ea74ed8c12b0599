"""Walking an OPC UA server's address space: the children of a node, a browse path's next step,
and every variable below a starting point with the path and NodeId a tag would name it by
(commissioning: `edge-agent scan opcua`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from asyncua import ua
from asyncua.client.client import Client

OBJECTS: Final = ua.NodeId.from_string("i=85")
HAS_PROPERTY: Final = ua.NodeId.from_string("i=46")
HIERARCHICAL: Final = ua.NodeId.from_string("i=33")
# asyncua annotates Boolean fields with a marker class that plain bools do not satisfy
_TRUE: Final = cast(ua.Boolean, True)


async def children(client: Client, node: ua.NodeId) -> list[ua.ReferenceDescription]:
    """Forward hierarchical children of `node` (all pages)."""
    desc = ua.BrowseDescription(
        NodeId=node,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=HIERARCHICAL,
        IncludeSubtypes=_TRUE,
        NodeClassMask=0,
        ResultMask=ua.BrowseResultMask.All,
    )
    results = await client.uaclient.browse(ua.BrowseParameters(NodesToBrowse=[desc]))
    refs = list(results[0].References)
    point = results[0].ContinuationPoint
    while point:
        more = await client.uaclient.browse_next(ua.BrowseNextParameters(ContinuationPoints=[point]))
        refs += more[0].References
        point = more[0].ContinuationPoint
    return refs


def match(refs: Iterable[ua.ReferenceDescription], segment: str) -> ua.NodeId | None:
    """The child whose BrowseName is `segment` (`2:Name` pins the namespace index)."""
    ns: int | None = None
    name = segment
    prefix, sep, rest = segment.partition(":")
    if sep and prefix.isdigit():
        ns, name = int(prefix), rest
    for ref in refs:
        if ref.BrowseName.Name == name and (ns is None or ref.BrowseName.NamespaceIndex == ns):
            return _node_id(ref)
    return None


class PathNotFoundError(Exception):
    """A browse path with a segment no child of the node before it is named."""

    def __init__(self, path: str, segment: str) -> None:
        super().__init__(f"browse path not found: {path} (no {segment!r})")


async def resolve(
    client: Client, path: str, cache: dict[ua.NodeId, list[ua.ReferenceDescription]] | None = None
) -> ua.NodeId:
    """The node a browse path below Objects names (`PumpStation/Pump1/Flow`; "" is Objects);
    `cache` keeps the children browsed, for several paths through the same nodes."""
    known = {} if cache is None else cache
    node = OBJECTS
    for segment in path.strip("/").split("/") if path.strip("/") else []:
        if node not in known:
            known[node] = await children(client, node)
        found = match(known[node], segment)
        if found is None:
            raise PathNotFoundError(path, segment)
        node = found
    return node


def _node_id(ref: ua.ReferenceDescription) -> ua.NodeId:
    return ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)


@dataclass(frozen=True, slots=True)
class FoundVariable:
    """A variable of the server: `path` below Objects as a tag's `path` takes it (None when a name
    on the way holds a "/"), `node` as a tag's `node` takes it (by namespace URI, which survives a
    server that renumbers its namespaces)."""

    path: str | None
    node: str
    node_id: ua.NodeId


def node_text(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """`nsu=<URI>;s=...` (`i=...` etc. alone in namespace 0, as the standard's nodes are named)."""
    identifier = node_id.to_string().split(";", 1)[-1]
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return node_id.to_string()
    return f"nsu={namespaces[index]};{identifier}"


async def variables(
    client: Client, start: ua.NodeId, start_path: str, *, depth: int, limit: int, namespaces: list[str]
) -> tuple[list[FoundVariable], bool]:
    """The variables below `start` (its path `start_path`) down to `depth` levels of objects,
    breadth first, at most `limit` of them; and whether the walk stopped at the limit. Properties
    (HasProperty: EngineeringUnits, ranges) are not variables to read, and below Objects the
    standard's namespace 0 (the Server object and its diagnostics) is left out."""
    found: list[FoundVariable] = []
    seen = {start}
    queue: deque[tuple[ua.NodeId, str | None, int]] = deque([(start, start_path, 0)])
    while queue:
        node, path, level = queue.popleft()
        for ref in await children(client, node):
            child = _node_id(ref)
            if child in seen or ref.ReferenceTypeId == HAS_PROPERTY or child.NamespaceIndex == 0:
                continue
            seen.add(child)
            name = ref.BrowseName.Name or ""
            child_path = None if path is None or "/" in name or not name else f"{path}/{name}".lstrip("/")
            if ref.NodeClass == ua.NodeClass.Variable:
                if len(found) == limit:
                    return found, True
                found.append(FoundVariable(child_path, node_text(child, namespaces), child))
            elif ref.NodeClass == ua.NodeClass.Object and level + 1 < depth:
                queue.append((child, child_path, level + 1))
    return found, False
