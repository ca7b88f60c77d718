"""The Robustness Arena client: upload a model, follow its evaluation, get its scores.

Only ``requests`` (and, for progress bars, ``tqdm``) are needed, so a training script can use it
without the platform installed::

    from arena_client import ArenaClient
    scores = ArenaClient("https://arena.example.org", token).submit(
        "model.pt2", track="mnist-digits", name="My LeNet").wait()
    print(scores["mnist-hidden:accuracy"].value)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import requests

from arena_client.multipart import MultipartStream

USER_AGENT = "arena-client/1"
TERMINAL = {"finished", "failed", "cancelled"}
# datetime.UTC needs Python 3.11; the client is also copied into older training environments.
UTC = timezone.utc  # noqa: UP017


class ArenaError(Exception):
    """The server refused a request or could not be reached; ``message`` says why in plain words."""

    def __init__(self, message: str, status_code: int | None = None, payload: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.payload = payload


class QuotaExceeded(ArenaError):
    """HTTP 429: no submission left on this track for now; ``retry_after`` is in seconds (None: ask the organisers)."""

    def __init__(self, message: str, retry_after: int | None = None, payload: Any = None) -> None:
        super().__init__(message, 429, payload)
        self.retry_after = retry_after


class EvaluationFailed(ArenaError):
    """The evaluation ended failed or cancelled; ``code`` is machine-readable, ``message`` is for people."""

    def __init__(self, submission: RemoteSubmission) -> None:
        data = submission.data
        reason = data.get("failure_reason") or f"The evaluation ended {data.get('state')}."
        super().__init__(reason, None, data)
        self.submission = submission
        self.code = data.get("failure_code", "")


class Score(NamedTuple):
    value: float
    ci_low: float | None
    ci_high: float | None
    num_examples: int
    evaluation_set: str
    metric: str

    def __str__(self) -> str:
        interval = "" if self.ci_low is None or self.ci_high is None else f" [{self.ci_low:.4f}, {self.ci_high:.4f}]"
        return f"{self.value:.4f}{interval}"


class Scores(dict):
    """``"<evaluation set>:<metric>"`` -> :class:`Score`, with where the numbers came from."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__()
        self.submission_id: str = data.get("id", "")
        self.page_url: str = data.get("page_url", "")
        self.suite_version: str = ""
        self.seed: int | None = None
        for row in data.get("results", []):
            score = Score(row["value"], row.get("ci_low"), row.get("ci_high"), row.get("num_examples", 0),
                          row["evaluation_set"], row["metric"])
            self[f"{score.evaluation_set}:{score.metric}"] = score
            self.suite_version, self.seed = row.get("suite_version", ""), row.get("seed")

    def __str__(self) -> str:
        width = max((len(k) for k in self), default=0)
        lines = [f"{k.ljust(width)}  {v}" for k, v in sorted(self.items())]
        lines.append(f"suite {self.suite_version}, seed {self.seed}: {self.page_url}")
        return "\n".join(lines)


def _tqdm(enabled: bool | None, **kwargs: Any) -> Any:
    """A tqdm bar, or a do-nothing stand-in without tqdm or with progress off (None: only on a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but the client works without it
        return nullcontext(_NoBar())
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(disable=not enabled, file=sys.stderr, **kwargs)


class _NoBar:
    n = 0

    def update(self, n: float = 1) -> None: ...

    def set_description_str(self, text: str) -> None: ...

    def refresh(self) -> None: ...


class RemoteSubmission:
    """A submission on the server; ``data`` is the last status the server sent."""

    def __init__(self, client: ArenaClient, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data

    def __repr__(self) -> str:
        return f"<RemoteSubmission {self.id} {self.state}>"

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state(self) -> str:
        return self.data.get("state", "")

    @property
    def status_url(self) -> str:
        return self.data.get("status_url") or self.client.api_url(f"submissions/{self.id}/")

    @property
    def page_url(self) -> str:
        return self.data.get("page_url", "")

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    def refresh(self) -> RemoteSubmission:
        self.data = self.client.request("GET", self.status_url)
        return self

    def scores(self) -> Scores:
        if self.state != "finished":
            raise ArenaError(f"Submission {self.id} is {self.state}; it has no scores yet.")
        return Scores(self.data)

    def wait(self, poll_interval: float = 2.0, timeout: float | None = None, progress: bool | None = None,
             on_update: Callable[[RemoteSubmission], None] | None = None, log: TextIO | None = None) -> Scores:
        """Poll the status URL until the evaluation ends; return its scores.

        Shows the queue position (jobs ahead, estimated start) and then the evaluation's own progress
        (stage and fraction). ``progress`` True draws a live bar on stderr, False shows nothing; None
        (default: the client's own ``progress``) draws the bar on a terminal, and when stdout or stderr
        is not one (a log file, a pipe) writes plain lines to ``log`` (default: stdout) instead, each
        flushed at once: the submission's id and status URL, then one line per change of state, of
        queue position or of stage. Raises EvaluationFailed when it fails or is cancelled, TimeoutError
        after ``timeout`` s. Brief network errors are retried: a long evaluation should survive a flaky
        connection.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        errors = 0
        chosen = progress if progress is not None else self.client.progress
        if chosen is None and not _on_terminal():
            display: Any = _StatusLines(log if log is not None else sys.stdout)
        else:
            display = _LiveBar(chosen)
        with display:
            while True:
                if not self.is_terminal:
                    try:
                        self.refresh()
                        errors = 0
                    except (requests.ConnectionError, requests.Timeout) as exc:
                        errors += 1
                        if errors > 5:
                            raise ArenaError(f"Lost the connection to {self.client.url}: {exc}") from exc
                        display.retrying(f"no answer from {self.client.url} ({exc.__class__.__name__}), "
                                         f"retrying ({errors}/5)")
                display.show(self)
                if on_update is not None:
                    on_update(self)
                if self.is_terminal:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"Submission {self.id} is still {self.state} after {timeout} s: "
                                       f"{self.status_url}")
                time.sleep(poll_interval * (1 + errors))
        if self.state != "finished":
            raise EvaluationFailed(self)
        return self.scores()


