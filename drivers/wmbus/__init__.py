"""Wireless M-Bus (EN 13757-4, OMS) water meters heard through a USB stick or an SDR receiver."""
