"""The documentation's own Sphinx extension: the config reference, generated from the config's fields and
docstrings (`tlkeras.configdoc`) where a page holds the marker."""

from __future__ import annotations

MARKER = "<!-- tlkeras:config-reference -->"


def _insert_reference(app, docname, source):
    if MARKER in source[0]:
        from tlkeras.configdoc import markdown_table

        source[0] = source[0].replace(MARKER, markdown_table())


def setup(app):
    app.connect("source-read", _insert_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
