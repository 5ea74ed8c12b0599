"""Signed self-update of the agent: release bundles, A/B environments, the updater that switches and
judges a new release, and what the running agent reports about it (see docs/updates.md)."""
