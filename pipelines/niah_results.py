"""NIAH results: the scored rows aggregated as the released evaluation reports them (`aggregate`: accuracy per
length and depth for single hop; caption, QA and score per length for multi hop) and drawn as its heat map
(`heatmap_grid`, `heatmap_figure`, `draw_heatmap`: the reference's colour map, matplotlib, labelled axes)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from longvid.operators import niah


def aggregate(results: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Accuracy per (length, depth) (single hop) or caption / QA / score per length (multi hop)."""
    out: dict[str, Any] = {}
    if not results:
        return {"overall": None}
    if kind == "single":
        cells: dict[tuple[int, float], list[bool]] = defaultdict(list)
        for r in results:
            cells[(r["length"], r["depth"])].append(bool(r["correct"]))
        out["by_length_depth"] = [{"length": L, "depth": d, "depth_label": niah.depth_label(d),
                                   "accuracy": sum(v) / len(v), "n": len(v)} for (L, d), v in sorted(cells.items())]
        by_len: dict[int, list[bool]] = defaultdict(list)
        for r in results:
            by_len[r["length"]].append(bool(r["correct"]))
        out["by_length"] = [{"length": L, "accuracy": sum(v) / len(v), "n": len(v)} for L, v in sorted(by_len.items())]
        out["overall"] = sum(bool(r["correct"]) for r in results) / len(results)
        return out
    per: dict[int, dict[tuple[int, int], dict[str, bool]]] = defaultdict(dict)
    for r in results:
        per[r["length"]].setdefault((r["row"], r["item_id"]), {})[r["question"]] = bool(r["correct"])
    rows = []
    for L, pairs in sorted(per.items()):
        cap = [p.get("caption", False) for p in pairs.values()]
        qa = [p.get("qa", False) for p in pairs.values()]
        n = len(pairs)
        rows.append({"length": L, "caption": sum(cap) / n, "qa": sum(qa) / n, "score": (sum(cap) + sum(qa)) / (2 * n),
                     "pairs": n, "both_correct": sum(c and q for c, q in zip(cap, qa)),
                     "only_caption": sum(c and not q for c, q in zip(cap, qa)),
                     "only_qa": sum(q and not c for c, q in zip(cap, qa)),
                     "both_wrong": sum(not c and not q for c, q in zip(cap, qa))})
    out["by_length"] = rows
    allcap = [r["correct"] for r in results if r["question"] == "caption"]
    allqa = [r["correct"] for r in results if r["question"] == "qa"]
    out["caption"] = sum(allcap) / len(allcap) if allcap else None
    out["qa"] = sum(allqa) / len(allqa) if allqa else None
    out["overall"] = (sum(allcap) + sum(allqa)) / (len(allcap) + len(allqa))
    return out


_STOPS = ((0.0, (0xF0, 0x49, 0x6E)), (0.5, (0xEB, 0xB8, 0x39)), (1.0, (0x9A, 0xD5, 0xB3)))  # the reference's map


def score_color(v: float | None) -> tuple[int, int, int]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (200, 200, 200)
    v = min(1.0, max(0.0, float(v)))
    for (a, ca), (b, cb) in zip(_STOPS, _STOPS[1:]):
        if v <= b:
            t = (v - a) / (b - a)
            return tuple(int(round(x + (y - x) * t)) for x, y in zip(ca, cb))  # type: ignore[return-value]
    return _STOPS[-1][1]


def _frames_label(x: int) -> str:
    return f"{x / 1000:.1f}K" if x >= 1000 else str(x)


def score_colormap():
    """The reference's colour map (score_color's stops) as a matplotlib colormap; missing cells grey."""
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("niah", [(v, tuple(x / 255 for x in c)) for v, c in _STOPS])
    return cmap.with_extremes(bad=tuple(x / 255 for x in score_color(None)))


def heatmap_figure(grid: list[list[float | None]], row_labels: list[str], col_labels: list[str], title: str,
                   x_title: str = "Num. of frames", y_title: str = "Depth"):
    """The heat map as a matplotlib figure (Agg): one cell per (row, column) coloured by its score in [0, 1] (grey:
    no score), the value written inside, labelled axes, a colour bar. -> (figure, the cells' AxesImage)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    nr, nc = len(row_labels), len(col_labels)
    cells = np.ma.masked_invalid(np.array([[np.nan if v is None else float(v) for v in row] for row in grid],
                                          dtype=float).reshape(nr, nc))
    width = max(2.6 + 0.75 * nc, 1.0 + 0.085 * len(title))  # inches; the title fits
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.45 * nr), dpi=100)
    im = ax.imshow(cells, cmap=score_colormap(), vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for i in range(nr):
        for j in range(nc):
            v = grid[i][j]
            ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=9, color="black")
    ax.set_xticks(range(nc), col_labels)
    ax.set_yticks(range(nr), row_labels)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=ax, label="score", fraction=0.05, pad=0.03)
    fig.tight_layout()
    return fig, im


def draw_heatmap(grid: list[list[float | None]], row_labels: list[str], col_labels: list[str], path: str | Path,
                 title: str, x_title: str = "Num. of frames", y_title: str = "Depth") -> Path:
    """The heat map (heatmap_figure) as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig, _ = heatmap_figure(grid, row_labels, col_labels, title, x_title, y_title)
    p = Path(path)
    try:
        fig.savefig(p)
    finally:
        plt.close(fig)
    return p


def heatmap_grid(agg: dict[str, Any], kind: str) -> tuple[list[list[float | None]], list[str], list[str]]:
    if kind == "single":
        cells = agg.get("by_length_depth", [])
        lengths = sorted({c["length"] for c in cells})
        depths = sorted({c["depth"] for c in cells})
        val = {(c["length"], c["depth"]): c["accuracy"] for c in cells}
        grid = [[val.get((L, dd)) for L in lengths] for dd in depths]
        return grid, [niah.depth_label(dd) for dd in depths], [_frames_label(L) for L in lengths]
    rows = agg.get("by_length", [])
    lengths = [r["length"] for r in rows]
    grid = [[r[k] for r in rows] for k in ("caption", "qa", "score")]
    return grid, ["caption", "QA", "score"], [_frames_label(L) for L in lengths]

