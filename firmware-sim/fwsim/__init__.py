"""water-edge-sim: the hardware-in-the-loop plant (PLCs, meters, hydrophones) the agent is tested against."""

__version__ = "0.1.0"
