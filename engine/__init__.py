"""soaktop's engine: load, backends, statistics and records, with no UI.

Importing it must stay cheap and must never load textual or rich (a test checks): the TUI,
headless runs and scripts all build on it.
"""

__version__ = "0.1.0"
