"""Commands from the centre: signed envelopes verified, authorised, replay-checked, executed, answered.

`processor.CommandProcessor.handle(topic_suffix, payload)` is pure of MQTT; `channel.CommandChannel`
adapts it to the uplink's `on_command` hook and turns each result into a `command_result` event.
"""
