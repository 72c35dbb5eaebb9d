"""Sphinx configuration: MyST Markdown pages, autodoc from the docstrings, the Furo theme. Built strictly (warnings
are errors, every reference must resolve) and offline: `sphinx-build -W --keep-going -n -b html docs
docs/_build/html` (tests/test_docs.py runs it)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "tlkeras"
author = "tlkeras developers"
copyright = "2026, tlkeras developers"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "tlkeras_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_typehints = "none"  # the signatures stay readable; the docstrings say what each argument takes
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "tlkeras"
html_static_path = ["_static"]
html_css_files = ["tlkeras.css"]

# Argument lists stay as written ("train_ds / val_ds: ..."), not parsed into typed fields.
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_preprocess_types = False
# Types of other libraries (Keras, TensorFlow, NumPy) have no pages here: named, not linked.
nitpick_ignore_regex = [("py:class", r"(keras|tf|tensorflow|np|numpy)\..*"),
                        ("py:class", r".*\[.*")]  # a subscripted annotation autodoc splits (list[tuple[...]])
