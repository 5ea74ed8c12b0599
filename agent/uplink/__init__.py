"""MQTT uplink: drains the outbox to the broker (`mqtt.MqttUplink`), with pluggable payload encodings."""
