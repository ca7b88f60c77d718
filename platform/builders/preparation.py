"""The demo's slow phase, run in the background once the site is up, with its progress on the track pages.

``scripts/demo`` runs ``manage.py build_demo --fast`` (benchmark, tracks, the sets computed in
seconds, the shared pretrained baselines), starts the server and the worker, and then
``manage.py prepare_demo``, which runs :func:`prepare` here:

1. the detector track's transfer-attack set (a surrogate detector is trained, then attacked:
   minutes); baselines already evaluated without it are queued again;
2. the detector track's small-CNN baseline (``train_detector_baselines``);
3. the digits baseline testbed (``train_digit_baselines``, one recipe at a time, so that each model
   is queued as soon as it is trained and the page can count them).

Each step is a :class:`builders.models.Preparation` row, shown on its track's page
(``{% preparation_notice track %}``). A heartbeat thread touches the run's unfinished rows every
:data:`~builders.models.HEARTBEAT_SECONDS`; when the process dies they stop moving and read as
stalled. A step that fails is marked failed (with its last line) and the next one still runs. A
file lock under ``ARENA_DATA_DIR`` keeps a second run from racing the first; a run that finds the
work already done (a restarted demo) marks the steps done without training anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from benchmarks.models import Track
from builders.demo import DETECTOR_TRACK, TRANSFER_SET, DemoBuilder
from builders.management.commands.train_detector_baselines import baseline_title
from builders.models import HEARTBEAT_SECONDS, Preparation
from evaluator.testbed.detectors import DEFAULT_EPOCHS
from evaluator.testbed.detectors import DEFAULT_SEED as DETECTOR_SEED
from evaluator.testbed.digits import RECIPES
from submissions.models import Submission

logger = logging.getLogger(__name__)

DIGITS_TRACK = "mnist-digits"
LOCK_NAME = "prepare_demo.lock"


@dataclass(frozen=True)
class Step:
    track: str
    key: str
    label: str
    unit: str = ""


TRANSFER = Step(DETECTOR_TRACK, "transfer-set", "transfer-attack set")
DETECTOR_BASELINE = Step(DETECTOR_TRACK, "detector-baseline", "small-CNN detector baseline")
DIGIT_BASELINES = Step(DIGITS_TRACK, "digit-baselines", "digits baseline testbed", "baselines trained")
STEPS = (TRANSFER, DETECTOR_BASELINE, DIGIT_BASELINES)


class Progress:
    """The :class:`Preparation` rows of one background run: planned, started, advanced, finished."""

    def __init__(self, steps: tuple[Step, ...] = STEPS, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex
        self.tracks = {t.slug: t for t in Track.objects.filter(slug__in={s.track for s in steps})}
        self.steps = [s for s in steps if s.track in self.tracks]
        #: Keys of the steps that failed.
        self.failed: list[str] = []

    def _rows(self, step: Step):
        return Preparation.objects.filter(track=self.tracks[step.track], key=step.key)

    def _set(self, item: Step, /, **fields) -> None:
        """Write fields of a step's row (and its heartbeat); a busy database costs a line, not the run."""
        if item.track not in self.tracks:
            return
        try:
            self._rows(item).update(updated_at=timezone.now(), **fields)
        except DatabaseError:
            logger.warning("could not record the progress of %s", item.key, exc_info=True)

    def plan(self) -> None:
        """Every step of this run, waiting (this run takes over the rows of an earlier one)."""
        now = timezone.now()
        for order, step in enumerate(self.steps):
            Preparation.objects.update_or_create(
                track=self.tracks[step.track], key=step.key,
                defaults={"label": step.label, "order": order, "state": Preparation.State.WAITING, "step": "",
                          "done": 0, "total": 0, "unit": step.unit, "message": "", "run": self.run,
                          "started_at": None, "finished_at": None, "updated_at": now})

    def start(self, step: Step, total: int = 0) -> None:
        self._set(step, state=Preparation.State.RUNNING, started_at=timezone.now(), total=total)

    def part(self, step: Step, text: str) -> None:
        self._set(step, step=text[:200])

    def advance(self, step: Step, done: int) -> None:
        self._set(step, done=done)

    def finish(self, step: Step) -> None:
        self._set(step, state=Preparation.State.DONE, step="", finished_at=timezone.now())

    def fail(self, step: Step, message: str) -> None:
        self._set(step, state=Preparation.State.FAILED, message=message[:500], finished_at=timezone.now())

    @contextlib.contextmanager
    def running(self, step: Step, total: int = 0) -> Iterator[None]:
        """Run a step: running, then done, or failed with its exception's last line (not raised again)."""
        self.start(step, total)
        try:
            yield
        except Exception as exc:
            logger.error("demo preparation %s failed:\n%s", step.key, traceback.format_exc())
            self.fail(step, f"{type(exc).__name__}: {exc}".splitlines()[0])
            self.failed.append(step.key)
        else:
            self.finish(step)

    def beat(self) -> None:
        """Touch this run's unfinished rows: the run is alive."""
        try:
            Preparation.objects.filter(run=self.run, state__in=(Preparation.State.WAITING, Preparation.State.RUNNING)
                                       ).update(updated_at=timezone.now())
        except DatabaseError:
            logger.warning("heartbeat not recorded (database busy?)", exc_info=True)


