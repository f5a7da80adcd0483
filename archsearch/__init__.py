"""The ``archsearch`` command line and the demo: the product's front door.

This package sits above the others: it may import ``service`` (serve, db, tokens),
``workers`` (the worker daemon) and ``client``; none of them imports it.
"""

from service import __version__

__all__ = ["__version__"]
