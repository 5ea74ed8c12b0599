"""Sparkplug B 3.0: the gateway as one Edge Node, each configured device a Sparkplug device.

See docs/sparkplug.md for topics, metrics, datatypes and the session rules.
"""