class Heartbeat:
    """A daemon thread calling ``progress.beat()`` every ``interval`` seconds until stopped."""

    def __init__(self, progress: Progress, interval: float = HEARTBEAT_SECONDS) -> None:
        self.progress, self.interval = progress, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-preparation-heartbeat", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                close_old_connections()
                self.progress.beat()
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


@contextlib.contextmanager
def exclusive(name: str = LOCK_NAME) -> Iterator[bool]:
    """An advisory lock under ARENA_DATA_DIR: True when held, False when another run holds it."""
    path = Path(settings.ARENA_DATA_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def announce(tracks: set[str], baselines: bool = True) -> None:
    """Record the steps ``build_demo --fast`` left for later as waiting, before the server starts.

    The track pages then say what is still to come from the first page on; should no
    ``prepare_demo`` take the rows over, they turn stalled (and say to run it) after STALE_AFTER.
    """
    steps = tuple(s for s in (STEPS if baselines else (TRANSFER,)) if s.track in tracks)
    Progress(steps, run="announced").plan()


def built_in_foreground() -> None:
    """A full ``build_demo`` built the transfer-attack set itself: its background step is done."""
    Preparation.objects.filter(track__slug=TRANSFER.track, key=TRANSFER.key).update(
        state=Preparation.State.DONE, step="", finished_at=timezone.now(), updated_at=timezone.now())


def _has_baseline(track: Track, name: str) -> bool:
    return Submission.objects.filter(track=track, is_baseline=True, name=name).exists()


def prepare(builder: DemoBuilder, out: IO[str], *, baselines: bool = True,
            heartbeat: float = HEARTBEAT_SECONDS) -> list[str]:
    """Run the slow phase (see the module docstring); the keys of the steps that failed."""
    steps = STEPS if baselines else (TRANSFER,)
    progress = Progress(steps)
    progress.plan()
    say: Callable[[str], None] = lambda line: out.write(line + "\n")  # noqa: E731
    with Heartbeat(progress, heartbeat):
        if TRANSFER in progress.steps:
            with progress.running(TRANSFER):
                made = builder.build_transfer_set(step=lambda text: progress.part(TRANSFER, text))
                if made is not None:
                    builder.rerun_baselines_lacking([made])
        if DETECTOR_BASELINE in progress.steps:
            with progress.running(DETECTOR_BASELINE):
                track = progress.tracks[DETECTOR_TRACK]
                if _has_baseline(track, baseline_title(DEFAULT_EPOCHS, DETECTOR_SEED)):
                    say("the small-CNN detector baseline is already submitted")
                else:
                    progress.part(DETECTOR_BASELINE, "training on the public half")
                    call_command("train_detector_baselines", stdout=out)
        if DIGIT_BASELINES in progress.steps:
            with progress.running(DIGIT_BASELINES, total=len(RECIPES)):
                track = progress.tracks[DIGITS_TRACK]
                for done, recipe in enumerate(RECIPES, start=1):
                    if _has_baseline(track, recipe.title):  # the default seed's name (train_digit_baselines)
                        say(f"  {recipe.name}: already a baseline")
                    else:
                        progress.part(DIGIT_BASELINES, f"training {recipe.name}")
                        call_command("train_digit_baselines", "--only", recipe.name, stdout=out)
                    progress.advance(DIGIT_BASELINES, done)
        # Baselines that were being evaluated when the transfer set arrived finished without it.
        detector = progress.tracks.get(DETECTOR_TRACK)
        transfer = detector.evaluation_sets.filter(name=TRANSFER_SET).first() if detector else None
        if transfer is not None:
            builder.rerun_baselines_lacking([transfer])
    return progress.failed
