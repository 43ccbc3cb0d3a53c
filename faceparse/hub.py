"""Hugging Face Hub: ``faceparse.load_model("hf-hub:ORG/NAME[@REVISION]")`` and ``model.push_to_hub(REPO_ID)``.

Opt-in: nothing here runs unless a hub id is given, and it needs the ``hub`` extra
(``pip install 'faceparse[hub]'``, i.e. ``huggingface_hub``). A Hub model repository holds exactly a
faceparse model folder (``config.json`` + ``model.safetensors``, plus whatever ``save_pretrained``
wrote) and a model card (``README.md``); loading downloads that folder into huggingface_hub's cache
and rebuilds it with :func:`faceparse.load_model` (weights from safetensors: no pickled code runs, and
``config.json`` may only name faceparse classes). A folder holding a TorchScript program (FaRL) loads
only with :func:`download_model`'s explicit ``trust_torchscript=True``.

The environment is read at call time, so it may change after ``import huggingface_hub``:

- ``HF_HUB_OFFLINE=1``: no network; the model is taken from the local cache, or a clear error says
  it is not there.
- ``HF_ENDPOINT``: another Hub (a mirror, or the local server of ``tests/models/test_hub.py``).
- ``HF_HUB_CACHE`` / ``HF_HOME``: where the cache lives.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceparse.errors import FaceParseError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HUB_PREFIX", "download_model", "is_hub_id", "parse_hub_id", "push_to_hub"]

HUB_PREFIX = "hf-hub:"
_TRUE = {"1", "on", "yes", "true"}
_INSTALL = "the Hugging Face Hub needs huggingface_hub: pip install 'faceparse[hub]'"


def is_hub_id(spec: object) -> bool:
    """Whether ``spec`` names a Hub model (``"hf-hub:ORG/NAME[@REVISION]"``)."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME@REVISION"`` -> ``("ORG/NAME", "REVISION")`` (revision None when not given)."""
    body = spec[len(HUB_PREFIX) :] if spec.startswith(HUB_PREFIX) else spec
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not revision):
        raise FaceParseError(
            f"'{spec}' is not a Hub model id: expected '{HUB_PREFIX}ORG/NAME' or '{HUB_PREFIX}ORG/NAME@REVISION' "
            "(a branch, tag or commit)"
        )
    return repo_id, revision or None


def _hf():
    try:
        import huggingface_hub
    except ImportError as exc:
        raise FaceParseError(_INSTALL) from exc
    return huggingface_hub


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now, or was when huggingface_hub was imported (it reads the
    variable once, then refuses every request)."""
    value = os.environ.get("HF_HUB_OFFLINE") or ""
    return value.strip().lower() in _TRUE or bool(_hf().constants.HF_HUB_OFFLINE)


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or _hf().constants.ENDPOINT).rstrip("/")


