"""Sphinx configuration for the django-dbjobs site (``make docs``)."""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "queue_project.settings")
django.setup()

import jobs  # noqa: E402  (after django.setup(): autodoc imports the models)

project = "django-dbjobs"
author = "the django-dbjobs authors"
copyright = "2026, the django-dbjobs authors"  # noqa: A001
release = jobs.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options: dict = {}

html_theme = "furo"
html_title = f"django-dbjobs {release}"
html_static_path = []
