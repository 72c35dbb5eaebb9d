"""Data files shipped with tlkeras (the demo digits)."""
