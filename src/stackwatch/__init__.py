"""Stackwatch: self-hosted monitoring and observability for Python web apps."""

__version__ = "0.1.0"
