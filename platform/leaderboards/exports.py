"""CSV and JSON forms of a leaderboard table: the same rows, columns and filters as the page."""

from __future__ import annotations

import csv
import io
from typing import Any

from leaderboards.queries import Leaderboard
from submissions.rounding import round_released


def _score(result: Any) -> dict[str, Any] | None:
    """A score as released: rounded to the digits its interval justifies (submissions.rounding)."""
    if result is None:
        return None
    value, low, high = round_released(result.metric, result.value, result.ci_low, result.ci_high)
    return {"value": value, "ci_low": low, "ci_high": high, "num_examples": result.num_examples}


def as_json(board: Leaderboard, request: Any = None) -> dict[str, Any]:
    def absolute(path: str) -> str:
        return request.build_absolute_uri(path) if request is not None else path

    return {
        "track": board.track.slug,
        "suite_version": board.track.suite_version,
        "view": board.filters.view,
        "filters": board.filters.as_params(),
        "sort": board.sort,
        "order": "desc" if board.descending else "asc",
        "rank_column": board.rank_key,
        "columns": [{"key": c.key, "evaluation_set": c.evaluation_set.name, "metric": c.metric, "label": c.label,
                     "higher_is_better": c.higher_is_better} for c in board.columns],
        "rows": [
            {
                "id": str(r.submission.public_id),
                "name": r.submission.name,
                "owner": r.submission.owner.username,
                "rank": r.rank,
                "model_type": r.submission.model_type,
                "extra_data": r.submission.extra_data,
                "is_baseline": r.submission.is_baseline,
                "verified": r.verified,
                "unreliable": r.unreliable,
                "suite_version": r.suite_version,
                "paper_url": r.submission.paper_url,
                "code_url": r.submission.code_url,
                "page_url": absolute(r.url),
                "scores": {k: _score(v) for k, v in r.scores.items()},
            }
            for r in board.rows
        ],
    }


def as_csv(board: Leaderboard) -> str:
    """One line per model; each score column becomes value, ci_low and ci_high columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["rank", "id", "name", "owner", "model_type", "extra_data", "baseline", "verified", "unreliable",
            "suite_version", "paper_url", "code_url"]
    for c in board.columns:
        direction = "higher_better" if c.higher_is_better else "lower_better"
        head += [f"{c.key} ({direction})", f"{c.key} ci_low", f"{c.key} ci_high"]
    writer.writerow(head)
    for r in board.rows:
        s = r.submission
        line: list[Any] = ["" if r.rank is None else r.rank, str(s.public_id), s.name, s.owner.username, s.model_type,
                           int(s.extra_data), int(s.is_baseline), int(r.verified), int(r.unreliable),
                           r.suite_version, s.paper_url, s.code_url]
        for c in board.columns:
            score = r.scores.get(c.key)
            if score is None:
                line += ["", "", ""]
            else:
                value, low, high = round_released(score.metric, score.value, score.ci_low, score.ci_high)
                line += [value, "" if low is None else low, "" if high is None else high]
        writer.writerow([_safe_cell(v) for v in line])
    return out.getvalue()


def _safe_cell(value: Any) -> Any:
    """Defuse spreadsheet formulas in user-written text (names starting with =, +, -, @)."""
    if isinstance(value, str) and value[:1] in {"=", "+", "-", "@", "\t", "\r"}:
        return "'" + value
    return value
