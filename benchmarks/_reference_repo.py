"""Helpers of the parity scripts: copy files out of a local reference repository (a checkout or a bare
git directory) into a temporary folder, and name its commit. Nothing here is downloaded."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def _is_bare(repo: Path) -> bool:
    return (repo / "HEAD").is_file() and (repo / "objects").is_dir()


def commit_of(repo: str | Path) -> str:
    """The commit the reference files come from (``unknown`` for a plain folder)."""
    repo = Path(repo)
    args = ["git", f"--git-dir={repo}"] if _is_bare(repo) else ["git", "-C", str(repo)]
    try:
        out = subprocess.run([*args, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def copy_files(repo: str | Path, files: dict[str, str], dst: str | Path) -> Path:
    """Write ``files`` (path in the repo -> path under ``dst``) from ``repo`` at HEAD (bare git dir) or
    from its working tree; ``FileNotFoundError`` names a missing file."""
    repo, dst = Path(repo), Path(dst)
    for src, rel in files.items():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_bare(repo):
            out = subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{src}"], capture_output=True)
            if out.returncode:
                raise FileNotFoundError(f"{src} not in {repo} at HEAD: {out.stderr.decode().strip()}")
            target.write_bytes(out.stdout)
        else:
            if not (repo / src).is_file():
                raise FileNotFoundError(f"{src} not found under {repo}")
            target.write_bytes((repo / src).read_bytes())
    return dst


def machine() -> str:
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores, shared), {cuda}; torch {torch.__version__}"


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def randomize_batchnorm(model, generator) -> None:
    """Random BatchNorm affine parameters and running statistics, so that parity also covers them."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**5, (1,), generator=generator)))
