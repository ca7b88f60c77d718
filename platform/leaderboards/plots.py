"""Plotly figures, built in Python and drawn by the locally served plotly.js.

* The effective-robustness plot (Taori et al. 2020): clean accuracy against shifted accuracy on
  logit or probit axes (ticks labelled in percent), the baseline line with its bootstrap band,
  y = x, points coloured by model type, the viewer's own models ringed, each point a link.
* Robust against clean accuracy for a threat model.
* The corruption heatmap of one model (corruption x severity).
* For detector tracks, the collapse of AUC under each attack, beside Carlini & Farid's numbers.

Each figure has a constant number of traces whatever the number of models, so a leaderboard of
thousands of models costs one array per model type, not one trace per model.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from django.utils.safestring import SafeString, mark_safe

from benchmarks.models import EvaluationSet
from evaluator.metrics.effective_robustness import inverse_transform, transform
from evaluator.shifts.corruptions import CORRUPTIONS
from leaderboards.fits import stored_line
from leaderboards.queries import ATTACK_REFERENCES, ATTACKED_AUC, ROBUST, Leaderboard, attack_label

#: Okabe-Ito colours (distinguishable with colour-vision deficiencies) and a distinct symbol each,
#: so the model type never rests on colour alone.
MODEL_TYPE_STYLE = {
    "standard": ("Standard training (baselines)", "#0072B2", "circle"),
    "robust": ("Robust training", "#D55E00", "diamond"),
    "extra_data": ("Extra training data", "#009E73", "square"),
    "submission": ("Submission", "#CC79A7", "triangle-up"),
}
TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999,
         0.9995, 0.9999)
FONT = {"family": "system-ui, sans-serif", "size": 13, "color": "#1a1a1a"}


def figure_json(fig: go.Figure) -> SafeString:
    """The figure as JSON that is safe inside a <script type="application/json"> element."""
    text = pio.to_json(fig, validate=False, pretty=False, engine="json")
    return mark_safe(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))  # noqa: S308


def hover_text(text: str) -> str:
    """``text`` as plain text in a plotly label: ``<``, ``>`` and ``&`` as entities.

    Plotly draws hover labels, tick labels and trace text from a subset of HTML (``<a href>``,
    ``<b>``, ``<br>``...), so a model named ``<a href="https://evil">x</a>`` would otherwise become a
    link in a leaderboard's hover label. Plotly turns ``&lt;``, ``&gt;`` and ``&amp;`` back into the
    characters after it has looked for tags; it knows no other named entity (``&quot;`` would show
    as is), hence ``quote=False``.
    """
    return html.escape(text, quote=False)


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _layout(x_title: str, y_title: str) -> dict[str, Any]:
    """Shared look. No figure title (the page's heading names the plot); the legend sits above the
    plot area, where it cannot collide with the x-axis title on a narrow screen."""
    return {
        "template": "none",
        "font": FONT,
        "margin": {"l": 70, "r": 20, "t": 20, "b": 60},
        "height": 560,
        "hovermode": "closest",
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "font": {"size": 12},
                   "traceorder": "normal"},
        "xaxis": {"title": {"text": x_title}, "gridcolor": "#e5e5e5", "zeroline": False, "linecolor": "#444",
                  "showline": True, "ticks": "outside"},
        "yaxis": {"title": {"text": y_title}, "gridcolor": "#e5e5e5", "zeroline": False, "linecolor": "#444",
                  "showline": True, "ticks": "outside"},
    }


def _ticks(low: float, high: float, kind: str) -> tuple[list[float], list[str]]:
    """Percent tick labels at accuracies whose transformed positions fall in [low, high], not crowded."""
    positions = [(float(transform(t, kind)), t) for t in TICKS]
    chosen: list[tuple[float, float]] = []
    min_gap = (high - low) / 9
    for pos, acc in positions:
        if low <= pos <= high and (not chosen or pos - chosen[-1][0] >= min_gap):
            chosen.append((pos, acc))
    labels = [f"{100 * acc:g}%" for _, acc in chosen]
    return [p for p, _ in chosen], labels


def _points(board: Leaderboard, x_of: dict[int, float], y_of: dict[int, float],
            hover_extra: Callable[[int], list[str]], user: Any) -> tuple[list[go.Scatter], int]:
    """One scatter trace per model type, plus a ring around the viewer's own models.

    Arrays go to plotly as numpy arrays: validating them is a copy, not a walk over every element.
    """
    groups: dict[str, list[tuple[float, float, list[str]]]] = {}
    mine: list[tuple[float, float, list[str]]] = []
    user_id = user.pk if user is not None and user.is_authenticated else None
    for row in board.rows:
        s = row.submission
        x, y = x_of.get(s.pk), y_of.get(s.pk)
        if x is None or y is None:
            continue
        labels = [s.name, s.owner.username, *hover_extra(s.pk)]
        point = (x, y, [row.url, *map(hover_text, labels)])
        groups.setdefault(s.model_type, []).append(point)
        if user_id is not None and s.owner_id == user_id:
            mine.append(point)

    def arrays(points: list[tuple[float, float, list[str]]]) -> dict[str, np.ndarray]:
        custom = np.empty((len(points), len(points[0][2])), dtype=object)
        custom[:] = [p[2] for p in points]
        return {"x": np.array([p[0] for p in points]), "y": np.array([p[1] for p in points]), "customdata": custom}

    hover = ("<b>%{customdata[1]}</b><br>by %{customdata[2]}<br>%{customdata[3]}<br>%{customdata[4]}"
             "<br>%{customdata[5]}<extra>%{fullData.name}</extra>")
    traces = []
    for model_type, (label, colour, symbol) in MODEL_TYPE_STYLE.items():
        if model_type in groups:
            traces.append(go.Scatter(**arrays(groups[model_type]), mode="markers", name=label, hovertemplate=hover,
                                     marker={"color": colour, "symbol": symbol, "size": 9,
                                             "line": {"color": "#ffffff", "width": 1}}))
    if mine:
        traces.append(go.Scatter(**arrays(mine), mode="markers", name="Your models", hovertemplate=hover,
                                 marker={"symbol": "circle-open", "size": 18, "color": "#000000",
                                         "line": {"width": 2.5}}))
    return traces, sum(len(g) for g in groups.values())


def effective_robustness_figure(board: Leaderboard, user: Any = None) -> go.Figure | None:
    """Clean vs shifted accuracy on transformed axes, with the baseline line, its band and y = x."""
    shift, clean, kind = board.plot_shift, board.clean_set, board.filters.scale
    if shift is None or clean is None:
        return None
    fit_row = board.fits.get((shift.pk, kind))
    fit = stored_line(fit_row) if fit_row is not None else None
    acc = board.values
    ids = [r.submission.pk for r in board.rows]
    clean_acc = {pk: acc[pk][(clean.pk, "accuracy")] for pk in ids if (clean.pk, "accuracy") in acc.get(pk, {})}
    shift_acc = {pk: acc[pk][(shift.pk, "accuracy")] for pk in ids if (shift.pk, "accuracy") in acc.get(pk, {})}
    both = [pk for pk in ids if pk in clean_acc and pk in shift_acc]
    if not both and fit is None:
        return None
    # Transform every accuracy in one vectorised call per axis.
    tx = dict(zip(both, np.atleast_1d(transform(np.array([clean_acc[pk] for pk in both]), kind)).tolist(),
                  strict=True)) if both else {}
    ty = dict(zip(both, np.atleast_1d(transform(np.array([shift_acc[pk] for pk in both]), kind)).tolist(),
                  strict=True)) if both else {}
    zs = np.array(list(tx.values()) + list(ty.values()))
    if fit is not None:
        zs = np.concatenate([zs, np.asarray(transform(np.array(fit.original_accs), kind)),
                             np.asarray(transform(np.array(fit.shifted_accs), kind))])
    span = max(float(zs.max() - zs.min()), 0.5)
    low, high = float(zs.min()) - 0.08 * span, float(zs.max()) + 0.08 * span
    predicted = {}
    if fit is not None and both:
        predicted = dict(zip(both, np.atleast_1d(fit.predict(np.array([clean_acc[pk] for pk in both]))).tolist(),
                             strict=True))

    traces: list[go.Scatter] = []
    grid = np.linspace(low, high, 80)
    traces.append(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x (no drop)",
                             line={"color": "#777777", "dash": "dot", "width": 1.5}, hoverinfo="skip"))
    if fit is not None:
        xs = np.asarray(inverse_transform(grid, kind))
        line = np.asarray(transform(np.asarray(fit.predict(xs)), kind))
        if fit.bootstrap_slopes:
            band_low, band_high = fit.band(xs)
            traces.append(go.Scatter(x=grid, y=np.asarray(transform(band_low, kind)), mode="lines",
                                     line={"width": 0}, showlegend=False, hoverinfo="skip", name="band low"))
            traces.append(go.Scatter(x=grid, y=np.asarray(transform(band_high, kind)), mode="lines",
                                     line={"width": 0}, fill="tonexty", fillcolor="rgba(0,114,178,0.18)",
                                     name="95% bootstrap band", hoverinfo="skip"))
        traces.append(go.Scatter(x=grid, y=line, mode="lines", name=f"Baseline fit ({fit.n_models} models)",
                                 line={"color": "#0072B2", "width": 2.5}, hoverinfo="skip",
                                 meta={"slope": fit.slope, "intercept": fit.intercept}))

    def hover(pk: int) -> list[str]:
        c, s = clean_acc[pk], shift_acc[pk]
        er = f"effective robustness {100 * (s - predicted[pk]):+.2f} pt" if pk in predicted else ""
        return [f"{clean.name}: {_pct(c)}", f"{shift.name}: {_pct(s)}", er]

    points, count = _points(board, tx, ty, hover, user)
    traces += points
    fig = go.Figure(data=traces)
    tickvals, ticktext = _ticks(low, high, kind)
    layout = _layout(f"{clean.name} accuracy ({kind} scale)", f"{shift.name} accuracy ({kind} scale)")
    for axis in ("xaxis", "yaxis"):
        layout[axis].update(range=[low, high], tickvals=tickvals, ticktext=ticktext)
    # Equal scales, so y = x is a diagonal: the plot area shrinks to a square rather than
    # stretching one axis's range.
    layout["xaxis"]["constrain"] = "domain"
    layout["yaxis"].update(scaleanchor="x", scaleratio=1, constrain="domain")
    layout["meta"] = {"models": count, "has_line": fit is not None}
    fig.update_layout(layout)
    return fig


def robust_accuracy_figure(board: Leaderboard, user: Any = None) -> go.Figure | None:
    """Robust accuracy under one threat model against clean accuracy, with y = x as the ceiling."""
    threat, clean = board.plot_threat, board.clean_set
    if not threat or clean is None:
        return None
    metric = f"{ROBUST}{threat}"
    acc = board.values

    clean_pct = {pk: 100 * v[(clean.pk, "accuracy")] for pk, v in acc.items() if (clean.pk, "accuracy") in v}
    robust_pct = {pk: 100 * v[(clean.pk, metric)] for pk, v in acc.items() if (clean.pk, metric) in v}

    def hover(pk: int) -> list[str]:
        c, r = clean_pct[pk], robust_pct[pk]
        return [f"clean {c:.2f}%", f"robust ({threat}) {r:.2f}%", f"gap {c - r:.2f} pt"]

    points, count = _points(board, clean_pct, robust_pct, hover, user)
    if not count:
        return None
    xs = np.concatenate([t.x for t in points])
    ys = np.concatenate([t.y for t in points])
    x_low, x_high = max(0.0, float(xs.min()) - 3), min(100.0, float(xs.max()) + 1)
    y_low, y_high = max(0.0, float(ys.min()) - 5), min(100.0, max(float(ys.max()) + 5, 10.0))
    diagonal = go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="y = x (attack had no effect)",
                          line={"color": "#777777", "dash": "dot", "width": 1.5}, hoverinfo="skip")
    fig = go.Figure(data=[diagonal, *points])
    layout = _layout(f"{clean.name} accuracy (%)", f"robust accuracy, {threat} (%)")
    layout["height"] = 480
    layout["xaxis"].update(range=[x_low, x_high], ticksuffix="%")
    layout["yaxis"].update(range=[y_low, y_high], ticksuffix="%")
    layout["meta"] = {"models": count}
    fig.update_layout(layout)
    return fig


def corruption_heatmap(cells: dict[tuple[str, int], float]) -> go.Figure:
    """Accuracy per corruption (rows) and severity (columns) of one model on one synthetic-shift set."""
    corruptions = sorted({c for c, _ in cells}, key=_corruption_order)
    severities = sorted({s for _, s in cells})
    z = [[cells.get((c, s)) for s in severities] for c in corruptions]
    text = [[_pct(v, 1) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=[[None if v is None else 100 * v for v in row] for row in z], x=[str(s) for s in severities],
        y=[c.replace("_", " ") for c in corruptions], text=text, texttemplate="%{text}", zmin=0, zmax=100,
        colorscale="Viridis", colorbar={"title": {"text": "accuracy"}, "ticksuffix": "%"},
        hovertemplate="%{y}, severity %{x}: %{text}<extra></extra>", xgap=1, ygap=1,
    ))
    layout = _layout("severity", "")
    layout["height"] = 90 + 30 * len(corruptions)
    layout["yaxis"].update(autorange="reversed", showline=False, ticks="", gridcolor="rgba(0,0,0,0)")
    layout["xaxis"].update(showline=False, ticks="", gridcolor="rgba(0,0,0,0)", side="top")
    layout["margin"] = {"l": 130, "r": 10, "t": 60, "b": 10}
    fig.update_layout(layout)
    return fig


def _corruption_order(name: str) -> tuple[int, str]:

    return (CORRUPTIONS.index(name), name) if name in CORRUPTIONS else (len(CORRUPTIONS), name)


#: Carlini & Farid (2020), their detector's AUC with no attack and under each attack (their table).
PAPER_COLLAPSE = (("clean", 0.95), ("lowest bit", 0.0005), ("universal patch", 0.08), ("universal latent", 0.17),
                  ("black-box transfer", 0.22))


def detector_attack_figure(board: Leaderboard, user: Any = None) -> go.Figure | None:
    """AUC with no attack and under each attack of the suite, one line per model, and the paper's.

    Each model type is one trace whose models are separated by gaps (None), so the figure has a
    constant number of traces however many models there are.
    """
    clean = board.clean_set
    if clean is None or not board.attacks:
        return None
    transfer = [s for s in board.shift_sets if s.shift_kind == EvaluationSet.ShiftKind.ADVERSARIAL]
    conditions: list[tuple[str, int, str]] = [("no attack", clean.pk, "auc")]
    conditions += [(attack_label(a), clean.pk, f"{ATTACKED_AUC}{a}") for a in board.attacks
                   if a not in ATTACK_REFERENCES and not a.startswith("min-")]
    conditions += [(f"transfer ({s.name})", s.pk, "auc") for s in transfer]
    names = [c[0] for c in conditions]
    groups: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    count = 0
    for row in board.rows:
        mine = board.values.get(row.submission.pk, {})
        ys = [mine.get((set_id, metric)) for _, set_id, metric in conditions]
        if ys[0] is None or all(y is None for y in ys[1:]):
            continue
        xs, yv, text = groups.setdefault(row.submission.model_type, ([], [], []))
        xs.extend([*names, None])
        yv.extend([*ys, None])
        text.extend([hover_text(row.submission.name)] * len(names) + [None])
        count += 1
    if not count:
        return None
    traces: list[go.Scatter] = []
    for model_type, (label, colour, symbol) in MODEL_TYPE_STYLE.items():
        if model_type in groups:
            xs, ys, text = groups[model_type]
            traces.append(go.Scatter(x=xs, y=ys, text=text, mode="lines+markers", name=label, connectgaps=False,
                                     hovertemplate="<b>%{text}</b><br>%{x}: AUC %{y:.3f}<extra></extra>",
                                     line={"color": colour, "width": 1.5},
                                     marker={"color": colour, "symbol": symbol, "size": 8}))
    # Where each of the paper's numbers sits on this plot's axis (absent conditions are skipped).
    placed = {"clean": names[0], "lowest bit": attack_label("Linf-1/255"), "universal latent": attack_label("latent"),
              "universal patch": next((n for n in names if n.startswith("universal patch")), None),
              "black-box transfer": next((n for n in names if n.startswith("transfer")), None)}
    paper = [(placed[key], value) for key, value in PAPER_COLLAPSE if placed[key] in names]
    if paper:
        traces.insert(0, go.Scatter(x=[p[0] for p in paper], y=[p[1] for p in paper], mode="markers+lines",
                                    name="Carlini & Farid 2020 (their detector)",
                                    line={"color": "#777777", "dash": "dot", "width": 1.5},
                                    marker={"color": "#777777", "symbol": "x", "size": 9},
                                    hovertemplate="paper: %{x}: AUC %{y:.4f}<extra></extra>"))
    chance = go.Scatter(x=[names[0], names[-1]], y=[0.5, 0.5], mode="lines", name="chance (AUC 0.5)",
                        line={"color": "#bbbbbb", "dash": "dash", "width": 1}, hoverinfo="skip")
    fig = go.Figure(data=[chance, *traces])
    layout = _layout("condition", "AUC (fake is positive)")
    layout["height"] = 480
    layout["xaxis"].update(type="category", categoryorder="array", categoryarray=names)
    layout["yaxis"].update(range=[0, 1.02])
    layout["meta"] = {"models": count}
    fig.update_layout(layout)
    return fig
