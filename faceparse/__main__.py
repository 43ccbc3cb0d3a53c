"""``python -m faceparse``: the ``faceparse`` command (same as ``python -m faceparse.cli``)."""

from faceparse.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
