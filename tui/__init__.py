"""soaktop's user-facing layer: the command line, and (soon) the Textual dashboard."""
