"""Records: a session kept on disk, and read back.

- :mod:`.format`: the JSON-lines format, its writer and its reader (truncation, corruption);
- :mod:`.environment`: where a session ran, for the header;
- :mod:`.replay`: a record as the live event stream again.
"""
