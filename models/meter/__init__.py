"""Consumption analytics per water meter: continuous flow (a leak behind the meter), backflow,
night use, no use where use was expected (watch-over), and the meters' own alarm flags, as events."""
