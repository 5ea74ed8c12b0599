"""The reference centre-side ingest: the agents' JSON stream from MQTT into PostgreSQL, exactly once.

`edge-centre migrate` creates the schema, `edge-centre ingest` consumes (MQTT 5 shared
subscriptions, or static partitions on brokers without them) and commits readings and events
with idempotent inserts, `edge-centre gaps` reports missing seqs, `edge-centre loadgen` plays a
fleet of gateways. Runs at the centre; the agent never imports it. See docs/fleet.md.
"""

__version__ = "0.1.0"
