"""``soaktop report``: a record drawn as one self-contained HTML page (and PNG/SVG images).

A user interface, not the engine: it reads a record with the engine's reader and summary,
then draws. No textual here (``soaktop report`` starts as fast as ``summary``). The parts:
:mod:`.series` (the record read once into per-second series), :mod:`.charts` (matplotlib
figures), :mod:`.page` (the HTML, every record string escaped), :mod:`.command` (the CLI).
"""