def _cache_dir(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(_hf().constants.HF_HUB_CACHE)


def download_model(
    spec: str,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    trust_torchscript: bool = False,
) -> Path:
    """The local folder of Hub model ``spec`` (``hf-hub:ORG/NAME[@REVISION]``), downloaded into the
    huggingface_hub cache when needed (only from the local cache under ``HF_HUB_OFFLINE``).

    A folder holding a TorchScript program (a FaRL parser's ``model.torchscript.pt``) is refused unless
    ``trust_torchscript=True``: loading it runs that program (see :mod:`faceparse.models.farl`), so
    ``faceparse.load_model("hf-hub:...")`` never does so for a repository you have not vouched for.
    """
    hf = _hf()
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_hub_id(spec)
    local_only = offline()
    where = _endpoint(endpoint)
    cache = _cache_dir(cache_dir)
    common: dict[str, Any] = dict(
        repo_id=repo_id,
        revision=revision,
        cache_dir=cache,
        local_files_only=local_only,
        library_name="faceparse",
    )
    if not local_only:
        common.update(endpoint=where, token=token)
    rev = f"revision '{revision}'" if revision else "its main branch"
    try:
        config = Path(hf.hf_hub_download(filename="config.json", **common))
        _check_faceparse_config(config, spec)
        folder = Path(hf.snapshot_download(**common))
    except RepositoryNotFoundError as exc:
        raise FaceParseError(
            f"Hub model '{repo_id}' not found at {where} (or it is private/gated: log in with `hf auth login` or "
            "pass token=)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise FaceParseError(f"Hub model '{repo_id}' has no {rev} (at {where})") from exc
    except LocalEntryNotFoundError as exc:
        if local_only:
            raise FaceParseError(
                f"HF_HUB_OFFLINE is set and Hub model '{repo_id}' ({rev}) is not in the local cache '{cache}': "
                "load it once with network access, or unset HF_HUB_OFFLINE"
            ) from exc
        raise FaceParseError(
            f"cannot reach {where} to download Hub model '{repo_id}' ({rev}) and it is not in the local cache "
            f"'{cache}': {exc}"
        ) from exc
    except EntryNotFoundError as exc:
        raise FaceParseError(
            f"Hub repository '{repo_id}' ({rev}) has no config.json: not a faceparse model (push one with "
            "model.push_to_hub)"
        ) from exc
    if not trust_torchscript:
        from faceparse.models.convert import is_torchscript_archive

        programs = sorted(p.name for p in folder.iterdir() if p.is_file() and is_torchscript_archive(p))
        if programs:
            raise FaceParseError(
                f"Hub model '{repo_id}' holds a TorchScript program ({', '.join(programs)}), and loading it runs "
                "that program. If you trust the repository: faceparse.load_model(faceparse.hub.download_model("
                f"'{spec}', trust_torchscript=True))"
            )
    return folder


def _check_faceparse_config(config: Path, spec: str) -> None:
    import json

    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise FaceParseError(f"config.json of Hub model '{spec}' is not JSON ({exc})") from exc
    if not (isinstance(data, dict) and "faceparse_format" in data):
        hint = ""
        if isinstance(data, dict) and data.get("model_type") == "segformer":
            hint = (
                "; it is a transformers SegFormer: download the repository and convert it with "
                "`faceparse convert segformer-hf FOLDER OUT_DIR`"
            )
        raise FaceParseError(
            f"Hub model '{spec}' is not a faceparse model folder (its config.json has no 'faceparse_format'){hint}"
        )


def model_card(model: nn.Module, repo_id: str) -> str:
    """A README.md for the Hub: metadata, how to load the model, its classes and input."""
    config = model.get_config()
    label_set = getattr(model, "label_set", None)
    name = config.get("registry_name") or config["class"].rsplit(".", 1)[-1]
    lines = [
        "---",
        "library_name: faceparse",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- faceparse",
        "- face-parsing",
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A faceparse model (`{name}`, class `{config['class']}`) saved with `save_pretrained` "
        "(config.json + model.safetensors).",
        "",
        "```python",
        "import faceparse",
        "",
        f'model = faceparse.load_model("{HUB_PREFIX}{repo_id}")',
        "```",
        "",
    ]
    if label_set is not None:
        classes = ", ".join(f"{i} {c}" for i, c in enumerate(label_set.classes))
        lines += [f"Label set `{label_set.name}` ({label_set.num_classes} classes): {classes}.", ""]
    if "input_size" in config:
        lines += [
            f"Input: RGB, {config['input_size']} x {config['input_size']}, mean {config['input_mean']}, "
            f"std {config['input_std']}.",
            "",
        ]
    return "\n".join(lines)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    create_pr: bool = False,
    card: bool = True,
):
    """Upload ``model`` (``save_pretrained``'s folder, plus a model card unless ``card=False``) to the
    Hub model repository ``repo_id`` (created if needed; ``revision``: a branch, created from main if
    needed). Returns huggingface_hub's ``CommitInfo`` (``.oid`` is the commit, loadable as
    ``hf-hub:REPO_ID@OID``)."""
    hf = _hf()
    if offline():
        raise FaceParseError(f"HF_HUB_OFFLINE is set: cannot push '{repo_id}' to the Hub (unset it to upload)")
    parse_hub_id(repo_id)  # same shape rules as for loading
    repo_id = repo_id.removeprefix(HUB_PREFIX)
    api = hf.HfApi(endpoint=_endpoint(endpoint), token=token, library_name="faceparse")
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main" and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="faceparse-push-") as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        if card and not (folder / "README.md").exists():
            (folder / "README.md").write_text(model_card(model, repo_id))
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"faceparse: upload {type(model).__name__}",
            create_pr=create_pr,
        )
