"""Error types raised by faceparse.

Every error says what was expected, what was found, and which file or argument is at fault.
"""

from __future__ import annotations


class FaceParseError(ValueError):
    """A user-facing error: bad argument, bad file, bad dataset layout.

    The command line prints it as ``error: <message>`` and exits with status 2.
    """


class MissingWeightsError(FaceParseError, FileNotFoundError):
    """Weights were requested but no local file was given or the file does not exist.

    faceparse never downloads anything: pass the path of a local file instead.
    """


class MissingDependencyError(FaceParseError, ImportError):
    """An optional dependency (an extra such as ``faceparse[sam]``) is not installed."""


def require(module: str, extra: str):
    """Import ``module`` or raise a clear error naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise MissingDependencyError(
            f"this feature needs the optional package '{module}', which is not installed; "
            f"install it with: pip install 'faceparse[{extra}]'"
        ) from exc
