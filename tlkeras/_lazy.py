"""Names of a package imported on first use (PEP 562), so that importing the package, the CLI's help,
config checks and `tlkeras backbones` need no TensorFlow; the first name that does imports it."""

from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, names: dict[str, tuple[str, str | None]]):
    """`__getattr__` and `__dir__` for `package` whose `names` map to (module, attribute or None for
    the module itself); any other name that is a submodule of `package` is imported as it is asked
    for (`tlkeras.model.model_info` works without importing `tlkeras.model` first).

    >>> getattr_, _ = lazy_names("tlkeras", {"errors": ("tlkeras.errors", None)})
    >>> getattr_("errors").__name__, getattr_("metrics").__name__
    ('tlkeras.errors', 'tlkeras.metrics')
    """
    import importlib.util

    def __getattr__(name):
        if name not in names:
            if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")  # the import machinery sets the attribute
        module, attribute = names[name]
        value = importlib.import_module(module)
        value = value if attribute is None else getattr(value, attribute)
        sys.modules[package].__dict__[name] = value
        return value  # the next lookup is a plain attribute

    def __dir__():
        return sorted(set(sys.modules[package].__dict__) | set(names))

    return __getattr__, __dir__
