"""MQTT uplink: drains the outbox to the broker (`mqtt.MqttUplink`); encodings and transports plug in."""
