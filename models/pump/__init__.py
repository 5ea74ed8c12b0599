"""Pump anomaly detection: per-pump features from PLC tags, on-device calibration on normal
operation, a shared TFLite window scorer, and events with persistence, hysteresis and an
explanation an operator can act on."""
