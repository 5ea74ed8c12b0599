"""Demo helper: subscribe to the agent's topics and print each message as one readable line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def describe(topic: str, payload: bytes) -> str:
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return f"{topic}  (not JSON, {len(payload)} bytes)"
    if not isinstance(body, dict):
        return f"{topic}  {body!r}"
    if "readings" in body:
        readings = body["readings"]
        # Numbers with units first: they say more at a glance than flags and names.
        readings = sorted(readings, key=lambda r: not (isinstance(r.get("value"), float) and r["unit"]))
        shown = ", ".join(
            f"{r['tag']}={r['value']:.4g}{r['unit'] and ' ' + r['unit']}"
            if isinstance(r.get("value"), float)
            else f"{r['tag']}={r['value']}"
            for r in readings[:4]
        )
        more = f" (+{len(readings) - 4} more)" if len(readings) > 4 else ""
        return f"{topic}  seq={body['seq']}  {len(readings)} readings: {shown}{more}"
    if "events" in body:
        kinds = ", ".join(f"{e['kind']}({e['source']})" for e in body["events"])
        return f"{topic}  seq={body['seq']}  events: {kinds}"
    return f"{topic}  {json.dumps(body)}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", default="water/#")
    args = parser.parse_args()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(args.topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        print(describe(msg.topic, msg.payload), flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        client.loop_forever(retry_first_connection=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
