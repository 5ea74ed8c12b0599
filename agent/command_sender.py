"""`edge-agent ca send-command`: one signed command to a gateway, and the gateway's answer to it.

The console subscribes to the gateway's answers before it publishes (they come on its JSON `events`
topic, or in a Sparkplug B node's NDATA: agent.operator_link), publishes the envelope at QoS 1 and
waits for the `command_result` that answers it: by the command's id, or, for a refusal before the
gateway checked the signature, by the digest of the payload.

Sent once. A command the gateway did not answer (offline: its session is clean, so what was
published meanwhile is lost) is not sent again by the console: the same envelope would be refused
as a replay, and a new one could do twice what should be done once (a PLC write, a restart). The
operator decides; `ca send-state-restore` resends its parts because a part taken twice is harmless.
"""

from __future__ import annotations

import queue
import time

from water_edge.agent.operator_link import Answer, ConsoleError, OperatorLink, answer_of, sha_of
from water_edge.core import envelope


def send_command(link: OperatorLink, base: str, payload: bytes, wait_s: float) -> Answer:
    """Publish the signed `payload` to the gateway at `base` (`{prefix}/{site}/{gateway}`) and return
    its answer; ConsoleError when there is none within `wait_s` (or the broker refused it)."""
    command = envelope.parse(payload)
    digest = sha_of(payload)
    link.open()
    try:
        link.publish(f"{base}/cmd/{command.type}", payload)
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = link.events.get(timeout=left)
            except queue.Empty:
                break
            answer = answer_of(event, command.type)
            if answer is not None and answer.answers(command.id, digest):
                return answer
    finally:
        link.close()
    raise ConsoleError(
        f"no answer from {base} within {wait_s:g} s on {link.events_topic}: is the gateway online "
        f"({base}/status)? It is not sent again by itself (a command done twice may do harm): sign "
        "and send it again once the gateway is online"
    )
