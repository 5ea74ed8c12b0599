"""Processor kinds come from `edge_agent.processors` entry points, like drivers: the kind a
`[[models.<kind>]]` list names is found, its tables are validated by the kind's own config model
(every mistake naming file, key and expectation), and the agent builds and runs what it makes."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from tests.support import echo_processor
from tests.support.testing import eventually, write_agent_config
from water_edge.agent import processors
from water_edge.agent.assembly import build_processors
from water_edge.agent.cli import format_status
from water_edge.agent.config import load_config
from water_edge.agent.runtime import Agent
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_events
from water_edge.core.errors import ConfigError
from water_edge.core.reading import Reading, now_ns
from water_edge.models.flow_leak.config import FlowLeakSection
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.factory import LeakFactory
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.factory import PumpFactory

ROOT = Path(__file__).resolve().parents[1]
PUMP = '[[models.pump]]\nname = "P1"\n[models.pump.signals]\nflow = "plc/flow"\n'
AUDIO = '[[devices]]\nname = "hyd"\nkind = "audio"\nsource = "file"\npath = "/tmp/none.wav"\n'
# The PLC whose tag PUMP names.
PLC = (
    '[[devices]]\nname = "plc"\nkind = "modbus_tcp"\nhost = "10.0.0.5"\n'
    '[[devices.tags]]\nname = "flow"\naddress = 0\n'
)


def problems_for(tmp_path: Path, models: str, devices: str = AUDIO + PLC) -> list[str]:
    path = write_agent_config(tmp_path, devices=devices, models=models)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [p.replace(str(path), "FILE") for p in info.value.problems]


def test_the_installed_kinds_are_found_with_their_config_models() -> None:
    assert {"leak", "pump", "flow_leak"} <= set(processors.known_kinds())
    assert processors.load("pump") is PumpFactory
    assert PumpFactory.config_model is PumpModelConfig
    assert processors.load("leak") is LeakFactory
    assert LeakFactory.config_model is LeakModelSection
    assert processors.load("pmp") is None


def test_models_tables_are_validated_by_their_kinds_models() -> None:
    config = load_config(ROOT / "deploy" / "samples" / "models.toml")
    assert list(config.models) == ["pump", "leak", "flow_leak"]
    (pump,) = config.models["pump"]
    (leak,) = config.models["leak"]
    (flow,) = config.models["flow_leak"]
    assert isinstance(flow, FlowLeakSection)
    assert flow.inflow == ["meter.flow"]
    assert isinstance(pump, PumpModelConfig)
    assert pump.signals["flow"] == "pump1.flow"
    assert isinstance(leak, LeakModelSection)
    assert leak.device == "hydrophones"


def test_an_unknown_kind_names_the_file_the_key_and_the_installed_kinds(tmp_path: Path) -> None:
    (problem,) = problems_for(tmp_path, '[[models.pmp]]\nname = "P1"\n')
    assert problem == (
        "FILE: models.pmp: unknown processor kind 'pmp'; installed processors are "
        f"{', '.join(processors.known_kinds())}"
    )


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        (
            PUMP.replace("flow =", "floww ="),
            "models.pump[0].signals key 'floww': Input should be 'motor_current', 'voltage', "
            "'suction_pressure', 'discharge_pressure', 'flow', 'vibration_x', 'vibration_y', "
            "'winding_temp', 'bearing_temp' or 'speed' (got 'floww')",
        ),
        (
            PUMP.replace("[models.pump.signals]", "colour = 1\n[models.pump.signals]"),
            "models.pump[0].colour: unknown key (not part of the schema; check the spelling)",
        ),
        (PUMP.replace('name = "P1"\n', ""), "models.pump[0].name: required key is missing"),
        (
            PUMP + "[[models.pump]]\nname = 'P2'\npersistence = 0\n[models.pump.signals]\nflow = 'x'\n",
            "models.pump[1].persistence: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            '[models.pump]\nname = "P1"\n',
            "models.pump: expected [[models.pump]] tables (double brackets; [models.pump] is one table)",
        ),
        (
            '[models]\npump = ["P1"]\n',
            "models.pump[0]: expected a table (got 'P1')",
        ),
        (
            '[[models.leak]]\ndevice = "hyd"\ntimezone = "Mars/Base"\n',
            "models.leak[0].timezone: unknown time zone 'Mars/Base' (expected an IANA name "
            "such as 'Europe/Amsterdam') (got 'Mars/Base')",
        ),
        (
            '[[models.leak]]\ndevice = "hyd"\n[models.leak.detection]\nmin_bands = 0\n',
            "models.leak[0].detection.min_bands: Input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_mistakes_in_a_kinds_tables_name_file_key_and_expectation(
    tmp_path: Path, models: str, expected: str
) -> None:
    assert problems_for(tmp_path, models) == [f"FILE: {expected}"]


def test_models_mistakes_are_reported_with_every_other_problem(tmp_path: Path) -> None:
    devices = AUDIO.replace('kind = "audio"', 'kind = "audi"')
    problems = problems_for(tmp_path, PUMP.replace('"P1"', '"P 1"'), devices)
    assert len(problems) == 2
    assert problems[0].startswith("FILE: models.pump[0].name: expected a name of letters, digits")
    assert "devices[0] (hyd).kind: unknown driver 'audi'" in problems[1]


def test_a_kind_checks_its_tables_together_and_against_the_devices(tmp_path: Path) -> None:
    fake = '[[devices]]\nname = "plc"\nkind = "fake"\n[[devices.tags]]\nname = "flow"\n'
    assert problems_for(tmp_path, PUMP + PUMP, fake) == ["FILE: models.pump: pump name 'P1' is used twice"]
    assert problems_for(tmp_path, '[[models.leak]]\ndevice = "plc"\n', AUDIO + fake) == [
        "FILE: models.leak[0].device: expected the name of a kind = \"audio\" device (got 'plc'; "
        "audio devices: hyd)"
    ]
    # A disabled audio device is still one (the detector then just does not run) ...
    disabled = AUDIO + "enabled = false\n"
    load_config(write_agent_config(tmp_path, devices=disabled, models='[[models.leak]]\ndevice = "hyd"\n'))
    # ... and an audio device with a mistake of its own is reported once, for itself.
    broken = AUDIO + "colour = 1\n"
    (problem,) = problems_for(tmp_path, '[[models.leak]]\ndevice = "hyd"\n', broken)
    assert "devices[0] (hyd).colour: unknown key" in problem


def test_a_tag_two_devices_read_or_none_reads_is_refused_by_name(tmp_path: Path) -> None:
    # Two RTU meters that each have a `flow`: a bare "flow" fed the pump both, alternately.
    meter = PLC.replace('"plc"', '"meter"').replace("10.0.0.5", "10.0.0.6")
    pump = PUMP.replace('"plc/flow"', '"flow"')
    district = '[[models.flow_leak]]\nname = "d1"\ninflow = ["plc/flow", "plc/flwo", "pcl/flow"]\n'
    assert problems_for(tmp_path, pump + district, PLC + meter) == [
        "FILE: models.pump[0].signals.flow: tag 'flow' is read by devices meter and plc: say which, "
        "e.g. 'meter/flow'",
        "FILE: models.flow_leak[0].inflow[1]: device 'plc' has no tag 'flwo' (did you mean 'flow'?)",
        "FILE: models.flow_leak[0].inflow[2]: no device named 'pcl' (devices: plc, meter)",
    ]
    assert problems_for(tmp_path, PUMP.replace('"plc/flow"', '"flwo"'), PLC) == [
        "FILE: models.pump[0].signals.flow: no device reads a tag 'flwo' (did you mean 'flow'?)"
    ]
    # A device whose tags are only known once read (here audio levels) may still send it: a warning.
    config = load_config(
        write_agent_config(tmp_path, devices=AUDIO + PLC, models=pump.replace('"flow"', '"flwo"'))
    )
    assert [w.replace(str(config.source), "FILE") for w in config.warnings] == [
        "FILE: models.pump[0].signals.flow: no device reads a tag 'flwo' (did you mean 'flow'?); only hyd "
        "(tags known once read) could send it"
    ]
    assert load_config(write_agent_config(tmp_path, devices=PLC + meter, models=PUMP)).models["pump"]


def test_the_config_schema_knows_no_processor() -> None:
    tree = ast.parse((ROOT / "agent" / "config" / "schema.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("water_edge.models")]


async def test_a_kind_from_a_plugin_entry_point_is_validated_built_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(echo_processor.register(tmp_path / "site")))
    assert "echo" in processors.known_kinds()
    (tmp_path / "bad").mkdir()
    assert problems_for(tmp_path / "bad", '[[models.echo]]\nstream = "plc"\nmin_readings = 0\n', "") == [
        "FILE: models.echo[0].min_readings: Input should be greater than or equal to 1 (got 0)"
    ]

    path = write_agent_config(tmp_path, models={"echo": [{"stream": "plc"}]})
    config = load_config(path)
    analytics = build_processors(config, {})
    (echo,) = analytics.processors
    assert isinstance(echo, echo_processor.EchoProcessor)
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 26) as box:
        agent = Agent(config, box, processors=analytics.processors)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await agent.pipeline.submit("other", [Reading("other", "a", now_ns(), 1.0)])
        await agent.pipeline.submit("plc", [Reading("plc", "a", now_ns(), 2.0)])
        await eventually(lambda: echo.batches >= 1, what="the echo processor's batch")
        snapshot = agent.snapshot()
        stop.set()
        await asyncio.wait_for(task, 15)
        rows = await box.lease(0, 1000)
    echoed = [e for r in rows if r.stream == "events" for e in decode_events(r.body) if e.kind == "echo"]
    assert [e.source for e in echoed] == ["plc"]  # WantsStreams: the other stream never reached it
    (entry,) = snapshot["processors"]
    assert entry["health"] == {"batches": 1}
    assert entry["lines"] == ["1 batches echoed"]
    assert "model    echo:plc: 1 batches echoed" in format_status(snapshot).splitlines()
