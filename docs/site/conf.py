# SPDX-License-Identifier: GPL-3.0-or-later
"""Sphinx configuration of the collection's documentation site (``make docs``).

``make docs`` assembles the source tree in tests/output/docs/src: this file, index.rst, the plugin and role
pages that antsibull-docs writes from the collection itself (collection/), the guides of docs/*.md (read by
MyST) and the pictures; then it runs sphinx-build into tests/output/docs/html.
"""

from __future__ import annotations

project = "fibreflow.qfieldcloud"
author = "fibreflow"
copyright = "2025, fibreflow"

extensions = ["sphinx_antsibull_ext", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "sphinx_ansible_theme"
html_title = "fibreflow.qfieldcloud"
html_show_sphinx = False
html_theme_options = {"collapse_navigation": False, "navigation_depth": 3}
# The guides link to files of the repository (playbooks, roles): those are not pages of the site.
# The generated pages refer to labels of docs.ansible.com (common return values, configuration settings, other
# collections): without intersphinx (the build runs offline) they stay plain text.
suppress_warnings = ["myst.xref_missing", "ref.ref", "misc.highlighting_failure"]
