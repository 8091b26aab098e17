"""The card templates, installed as the package `hf_zpd.templates` (see `[tool.setuptools.package-dir]` in
pyproject.toml): they live here, beside the rendered example cards, and ship inside the wheel."""
