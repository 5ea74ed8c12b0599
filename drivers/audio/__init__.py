"""Hydrophone audio capture: PortAudio devices, WAV files and firmware-sim streams."""
