"""The archsearch coordinator: settings, database models, API, CLI."""

__version__ = "0.1.0"
