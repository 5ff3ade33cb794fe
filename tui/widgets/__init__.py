"""The dashboard's widgets: each a thin Textual widget over a pure drawing function in
:mod:`soaktop.tui.widgets.draw`, which tests check without an app."""
