"""Command line: submit a model and wait for its scores, poll a submission, show quota or a leaderboard.

    python -m arena_client submit model.pt2 --track mnist-digits --name "My LeNet" \\
        --url http://127.0.0.1:8000 --token $ARENA_TOKEN

``--url`` and ``--token`` default to $ARENA_URL and $ARENA_TOKEN. Exit status: 0 finished,
1 evaluation failed or cancelled, 2 bad usage, 3 quota used up, 4 refused or unreachable, 5 timed out.

While it waits, a terminal shows a live progress bar; when the output goes to a log file or a pipe,
it prints plain lines instead, each flushed at once: the submission's id and status URL, then one
line per change of state, of queue position or of stage (on stderr with ``--json``, which keeps
stdout for the JSON). Errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from arena_client.client import ArenaClient, ArenaError, EvaluationFailed, QuotaExceeded, RemoteSubmission

EXIT_FAILED, EXIT_QUOTA, EXIT_ERROR, EXIT_TIMEOUT = 1, 3, 4, 5


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ARENA_URL", "http://127.0.0.1:8000"),
                        help="the arena's address (default: $ARENA_URL or http://127.0.0.1:8000)")
    common.add_argument("--token", default=os.environ.get("ARENA_TOKEN"), help="API token (default: $ARENA_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("--quiet", "-q", action="store_true",
                        help="no progress display (no bars on a terminal, no status lines otherwise)")

    parser = argparse.ArgumentParser(prog="python -m arena_client", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", parents=[common], help="upload a model and wait for its scores")
    submit.add_argument("file", help=".pt2 archive (torch.export.save) or safetensors weights")
    submit.add_argument("--track", required=True, help="track slug, e.g. mnist-digits")
    submit.add_argument("--name", required=True, help="the model's name on the leaderboard")
    submit.add_argument("--zoo-architecture", default="", help="zoo architecture of safetensors weights")
    submit.add_argument("--format", dest="artifact_format", default="", choices=["", "pt2", "safetensors"])
    submit.add_argument("--architecture", default="", help="free text, e.g. ResNet-20")
    submit.add_argument("--paper-url", default="")
    submit.add_argument("--code-url", default="")
    submit.add_argument("--training-data", default="")
    submit.add_argument("--license", default="")
    submit.add_argument("--extra-data", action="store_true", help="trained with data beyond the track's")
    submit.add_argument("--private", action="store_true", help="keep it off the public leaderboard")
    submit.add_argument("--no-wait", action="store_true", help="return once uploaded")
    submit.add_argument("--poll", type=float, default=2.0, help="seconds between status polls")
    submit.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")

    status = commands.add_parser("status", parents=[common], help="show (or wait for) a submission")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="wait until the evaluation ends")
    status.add_argument("--poll", type=float, default=2.0)
    status.add_argument("--timeout", type=float, default=None)

    commands.add_parser("quota", parents=[common], help="submissions left today per track")

    board = commands.add_parser("leaderboard", parents=[common], help="a track's leaderboard")
    board.add_argument("track")
    board.add_argument("--view", default="", help='e.g. "shift:usps" or "threat:Linf-0.3"')
    return parser


def _print_submission(sub: RemoteSubmission, as_json: bool) -> None:
    if as_json:
        print(json.dumps(sub.data, indent=1))
        return
    print(f"{sub.data.get('name', '')} [{sub.id}]: {sub.state}")
    if sub.data.get("failure_reason"):
        print(sub.data["failure_reason"])
    if sub.state == "finished":
        print(sub.scores())
    elif sub.page_url:
        print(sub.page_url)


def _follow(sub: RemoteSubmission, args: argparse.Namespace) -> int:
    try:
        # Status lines (written when the output is not a terminal) keep stdout for the JSON with --json.
        sub.wait(poll_interval=args.poll, timeout=args.timeout, progress=False if args.quiet else None,
                 log=sys.stderr if args.json else None)
    except EvaluationFailed:
        _print_submission(sub, args.json)
        return EXIT_FAILED
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        return EXIT_TIMEOUT
    _print_submission(sub, args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    client = ArenaClient(args.url, args.token, progress=False if args.quiet else None)
    if args.command == "submit":
        sub = client.submit(args.file, track=args.track, name=args.name, zoo_architecture=args.zoo_architecture,
                            artifact_format=args.artifact_format, architecture=args.architecture,
                            paper_url=args.paper_url, code_url=args.code_url, training_data=args.training_data,
                            license=args.license, extra_data=args.extra_data or None,
                            is_public=False if args.private else None)
        if args.no_wait:
            _print_submission(sub, args.json)
            return 0
        if not args.json:
            print(f"uploaded: {sub.page_url}", file=sys.stderr, flush=True)
        return _follow(sub, args)
    if args.command == "status":
        sub = client.submission(args.id)
        if args.wait:
            return _follow(sub, args)
        _print_submission(sub, args.json)
        return EXIT_FAILED if sub.state in {"failed", "cancelled"} else 0
    if args.command == "quota":
        rows = client.quota()
        if args.json:
            print(json.dumps(rows, indent=1))
        for row in [] if args.json else rows:
            left = "unlimited" if row["exempt"] else row["left_today"]
            print(f"{row['track']}: {left} left today ({row['used_today']} used today, {row['used_total']} in all)")
        return 0
    board: dict[str, Any] = client.leaderboard(args.track, **({"view": args.view} if args.view else {}))
    if args.json:
        print(json.dumps(board, indent=1))
        return 0
    columns = board["columns"]
    print("rank  " + "  ".join(c["label"] for c in columns) + "  model")
    for row in board["rows"]:
        cells = []
        for c in columns:
            score = row["scores"].get(c["key"])
            cells.append("–" if score is None else f"{score['value']:.4f}")
        print(f"{row['rank'] or '–':>4}  " + "  ".join(cells) + f"  {row['name']}")
    return 0


def _line_buffered() -> None:
    """Flush stdout at each line even into a log file or a pipe (Python buffers it there by the block):
    a run followed with ``tail -f`` or from a training script shows its lines as they come."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):  # pragma: no cover - a closed or exotic stream
            pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _line_buffered()
    try:
        return _run(args)
    except QuotaExceeded as exc:
        print(f"quota: {exc.message}", file=sys.stderr)
        return EXIT_QUOTA
    except (ArenaError, FileNotFoundError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("interrupted; the evaluation goes on on the server", file=sys.stderr)
        return 130
