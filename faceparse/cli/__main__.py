"""``python -m faceparse.cli``: the ``faceparse`` command."""

from faceparse.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
