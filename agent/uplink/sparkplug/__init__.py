"""Sparkplug B 3.0: the gateway as one Edge Node, each configured device one Sparkplug device (docs/sparkplug.md)."""
