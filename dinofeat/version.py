"""The package version, in the base layer so any layer can name it without importing the package root."""

__version__ = "0.1.0"
