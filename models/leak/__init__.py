"""Acoustic leak detection and localisation: pipe acoustics, features, the TFLite detector, GCC localiser."""
