"""Module attributes that import their module on first use (keeps imports light)."""

import importlib


def lazy_getattr(package, attributes):
    """A module `__getattr__` for `package` that imports attributes[name] on demand."""
    def __getattr__(name):
        if name in attributes:
            return getattr(importlib.import_module(attributes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
