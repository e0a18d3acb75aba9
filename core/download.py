"""``--download``: fetch CIFAR-10 with torchvision's own dataset class, checksum-verified, all or nothing.

The archive is downloaded and extracted in a temporary folder inside the data root, checked by
torchvision (md5 of the archive and of every batch file), and only then moved into place as
``<root>/cifar-10-batches-py`` in one rename. The temporary folder is removed in every case, so a
wrong checksum, a network failure or Ctrl-C leaves nothing behind.

For mirrors and tests, ``REFINE_CIFAR10_URL`` and ``REFINE_CIFAR10_MD5`` (environment variables, read
only here) replace the official URL and archive md5. ImageNet-50 cannot be downloaded: see docs/data.md.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
from pathlib import Path
from typing import Callable

from . import distributed
from .errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
URL_ENV, MD5_ENV = "REFINE_CIFAR10_URL", "REFINE_CIFAR10_MD5"
IMAGENET50_HELP = ("ImageNet-50 cannot be downloaded automatically (ImageNet is distributed to registered users "
                   "only): prepare 50 class folders of 224x224 images at <data-root>/ImageNet50/{train,test}/<class>/ "
                   "as docs/data.md explains")


def _torchvision_cifar10():
    import torch

    try:
        from torchvision.datasets import CIFAR10
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise UserError(f"--download needs torchvision ({type(exc).__name__}: {str(exc)[:120]}); pip install the "
                        f"torchvision that matches torch {torch.__version__.split('+')[0]} "
                        f"(see https://pytorch.org/get-started/locally)") from exc
    return CIFAR10


def _one_line(message) -> str:
    return " ".join(str(message).split())[:200]


def download_cifar10(root, url: str | None = None, md5: str | None = None,
                     log: Callable[[str], None] = print) -> Path:
    """Downloads CIFAR-10 (python version) into ``root/cifar-10-batches-py``; returns that folder.

    ``url``/``md5`` default to ``$REFINE_CIFAR10_URL``/``$REFINE_CIFAR10_MD5``, then to the official
    archive. Torchvision checks the archive's md5, and for the official archive also the md5 of every
    batch file; for another archive (a mirror with its own md5) the batch files must be present.
    Raises a one-line UserError on a failed checksum or download; nothing is kept then.
    """
    cifar10 = _torchvision_cifar10()
    url = url or os.environ.get(URL_ENV) or CIFAR10_URL
    md5 = (md5 or os.environ.get(MD5_ENV) or CIFAR10_MD5).lower()
    root = Path(root)
    target = root / CIFAR10_FOLDER
    names = [name for name, _ in cifar10.train_list + cifar10.test_list]
    if all((target / name).is_file() for name in names):
        log(f"CIFAR-10 already present at {target}; nothing downloaded")
        return target
    if target.exists():
        raise UserError(f"{target} exists but is incomplete (it needs {', '.join(names)}); remove it and run again")
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-root {root} is a file, not a folder; pass a folder to download CIFAR-10 into")
    official = md5 == CIFAR10_MD5

    class Download(cifar10):
        # per-file md5s are known for the official archive only; otherwise the archive's md5 covers them
        train_list = [[name, sum_ if official else None] for name, sum_ in cifar10.train_list]
        test_list = [[name, sum_ if official else None] for name, sum_ in cifar10.test_list]
        meta = {**cifar10.meta, "md5": cifar10.meta["md5"] if official else None}

    Download.url, Download.tgz_md5 = url, md5
    by_hand = f"try again, or download it by hand from {CIFAR10_URL} and unpack it into {root}/"
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    log(f"downloading CIFAR-10 from {url} into {root} (md5 {md5})")
    try:
        try:
            Download(str(tmp), train=False, download=True)  # downloads, checks, extracts, reads test_batch
        except RuntimeError as exc:
            from torchvision.datasets.utils import check_integrity

            archive = tmp / Download.filename
            if archive.is_file() and not check_integrity(str(archive), md5):
                raise UserError(f"downloaded CIFAR-10 archive failed its checksum (md5 {md5}); nothing was kept; "
                                f"{by_hand}") from exc
            raise UserError(f"{url} did not give a CIFAR-10 python archive ({_one_line(exc)}); nothing was kept; "
                            f"{by_hand}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = _one_line(getattr(exc, "reason", None) or exc)
            raise UserError(f"could not download CIFAR-10 from {url} ({reason}); nothing was kept; {by_hand}") from exc
        except Exception as exc:  # a broken archive: tarfile / pickle errors
            raise UserError(f"{url} did not give a readable CIFAR-10 archive ({type(exc).__name__}: "
                            f"{_one_line(exc)}); nothing was kept; {by_hand}") from exc
        os.replace(tmp / CIFAR10_FOLDER, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_root and not target.exists() and not any(root.iterdir()):
            root.rmdir()  # a failed download does not even leave the folder it created
    log(f"downloaded CIFAR-10 (md5 verified) to {target}")
    return target


def ensure_data(config: dict, log: Callable[[str], None] = print) -> None:
    """With ``config['download']``: downloads CIFAR-10 into ``config['data_root']`` unless data is found there."""
    if not config.get("download"):
        return
    from .data import find_source

    dataset, root = config["dataset"], config["data_root"]
    try:
        _, path = find_source(dataset, root)
    except UserError:
        if dataset != "CIFAR10":
            how = IMAGENET50_HELP if dataset == "ImageNet50" else "only CIFAR-10 can be downloaded"
            raise UserError(f"--download: {how}")
        with distributed.main_first():  # under torchrun rank 0 downloads; the others then find the data
            if distributed.is_main():
                download_cifar10(root, log=log)
        return
    log(f"--download: {dataset} already present at {path}; nothing downloaded")
