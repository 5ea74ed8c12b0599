"""The Sparkplug B topic namespace of one Edge Node: `spBv1.0/{group}/{type}/{edge_node}[/{device}]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

NAMESPACE: Final = "spBv1.0"


@dataclass(frozen=True, slots=True)
class SparkplugTopics:
    """Topic names of one Edge Node (group and node ids are checked topic levels)."""

    group: str
    node: str

    def _node(self, kind: str) -> str:
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}"

    @property
    def nbirth(self) -> str:
        return self._node("NBIRTH")

    @property
    def ndeath(self) -> str:
        return self._node("NDEATH")

    @property
    def ndata(self) -> str:
        return self._node("NDATA")

    @property
    def ncmd(self) -> str:
        return self._node("NCMD")

    @property
    def dcmd_filter(self) -> str:
        """Every device's command topic: `spBv1.0/{group}/DCMD/{node}/+`."""
        return f"{self._node('DCMD')}/+"

    def dbirth(self, device: str) -> str:
        return f"{self._node('DBIRTH')}/{device}"

    def ddeath(self, device: str) -> str:
        return f"{self._node('DDEATH')}/{device}"

    def ddata(self, device: str) -> str:
        return f"{self._node('DDATA')}/{device}"

    def dcmd_device(self, topic: str) -> str | None:
        """The device a DCMD topic addresses; None if `topic` is not one of this node's DCMD topics."""
        head = f"{self._node('DCMD')}/"
        rest = topic[len(head) :] if topic.startswith(head) else ""
        return rest if rest and "/" not in rest else None

    @property
    def probe(self) -> str:
        """A filter never subscribed: UNSUBSCRIBE of it is answered, changing nothing (history.py)."""
        return f"{self._node('NCMD')}/probe"


def state_topic(host_id: str) -> str:
    """The Primary Host's retained STATE topic (Sparkplug 3.0): `spBv1.0/STATE/{host_id}`."""
    return f"{NAMESPACE}/STATE/{host_id}"
