"""The version of pymesh."""

__version__ = "0.1.0"
