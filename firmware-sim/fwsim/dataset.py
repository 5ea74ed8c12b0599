"""`edge-sim dataset KIND ...`: dispatches to the module that writes that kind of labelled data.

Each kind is a module with `add_arguments(parser)` and `run(args) -> int`; a kind whose module is
not in this tree (another part of the plant not built yet) is simply not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from types import ModuleType

DATASETS: dict[str, str] = {
    "pump": "water_edge.sim.dataset_pump",  # per-pump PLC features with fault labels
    "leak": "water_edge.sim.dataset_leak",  # hydrophone audio with leak labels
}


def _module(kind: str) -> ModuleType | None:
    name = DATASETS[kind]
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="KIND")
    for kind in DATASETS:
        module = _module(kind)
        if module is None:
            continue
        doc = (module.__doc__ or kind).strip().splitlines()[0]
        module.add_arguments(sub.add_parser(kind, help=doc, description=module.__doc__))


def run(args: argparse.Namespace) -> int:
    module = _module(args.dataset)
    if module is None:  # pragma: no cover - argparse only offers present kinds
        return 2
    return int(module.run(args))
