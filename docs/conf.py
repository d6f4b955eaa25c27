"""Sphinx configuration of favorkit's documentation site (``make docs``).

Offline by design: no intersphinx inventories are fetched (the build machine reaches
package registries only), so references to numpy, scipy and scikit-learn objects are
written as plain text or ignored by ``nitpick_ignore_regex`` below; every reference to a
favorkit object must resolve (``nitpicky`` with ``-W``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import favorkit  # noqa: E402

project = "favorkit"
author = "the favorkit developers"
copyright = "2026, the favorkit developers"
release = favorkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "examples/README.rst", "**.ipynb"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# API reference: autosummary writes one page per public name; the numpydoc sections carry
# the types, so signatures show no hints (hints to numpy.typing objects could not resolve
# offline).
templates_path = ["_templates"]
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

nitpicky = True
# External objects (no intersphinx offline) and numpydoc's type words.
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|scipy|sp|sklearn|matplotlib|numba|joblib|dask|pandas|torch)(\..*)?"),
    (r"py:.*", r"(array-like|ndarray|callable|optional|default|Generator|RandomState)"),
    (r"py:.*", r"(BaseEstimator|TransformerMixin|UserWarning|RuntimeWarning|Warning)"),
]

html_theme = "pydata_sphinx_theme"
html_title = f"favorkit {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path: list[str] = []
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "plot_gallery": "True",
    # Show what the examples print, not the repr of a cell's last expression (a title's Text).
    "capture_repr": (),
}

# The experiments' figures are made by the build (quick mode, about 2.5 minutes on 2 cores)
# into _generated/results, unless they are there already; the experiments page shows them.
GENERATED = DOCS / "_generated" / "results"


def _run_experiments(app):
    if (GENERATED / "REPORT.md").exists() and not os.environ.get("FAVORKIT_DOCS_RERUN"):
        return
    GENERATED.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "run_all.py"),
            "--quick",
            "--no-progress",
            "--out",
            str(GENERATED),
        ],
        check=True,
    )


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn adds set_*_request methods (metadata routing) to every estimator; they are
    # scikit-learn's API, documented there, and their docstrings refer to its glossary.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def _join_continued_lines(app, what, name, obj, options, lines):
    # A raw docstring (one with LaTeX in it) keeps the backslash that continues a long
    # parameter type on the next line; join such lines before numpydoc parses them.
    i = 0
    while i < len(lines) - 1:
        if lines[i].rstrip().endswith("\\"):
            lines[i] = lines[i].rstrip()[:-1].rstrip() + " " + lines.pop(i + 1).strip()
        else:
            i += 1


def setup(app):
    app.connect("builder-inited", _run_experiments)
    app.connect("autodoc-process-docstring", _join_continued_lines, priority=100)
    app.connect("autodoc-skip-member", _skip_member)
