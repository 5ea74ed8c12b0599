"""The agent's one TOML config file: its schema and the loader that validates it before anything starts."""

from water_edge.agent.config.load import Config, load_config

__all__ = ["Config", "load_config"]
