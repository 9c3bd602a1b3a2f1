"""Jinyu (晋域): a public-data sandbox where data is usable but not visible."""

__version__ = "0.1.0"
