"""Bare-metal provisioning service: inventory, lifecycle, boot and hand-off."""

__version__ = "0.1.0"
