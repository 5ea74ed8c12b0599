"""Machine sound monitoring: a microphone at a pump or motor, 10 s clips, 136 clip features computed
on the device, a detector calibrated on each machine's own normal sound, and events that say what
changed (docs/machine-sound.md)."""
