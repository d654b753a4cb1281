"""Single source of the package version (read by pyproject.toml via scikit-build-core)."""

__version__ = "0.1.0"
