"""Hidden stays hidden: the demo's hidden sets cannot be rebuilt from anything public.

The attack these tests stop: the demo split the MNIST test set with ``split_indices(10000, 0.5,
HIDDEN_SEED)``, HIDDEN_SEED = 20261125 was a constant in platform/benchmarks/demo.py, and the
hidden set's ``source`` ("hidden half of a seeded split (seed 20261125)") printed it on the track
page and in the API. Anyone could run the same line and train on the exact hidden half. Now every
seed of hidden data derives from a secret each installation draws on its first build
(benchmarks.hidden_seeds), kept outside the repository and shown nowhere.
"""

from __future__ import annotations

import ast
import json
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from django.test import Client

from tests.shared_paths import SHARED_DATA, needs_shared

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
#: Images per evaluation set in the small build: enough that a wrong split cannot match by chance
#: (a random half holds all 200 hidden images with probability 2**-200).
LIMIT = 200


def _integers(text: str) -> set[int]:
    """Every run of digits in ``text`` as an integer, with thousands separators read both ways."""
    found = {int(m) for m in re.findall(r"\d+", text)}
    found |= {int(m.replace(",", "")) for m in re.findall(r"\d{1,3}(?:,\d{3})+", text)}
    return found


def _repository_integers() -> set[int]:
    """Every integer literal or digit run in the repository's tracked text files (code, docs, templates)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    numbers: set[int] = set()
    for name in listed.splitlines():
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".html", ".txt", ".toml", ".cfg", ".yaml", ".yml", ".json", ".env",
                               ".example", ".sh", ""} or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        numbers |= _integers(text)
        if path.suffix == ".py":
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            numbers |= {node.value for node in ast.walk(tree)
                        if isinstance(node, ast.Constant) and isinstance(node.value, int)
                        and not isinstance(node.value, bool)}
    return numbers


def _reproduces(seed: int, hidden_indices: np.ndarray, n: int) -> bool:
    """Whether ``split_indices(n, 0.5, seed)`` puts every known hidden image in its hidden half."""
    from evaluator.data.evalsets import split_indices

    if not 0 <= seed < 2**128:
        return False
    _, hidden = split_indices(n, 0.5, seed)
    mask = np.zeros(n, dtype=bool)
    mask[hidden] = True
    return bool(mask[hidden_indices].all())


def _mnist_indices(images: np.ndarray, mnist_images: np.ndarray) -> np.ndarray:
    """Where each image sits in the MNIST test set (the first index of identical twins)."""
    where: dict[bytes, int] = {}
    for index in range(len(mnist_images) - 1, -1, -1):
        where[mnist_images[index].tobytes()] = index
    return np.array([where[image.tobytes()] for image in images], dtype=np.int64)


@pytest.mark.slow
@needs_shared
def test_no_public_number_rebuilds_the_hidden_half(arena_dirs, mnist_test):
    """The digits track is built as build_demo builds it; then every integer anyone can read (the
    repository's code and docs, the track page, the API, the leaderboard export, the sets' source
    and file metadata, the build's log, the public half's file) is tried as the split seed. None may
    put the hidden images in the hidden half. On the old code 20261125 (in demo.py and on the page)
    did. A rebuild on the same installation writes the same sets."""
    from benchmarks.models import EvaluationSet, Track
    from builders.demo import DemoBuilder
    from bundles.exporter import export_benchmark
    from bundles.models import public_part
    from evaluator.data.evalsets import read_evaluation_set

    log: list[str] = []
    DemoBuilder(str(SHARED_DATA), None, log=log.append, limit=LIMIT).build(["mnist-digits"], baselines=False)
    track = Track.objects.get(slug="mnist-digits")
    hidden_set = track.evaluation_sets.get(name="mnist-hidden")
    mnist_images, _ = mnist_test
    hidden = read_evaluation_set(hidden_set.path, hidden_set.sha256)
    hidden_indices = _mnist_indices(hidden.images.numpy(), mnist_images)
    assert len(hidden_indices) == LIMIT

    shown = [track.name, track.description, str(track.seed), "\n".join(log)]
    for evaluation_set in EvaluationSet.objects.filter(track=track):
        shown += [evaluation_set.source, evaluation_set.license, evaluation_set.name]
        shown.append(json.dumps(read_evaluation_set(evaluation_set.path).metadata))
    public_relative, public_sha256 = public_part(track.slug, "mnist-test-public")
    public = read_evaluation_set(arena_dirs / "data" / public_relative, public_sha256)
    shown.append(json.dumps(public.metadata))
    # What export_benchmark publishes: the manifest as imported (its recipes name secrets, never seeds), the
    # public half, the scores.
    exported = export_benchmark("demo", arena_dirs / "export")
    shown += [(exported / "benchmark.yaml").read_text(), (exported / "scores.json").read_text()]
    client = Client()
    for url in ("/", f"/tracks/{track.slug}/", f"/tracks/{track.slug}/leaderboard.json",
                f"/tracks/{track.slug}/leaderboard.csv", "/api/v1/tracks/", f"/api/v1/tracks/{track.slug}/"):
        response = client.get(url)
        assert response.status_code == 200, url
        shown.append(response.content.decode())
    assert "mnist-hidden" in shown[-1]  # the API does describe the set

    public_integers = _repository_integers() | set().union(*(_integers(text) for text in shown))
    assert {20261125, 61125} <= public_integers  # the old split seed is still in the repository's history notes
    n = len(mnist_images)
    leaks = sorted(c for c in public_integers if _reproduces(c, hidden_indices, n))
    assert leaks == [], f"public integers that rebuild the hidden split: {leaks}"
    # Sanity: the check does recognise the real split (the installation's secret seed).
    from benchmarks.hidden_seeds import load_or_create
    from builders.demo import mnist_split, mnist_split_seed

    seeds, created = load_or_create()
    split_seed = mnist_split_seed(seeds)  # as the importer derives it for the bundles' `secret: mnist-split`
    assert not created and _reproduces(split_seed, hidden_indices, n)
    assert split_seed not in public_integers and track.seed < 2**31 <= split_seed
    _, hidden_half = mnist_split(n, seeds)  # the builder's own account of the split agrees
    assert set(hidden_indices.tolist()) <= set(hidden_half.tolist())
    # The public half is the complement, and it too says nothing about the seed.
    public_indices = _mnist_indices(public.images.numpy(), mnist_images)
    assert not set(public_indices.tolist()) & set(hidden_indices.tolist())

    # The same installation rebuilds the same hidden sets.
    before = dict(EvaluationSet.objects.filter(track=track).values_list("name", "sha256"))
    DemoBuilder(str(SHARED_DATA), None, log=log.append, limit=LIMIT).build(["mnist-digits"], baselines=False)
    assert dict(EvaluationSet.objects.filter(track=track).values_list("name", "sha256")) == before


def test_the_secret_is_made_once_private_and_outside_the_repository(arena_dirs, settings):
    """The first build creates the secret (mode 0600, in a 0700 folder) under ARENA_DATA_DIR; the
    next reads it back; ARENA_HIDDEN_SEED_FILE moves it."""
    from benchmarks.hidden_seeds import load_or_create, seed_file

    path = seed_file()
    assert path == arena_dirs / "data" / "secrets" / "hidden-seeds.json" and not path.exists()
    first, created = load_or_create()
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, created_again = load_or_create()
    assert not created_again and again == first
    assert first.secret.hex() not in repr(first)  # a log line or traceback does not print it

    settings.ARENA_HIDDEN_SEED_FILE = str(arena_dirs / "elsewhere" / "seeds.json")
    moved, created = load_or_create()
    assert created and seed_file() == arena_dirs / "elsewhere" / "seeds.json" and moved != first

    # The default location is in the git-ignored var/ of a checkout.
    ignored = subprocess.run(["git", "check-ignore", "-q", "var/data/secrets/hidden-seeds.json"], cwd=ROOT)
    assert ignored.returncode == 0


def test_two_installations_get_different_hidden_splits_and_each_keeps_its_own(tmp_path):
    """Two secret files: two different hidden halves. Reading a file again: the same half."""
    from benchmarks.hidden_seeds import load_or_create
    from builders.demo import mnist_split

    one, _ = load_or_create(tmp_path / "one" / "hidden-seeds.json")
    two, _ = load_or_create(tmp_path / "two" / "hidden-seeds.json")
    public_one, hidden_one = mnist_split(10_000, one)
    _, hidden_two = mnist_split(10_000, two)
    assert len(hidden_one) == len(hidden_two) == 5_000
    assert not np.array_equal(hidden_one, hidden_two)
    assert len(np.intersect1d(hidden_one, hidden_two)) < 5_000 * 0.6  # about half in common, as chance has it
    assert len(np.union1d(public_one, hidden_one)) == 10_000

    one_again, created = load_or_create(tmp_path / "one" / "hidden-seeds.json")
    assert not created
    assert all(np.array_equal(a, b) for a, b in zip(mnist_split(10_000, one_again), (public_one, hidden_one),
                                                        strict=True))


def _secret_names(value: object) -> list[str]:
    """Every seed name a (shrunk) demo manifest makes the importer derive, as Importer.secret_seed is called:
    each ``secret:``, and for a transfer attack its ``/surrogate`` and ``/transfer`` (importer._transfer_set)."""
    names: list[str] = []
    if isinstance(value, dict):
        if "secret" in value:
            names.append(value["secret"])
            if value.get("kind") == "transfer_attack":
                names += [f"{value['secret']}/surrogate", f"{value['secret']}/transfer"]
        for item in value.values():
            names += _secret_names(item)
    elif isinstance(value, list):
        for item in value:
            names += _secret_names(item)
    return names


def _public_seeds(value: object) -> list[int]:
    """Every public seed a demo manifest writes (a track's ``seed``, the public fakes' ``public_fake_seed``)."""
    found: list[int] = []
    if isinstance(value, dict):
        found += [value[key] for key in ("seed", "public_fake_seed") if isinstance(value.get(key), int)]
        for item in value.values():
            found += _public_seeds(item)
    elif isinstance(value, list):
        for item in value:
            found += _public_seeds(item)
    return found


def test_every_hidden_seed_differs_from_every_public_one(tmp_path):
    """Hidden draws can never coincide with public ones: the public fakes' seed and a track seed
    (below 2**31) lie below every hidden seed (2**62 and up), and the hidden seeds differ among
    themselves. The hidden seeds are those the demo's bundles name (as a small demo's shrunk
    manifests name them: the split, the subset, the corruptions, the GAN and VAE samples, the
    surrogate and the transfer attack), derived as the importer derives them (a split's bound to its
    fraction and the MNIST files' bytes), and the secret's fixed purposes."""
    import yaml

    from benchmarks.hidden_seeds import SEED_FLOOR, load_or_create
    from builders.demo import (
        BENCHMARK_SLUG,
        BUNDLES,
        MANIFESTS,
        PUBLIC_FAKE_SEED,
        TRACK_SEED,
        DemoBuilder,
        mnist_split_seed,
    )

    seeds, _ = load_or_create(tmp_path / "hidden-seeds.json")
    manifests = [yaml.safe_load((MANIFESTS / name).read_text()) for name in BUNDLES.values()]
    shrink = DemoBuilder(None, None, log=lambda _: None, limit=LIMIT, seeds=seeds).shrink
    names = set().union(*(_secret_names(m) for m in manifests), *(_secret_names(shrink(m)) for m in manifests))
    assert {"mnist-split", "subset", "corruptions", "gan-samples", "vae-samples", "transfer/surrogate",
            "transfer/transfer"} <= names
    bundle = [seeds.seed(f"bundle|{BENCHMARK_SLUG}|{name}") for name in sorted(names)]
    hidden = [seeds.split, seeds.subset, seeds.corruptions, seeds.gan_samples, seeds.vae_samples,
              seeds.surrogate, seeds.transfer, mnist_split_seed(seeds), *bundle]
    assert len(set(hidden)) == len(hidden)
    assert all(SEED_FLOOR <= s < 2**63 for s in hidden)
    public = {PUBLIC_FAKE_SEED, TRACK_SEED, *(seed for m in manifests for seed in _public_seeds(m))}
    assert {PUBLIC_FAKE_SEED, TRACK_SEED} < public  # the manifests' own (e.g. the USPS track's seed) are in too
    assert max(public) < 2**31 <= SEED_FLOOR
    assert not public & set(hidden)


def test_a_damaged_secret_is_refused_not_replaced(tmp_path):
    """A truncated or foreign file must stop the build: silently drawing a new secret would change
    the hidden sets under the leaderboard's feet."""
    from benchmarks.hidden_seeds import load_or_create

    path = tmp_path / "hidden-seeds.json"
    path.write_text('{"format": 1, "secret": "abc"}')
    with pytest.raises(ValueError, match="not a hidden-seed file"):
        load_or_create(path)
    assert path.read_text() == '{"format": 1, "secret": "abc"}'
