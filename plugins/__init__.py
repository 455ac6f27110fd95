"""Detector families bundled with pyanom, registered through entry points like any plugin."""
