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
from pathlib import Path
from typing import Any, NamedTuple

import requests

from arena_client.multipart import MultipartStream

USER_AGENT = "arena-client/1"
TERMINAL = {"finished", "failed", "cancelled"}


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
             on_update: Callable[[RemoteSubmission], None] | None = None) -> Scores:
        """Poll the status URL until the evaluation ends; return its scores.

        Shows the queue position and then the evaluation's own progress (stage and fraction).
        Raises EvaluationFailed when it fails or is cancelled, TimeoutError after ``timeout`` s.
        Brief network errors are retried: a long evaluation should survive a flaky connection.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        errors = 0
        with _tqdm(progress if progress is not None else self.client.progress, total=100, unit="%",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:
            while True:
                if not self.is_terminal:
                    try:
                        self.refresh()
                        errors = 0
                    except (requests.ConnectionError, requests.Timeout) as exc:
                        errors += 1
                        if errors > 5:
                            raise ArenaError(f"Lost the connection to {self.client.url}: {exc}") from exc
                self._show(bar)
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

    def _show(self, bar: Any) -> None:
        state = self.state
        if state == "queued":
            position = self.data.get("queue_position")
            bar.set_description_str(f"queued{f' (position {position})' if position else ''}")
        else:
            stage = self.data.get("progress_stage") or state
            bar.set_description_str(f"{state}: {stage}"[:60])
        target = 100 * float(self.data.get("progress") or 0)
        if state == "finished":
            target = 100
        if target > bar.n:
            bar.update(target - bar.n)


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
