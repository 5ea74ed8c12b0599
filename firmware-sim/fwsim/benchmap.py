"""The `--bench-tags` block: N float32 input registers on unit 1 and the agent config that reads it.

Tag i (bench_00000 ...) sits at input register BENCH_BASE + 2*i, float32 big-endian, and reads
i/2 + (sim second mod 100): every value changes once a second and can be checked exactly.
"""

from __future__ import annotations

from water_edge.sim.registers import BENCH_BASE, MAX_BENCH_TAGS, STATION_UNIT


def bench_tag_name(index: int) -> str:
    return f"bench_{index:05d}"


def agent_config_toml(
    n_tags: int,
    host: str,
    port: int,
    poll_interval_ms: int = 1000,
    *,
    device_name: str = "bench",
) -> str:
    """A `[[devices]]` section (TOML) that reads every bench tag of a sim run with `n_tags`."""
    if not 1 <= n_tags <= MAX_BENCH_TAGS:
        raise ValueError(f"n_tags must be 1..{MAX_BENCH_TAGS}")
    lines = [
        "[[devices]]",
        f'name = "{device_name}"',
        'kind = "modbus_tcp"',
        f'host = "{host}"',
        f"port = {port}",
        f"unit_id = {STATION_UNIT}",
        f"poll_interval_ms = {poll_interval_ms}",
        "",
    ]
    for i in range(n_tags):
        lines += [
            "[[devices.tags]]",
            f'name = "{bench_tag_name(i)}"',
            'table = "input"',
            f"address = {BENCH_BASE + 2 * i}",
            'type = "float32"',
            "",
        ]
    return "\n".join(lines)