def _on_terminal() -> bool:
    """Whether stdout and stderr both go to a terminal (the live bar is drawn on stderr)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is None or not stream.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
    return True


def _utc_clock(value: Any, now: datetime | None = None) -> str:
    """An ISO 8601 time as "HH:MM UTC" (with its date when not today, UTC); "" when absent or unreadable."""
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return ""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return f"{when:%H:%M} UTC" if when.date() == today else f"{when:%Y-%m-%d %H:%M} UTC"


def _jobs_ahead(data: dict[str, Any]) -> int | None:
    """Jobs that start before this one: ``jobs_ahead``, or ``queue_position`` - 1 from an older server."""
    ahead = data.get("jobs_ahead")
    if ahead is None and data.get("queue_position"):
        ahead = int(data["queue_position"]) - 1
    return None if ahead is None else int(ahead)


def _queue_text(data: dict[str, Any], brief: bool, now: datetime | None = None) -> str:
    """Where a queued job stands: "queued: 3 jobs will start before this one (estimated start 01:40 UTC)",
    or with ``brief`` (the live bar) "queued: 3 jobs ahead, estimated start 01:40 UTC"."""
    ahead = _jobs_ahead(data)
    start = _utc_clock(data.get("estimated_start"), now)
    if ahead is None:
        place = ""
    elif ahead == 0:
        place = "next to start"
    elif brief:
        place = f"{ahead} job{'s' if ahead != 1 else ''} ahead"
    else:
        place = f"{ahead} job{'s' if ahead != 1 else ''} will start before this one"
    if brief:
        text = ", ".join(part for part in (place, start and f"estimated start {start}") if part)
    else:
        text = " ".join(part for part in (place, start and f"(estimated start {start})") if part)
        note = data.get("progress_stage") or ""  # e.g. "Requeued: the worker of attempt 1 stopped responding"
        if note:
            text = f"{text}. {note}" if text else note
    return f"queued: {text}" if text else "queued"


class _LiveBar:
    """The live display on a terminal: a tqdm bar on stderr with the queue place, then stage and percentage."""

    def __init__(self, enabled: bool | None) -> None:
        self._context = _tqdm(enabled, total=100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        self.bar: Any = None

    def __enter__(self) -> _LiveBar:
        self.bar = self._context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._context.__exit__(*exc)

    def retrying(self, text: str) -> None:  # the bar's elapsed time keeps counting; no line over it
        pass

    def show(self, sub: RemoteSubmission) -> None:
        bar, state = self.bar, sub.state
        if state == "queued":
            bar.set_description_str(_queue_text(sub.data, brief=True)[:70])
        else:
            stage = sub.data.get("progress_stage") or ""
            bar.set_description_str((f"{state}: {stage}" if stage and stage != state else state)[:60])
        target = 100 * float(sub.data.get("progress") or 0)
        if state == "finished":
            target = 100
        if target > bar.n:
            bar.update(target - bar.n)


class _StatusLines:
    """Plain lines for a log file or a pipe, each flushed at once: the submission's id and status URL, then one
    line per change of state, of queue position or of stage (not one per poll)::

        2026-12-02T01:23:45Z submission 5c0f...: https://arena.example.org/api/v1/submissions/5c0f.../
        2026-12-02T01:23:45Z queued: 3 jobs will start before this one (estimated start 01:40 UTC)
        2026-12-02T01:41:02Z running: attacking (APGD-CE) 40%
    """

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.started = False
        self.last: tuple[Any, ...] | None = None

    def __enter__(self) -> _StatusLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @staticmethod
    def _line(text: str, stream: TextIO | None) -> None:
        if stream is not None:  # None: no console at all (pythonw)
            print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {text}", file=stream, flush=True)

    def retrying(self, text: str) -> None:  # a warning: on stderr, like the errors
        self._line(text, sys.stderr)

    def show(self, sub: RemoteSubmission) -> None:
        if not self.started:
            self.started = True
            self._line(f"submission {sub.id}: {sub.status_url}", self.stream)
        data, state = sub.data, sub.state
        stage = data.get("progress_stage") or ""
        if state == "queued":
            key: tuple[Any, ...] = (state, _jobs_ahead(data), stage)
            text = _queue_text(data, brief=False)
        elif state == "running":
            key = (state, stage)
            percent = f"{100 * float(data.get('progress') or 0):.0f}%"
            text = f"running: {stage} {percent}" if stage else f"running {percent}"
        else:
            key = (state,)
            code = data.get("failure_code") or ""
            text = f"{state} ({code})" if code and state != "finished" else state
        if key != self.last:
            self.last = key
            self._line(text, self.stream)


class ArenaClient:
    """Talks to one Robustness Arena server with an API token (the *API token* page shows yours)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, progress: bool | None = None,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("ARENA_TOKEN")
        self.timeout = timeout
        self.progress = progress
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"
        if self.token:
            self.session.headers["Authorization"] = f"Token {self.token}"

    def api_url(self, path: str) -> str:
        return f"{self.url}/api/v1/{path.lstrip('/')}"

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """One API call; errors become ArenaError (or QuotaExceeded) with the server's own words."""
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, url if "://" in url else self.api_url(url), **kwargs)
        if response.status_code < 400:
            return response.json() if response.content else None
        try:
            payload = response.json()
        except ValueError:
            payload = {"detail": response.text[:500] or response.reason}
        message = _message(payload) or f"HTTP {response.status_code}"
        if response.status_code == 429:
            retry = response.headers.get("Retry-After")
            raise QuotaExceeded(message, int(retry) if retry and retry.isdigit() else None, payload)
        if response.status_code in (401, 403) and not self.token:
            message += " (no API token given: pass token=... or set ARENA_TOKEN)"
        raise ArenaError(message, response.status_code, payload)

    def submit(self, path: str | os.PathLike[str], track: str, name: str, *, zoo_architecture: str = "",
               artifact_format: str = "", architecture: str = "", paper_url: str = "", code_url: str = "",
               training_data: str = "", extra_data: bool | None = None, license: str = "",
               is_public: bool | None = None, progress: bool | None = None) -> RemoteSubmission:
        """Upload a .pt2 archive (or safetensors weights with ``zoo_architecture``) to ``track``.

        The file is streamed from disk with an upload progress bar; returns the new submission,
        queued for evaluation (call ``.wait()`` for its scores).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No such model file: {path}")
        fields = {"track": track, "name": name, "zoo_architecture": zoo_architecture,
                  "artifact_format": artifact_format, "architecture": architecture, "paper_url": paper_url,
                  "code_url": code_url, "training_data": training_data, "license": license}
        fields = {k: v for k, v in fields.items() if v}
        if extra_data is not None:
            fields["extra_data"] = "true" if extra_data else "false"
        if is_public is not None:
            fields["is_public"] = "true" if is_public else "false"
        with _tqdm(progress if progress is not None else self.progress, total=path.stat().st_size, unit="B",
                   unit_scale=True, unit_divisor=1024, desc=f"uploading {path.name}") as bar:
            body = MultipartStream(fields, "artifact", path, on_chunk=bar.update)
            data = self.request("POST", "submissions/", data=body, headers={"Content-Type": body.content_type})
        return RemoteSubmission(self, data)

    def submission(self, submission_id: str) -> RemoteSubmission:
        return RemoteSubmission(self, self.request("GET", f"submissions/{submission_id}/"))

    def cancel(self, submission_id: str) -> RemoteSubmission:
        return RemoteSubmission(self, self.request("POST", f"submissions/{submission_id}/cancel/"))

    def quota(self) -> list[dict[str, Any]]:
        """Submissions used and left today on each track."""
        return self.request("GET", "quota/")

    def leaderboard(self, track: str, **filters: str) -> dict[str, Any]:
        """A track's leaderboard table (filters: view, sort, order, model_type, extra_data, verified)."""
        return self.request("GET", f"tracks/{track}/leaderboard/", params=filters)


def _message(payload: Any) -> str:
    """The server's explanation: ``detail``, or the field errors of a refused upload, as one line."""
    if isinstance(payload, dict):
        if "detail" in payload:
            return str(payload["detail"])
        parts = []
        for key, value in payload.items():
            text = "; ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            parts.append(text if key == "non_field_errors" else f"{key}: {text}")
        return " ".join(parts)
    if isinstance(payload, list):
        return "; ".join(str(v) for v in payload)
    return str(payload or "")
