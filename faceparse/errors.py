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


def require(module: str, extra: str | None):
    """Import ``module`` or raise a clear error naming the extra that provides it.

    ``extra=None`` marks a core dependency: the message asks to reinstall faceparse.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if extra is None:
            hint = "it is a core dependency of faceparse; reinstall it with: pip install -e . (from the checkout)"
        else:
            hint = (
                f"install it with: pip install -e '.[{extra}]' (from the checkout) or pip install 'faceparse[{extra}]'"
            )
        raise MissingDependencyError(
            f"this feature needs the package '{top}' (module '{module}'), which is not installed; {hint}"
        ) from exc
