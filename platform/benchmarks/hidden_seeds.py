"""Per-installation secret seeds for the demo's hidden data.

The demo's hidden sets come from public data (the MNIST test set, a public GAN), so a seed is the
only thing that tells the hidden half from the public one and the hidden fakes from any others.
A seed written in the repository, or printed on a page, would let anyone rebuild the hidden sets
bit for bit and train on them. So every seed that decides hidden data (the split, the hidden
generator samples, the surrogate detector and its attack, the corruptions' noise, the small
demo's subsets) is derived from one random secret that each installation draws for itself the
first time it builds the demo, and keeps outside the repository: ``ARENA_HIDDEN_SEED_FILE``, by
default ``ARENA_DATA_DIR/secrets/hidden-seeds.json``, mode 0600. Rebuilding reuses it, so the
benchmark stays the same on one installation; two installations get different hidden sets.

The seeds are HMAC-SHA256 of a purpose name under the 256-bit secret, so knowing one derived seed
(none is ever shown) says nothing about another. They lie in [2**62, 2**63): a valid seed for
numpy, torch and :func:`evaluator.attacks.common.derive_seed`, and never equal to a public seed
(the public fakes' seed, a track's seed: both below 2**31), so hidden and public draws cannot
coincide.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

#: File name of the default seed file, under ``ARENA_DATA_DIR/secrets/``.
SEED_FILE_NAME = "hidden-seeds.json"
#: Version of the file's layout (a JSON object with ``format`` and ``secret``, 64 hex digits).
FILE_FORMAT = 1
_SECRET_BYTES = 32
#: Every derived seed is at least this: above any public seed (a track's seed is below 2**31).
SEED_FLOOR = 1 << 62


def seed_file() -> Path:
    """Where this installation keeps its secret: ``ARENA_HIDDEN_SEED_FILE``, else under ARENA_DATA_DIR.

    Resolved at call time (not at settings import) so that a test or a command that moves
    ``ARENA_DATA_DIR`` moves the default secret with it.
    """
    configured = getattr(settings, "ARENA_HIDDEN_SEED_FILE", "") or ""
    if configured:
        return Path(configured)
    return Path(settings.ARENA_DATA_DIR) / "secrets" / SEED_FILE_NAME


@dataclass(frozen=True)
class HiddenSeeds:
    """The seeds of one installation's hidden demo data, all derived from its secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("the hidden-seed secret must be at least 128 bits")

    def seed(self, purpose: str) -> int:
        """The seed for one purpose (``"split"``, ``"gan-samples"``, ...), in [2**62, 2**63)."""
        digest = hmac.new(self.secret, f"arena-demo-hidden|{purpose}".encode(), hashlib.sha256).digest()
        return SEED_FLOOR | (int.from_bytes(digest[:8], "big") >> 2)

    @property
    def split(self) -> int:
        """The public/hidden split of the MNIST test set."""
        return self.seed("split")

    @property
    def subset(self) -> int:
        """Which images a small demo (``--limit``) keeps of a larger set."""
        return self.seed("subset")

    @property
    def corruptions(self) -> int:
        """The base seed of the corruptions' per-image noise."""
        return self.seed("corruptions")

    @property
    def gan_samples(self) -> int:
        """The latents of the hidden GAN fakes (public fakes use ``PUBLIC_FAKE_SEED``)."""
        return self.seed("gan-samples")

    @property
    def vae_samples(self) -> int:
        """The latents of the hidden VAE fakes (the unseen-generator shift)."""
        return self.seed("vae-samples")

    @property
    def surrogate(self) -> int:
        """The surrogate detector's initialisation and batch order."""
        return self.seed("surrogate")

    @property
    def transfer(self) -> int:
        """The transfer attack's random start on the surrogate."""
        return self.seed("transfer")


def _read(path: Path) -> HiddenSeeds:
    try:
        data = json.loads(path.read_text())
        secret = bytes.fromhex(data["secret"])
        if data.get("format") != FILE_FORMAT or len(secret) != _SECRET_BYTES:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a hidden-seed file of this platform (format {FILE_FORMAT}, "
                         f"a {_SECRET_BYTES * 8}-bit hex secret); restore it from a backup, or move it away to "
                         f"draw new hidden sets") from error
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError:
            logger.warning("%s is readable by other users; make it mode 0600", path)
    return HiddenSeeds(secret)


def load_or_create(path: Path | None = None) -> tuple[HiddenSeeds, bool]:
    """This installation's seeds, and whether the secret was created now (first build).

    A new secret is written whole to a private temporary file (mode 0600, in a folder of mode
    0700) and then hard-linked to its name, which fails if the name exists: two builds racing on a
    new installation end up with one secret, and no reader ever sees a half-written file.
    """
    path = seed_file() if path is None else Path(path)
    if path.exists():
        return _read(path), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = json.dumps({"format": FILE_FORMAT, "secret": secrets.token_bytes(_SECRET_BYTES).hex(),
                          "purpose": "seeds of the demo benchmark's hidden data; keep secret, back up with "
                                     "ARENA_DATA_DIR"}, indent=1)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(payload + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another build created it first: use theirs
            return _read(path), False
    finally:
        os.unlink(temporary)
    logger.info("created the hidden-seed secret %s", path)
    return _read(path), True
