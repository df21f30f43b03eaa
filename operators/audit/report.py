"""report.html: one self-contained page (inline CSS, SVG charts, images as data: URIs, no script, no network).

Sections: leakage counts per benchmark and method, how each method was run, the corpus per source (hours,
samples, duration and frames-per-sample histograms, failures by reason), duplicates, and for flagged samples a
contact sheet of the sample's stored frames (decoded from its shard) beside the benchmark evidence.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from longvid.operators import storage

from .videos import decode_all, frame_at, read_members

log = logging.getLogger("longvid.audit")
E = html.escape

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#1d2433;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #e4e7ee;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.muted{color:#667085}.small{font-size:12px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d9dde6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}.hit{background:#fde8e8;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d9dde6;border-radius:6px;padding:10px;margin:10px 0;display:flex;gap:14px;align-items:flex-start}
.card img{border:1px solid #ccc;max-width:100%}.ev{flex:1;min-width:320px}.ev li{margin:3px 0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:1px 6px;border-radius:9px;background:#eef1f6;font-size:12px;margin-right:4px}
.m-video_id{background:#e0ecff}.m-text_ngram{background:#fff0d6}.m-frame_hash{background:#e3f6e8}
.ok{color:#137333;font-weight:600}.bad{color:#b42318;font-weight:600}
svg text{font:11px system-ui,sans-serif;fill:#344054}
"""


def _bars(values: list[float], labels: list[str], title: str, width: int = 360, height: int = 150, color: str = "#4e79a7") -> str:
    """A small vertical bar chart as inline SVG."""
    n = max(len(values), 1)
    top = max(values) if values and max(values) > 0 else 1
    left, bottom, th = 8, 22, 30
    bw = (width - 2 * left) / n
    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="{E(title)}">',
           f'<text x="{left}" y="12" style="font-weight:600">{E(title)}</text>']
    ph = height - bottom - th
    for i, (v, lab) in enumerate(zip(values, labels)):
        h = ph * (v / top)
        x = left + i * bw
        out.append(f'<rect x="{x + 1:.1f}" y="{th + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" fill="{color}"><title>{E(lab)}: {v:g}</title></rect>')
        if v:
            out.append(f'<text x="{x + bw / 2:.1f}" y="{th + ph - h - 2:.1f}" text-anchor="middle">{v:g}</text>')
        out.append(f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 12:.1f}" text-anchor="middle" style="font-size:9px">{E(lab)}</text>')
    out.append(f'<line x1="{left}" x2="{width - left}" y1="{th + ph:.1f}" y2="{th + ph:.1f}" stroke="#98a2b3"/></svg>')
    return "".join(out)


def _hbars(items: list[tuple[str, float]], title: str, width: int = 560) -> str:
    """Horizontal bars (label, value) as inline SVG."""
    rh, lw = 20, 170
    height = 22 + rh * max(len(items), 1)
    top = max([v for _, v in items] or [1]) or 1
    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="{E(title)}">',
           f'<text x="0" y="12" style="font-weight:600">{E(title)}</text>']
    for i, (lab, v) in enumerate(items):
        y = 20 + i * rh
        w = (width - lw - 50) * (v / top)
        out.append(f'<text x="{lw - 6}" y="{y + 13}" text-anchor="end">{E(lab[:28])}</text>'
                   f'<rect x="{lw}" y="{y + 2}" width="{w:.1f}" height="{rh - 6}" fill="#e15759"/>'
                   f'<text x="{lw + w + 4:.1f}" y="{y + 13}">{v:g}</text>')
    out.append("</svg>")
    return "".join(out)


def _bin_labels(edges: list, minutes: bool = True) -> list[str]:
    """Each bin by its lower edge ("10" is 10 up to the next label); the last one is "≥ edge"."""
    def f(x):
        x = float(x)
        return f"{x / 60:g}m" if minutes and x >= 60 else f"{x:g}"
    labs = [f(a) for a in edges[:-1]]
    if edges[-1] == "inf" and labs:
        labs[-1] = "≥" + labs[-1]
    return labs


def _data_uri(img: Image.Image, quality: int = 72) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(frames: list[np.ndarray], marked: set[int] = frozenset(), cols: int = 6, thumb: int = 112, max_frames: int = 24) -> Image.Image:
    """Thumbnails of up to `max_frames` evenly spaced frames, numbered; frames in `marked` get a red border."""
    if not frames:
        raise ValueError("no frames")
    pick = sorted(set(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round().astype(int).tolist()) | {m for m in marked if m < len(frames)})
    pick = pick[: max_frames + 8]
    rows = (len(pick) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (thumb + 4) + 4, rows * (thumb + 18) + 4), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for k, i in enumerate(pick):
        im = Image.fromarray(frames[i])
        scale = thumb / max(im.width, im.height)  # small stored frames are enlarged, large ones reduced
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
        x, y = 4 + (k % cols) * (thumb + 4), 4 + (k // cols) * (thumb + 18)
        sheet.paste(im, (x, y))
        if i in marked:
            d.rectangle([x - 2, y - 2, x + im.width + 1, y + im.height + 1], outline=(220, 30, 30), width=3)
        d.text((x + 2, y + thumb + 2), f"#{i}", fill=(60, 60, 60))
    return sheet


def shard_sheets(uri: str, shard: str, marks: dict[str, list[int]]) -> dict[str, str]:
    """key -> data URI of the contact sheet of its stored frames (the matched ones framed), or an explanation
    starting with '!', for the keys of one shard (`marks`: key -> matched frame positions). Reads only those
    samples' mp4 members; returns thumbnails (a few tens of KiB a key), never the shard."""
    out: dict[str, str] = {}
    try:
        with storage.open_read(uri) as f:
            got = read_members(f, {k + ".mp4" for k in marks})
    except Exception as e:
        return {k: f"! cannot read shard {shard}: {type(e).__name__}: {e}" for k in marks}
    for k, marked in marks.items():
        data = got.get(k + ".mp4")
        if data is None:
            out[k] = f"! {k}.mp4 not found in {shard}"
            continue
        try:
            out[k] = _data_uri(contact_sheet(decode_all(data), set(marked)))
        except Exception as e:
            out[k] = f"! cannot decode {k}.mp4: {type(e).__name__}: {e}"
    return out


def _load_sheets(keys: list[str], jobs, where, frames_by_key, map_fn=None) -> dict[str, str]:
    """key -> data URI of its contact sheet, or an explanation string starting with '!'. One shard_sheets call
    per shard, through `map_fn(fn, [args, ...])` (results in order) when given: Ray tasks on a cluster."""
    by_shard: dict[tuple[int, str], list[str]] = defaultdict(list)
    for k in keys:
        j, shard, _ = where[k]
        by_shard[(j, shard)].append(k)
    out: dict[str, str] = {}
    calls = []
    for (j, shard), ks in by_shard.items():
        if not shard:
            for k in ks:
                out[k] = "! manifest row has no shard"
            continue
        calls.append((jobs[j].path(shard), shard, {k: list(frames_by_key.get(k, [])) for k in ks}))
    results = map_fn(shard_sheets, calls) if map_fn is not None else (shard_sheets(*c) for c in calls)
    for got in results:
        out.update(got)
    return out


def _bench_thumb(frames, f: str, t: float) -> str | None:
    try:
        img = frame_at(frames.root / f, t)
    except Exception:
        return None
    if img is None:
        return None
    im = Image.fromarray(img)
    im.thumbnail((160, 160))
    return _data_uri(im)


def _evidence_html(row: dict, frames) -> str:
    ev = json.loads(row["evidence"])
    m = row["method"]
    head = (f'<span class="badge m-{E(m)}">{E(m)}</span><b>{E(row["benchmark"])}</b> {E(row["task"] or "")} '
            f'<span class="mono">{E(row["item"])}</span> · score {row["score"]:.2f}')
    if m == "video_id":
        body = (f'manifest id <code>{E(str(ev.get("manifest_video_id")))}</code> → <code>{E(ev["normalised"])}</code> = benchmark video '
                f'<code>{E(str(ev["benchmark_video"]))}</code> ({ev["n_items"]} item(s): {E(", ".join(ev["benchmark_items"][:5]))})')
        if "window" in ev:
            body += f'<br>benchmark window {ev["window"]} s overlaps sample span {ev["sample_span"]} s by {ev["overlap_s"]} s'
    elif m == "text_ngram":
        kind = "whole text (shorter than n)" if ev.get("whole_text") else f'{ev["ngrams_matched"]}/{ev["ngrams_total"]} {ev["n"]}-grams'
        body = (f'{E(ev["field"])}: “{E(ev["benchmark_text"])}”<br>matched {E(kind)}: <code>{E(ev["matched"])}</code>')
    else:
        body = (f'{ev["matched_frames"]} of {ev["sample_frames"]} sample frames within {ev["threshold"]} bits of '
                f'<code>{E(ev["benchmark_file"])}</code>: ' +
                ", ".join(f'frame #{p["sample_frame"]} ≈ {p["benchmark_time"]:.1f} s (d={p["distance"]})' for p in ev["pairs"][:4]))
        if frames is not None and ev["pairs"]:
            uri = _bench_thumb(frames, ev["benchmark_file"], ev["pairs"][0]["benchmark_time"])
            if uri:
                body += f'<br><img alt="benchmark frame" src="{uri}">'
    return f"<li>{head}<br>{body}</li>"


def write_report(path: Path, summary: dict, leak: pa.Table, dups: pa.Table, jobs, where: dict, frames, cfg,
                 map_fn=None) -> None:
    t0 = time.perf_counter()
    s = summary
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>LongVid audit report</title><style>{CSS}</style></head><body>",
             "<h1>LongVid dataset audit</h1>",
             f"<p class='muted'>{E(time.strftime('%Y-%m-%d %H:%M:%S'))} · {s['rows']:,} manifest rows from {len(s['jobs'])} job(s) "
             f"in {s['seconds']:.1f} s · {len(s['benchmark_files'])} benchmark files</p>"]
    total_keys = s["drop_list"]["leakage"]
    parts.append(f"<p>Leaked samples: <span class='{'bad' if total_keys else 'ok'}'>{total_keys:,}</span> · "
                 f"duplicates to drop: {s['drop_list']['duplicates']:,} · the drop list is <code>drop_list.txt</code>.</p>")

    # leakage counts
    parts.append("<h2 id='leakage'>Leakage by benchmark and method</h2>")
    lk = s["leakage"]
    if lk:
        parts.append("<table><tr><th>benchmark</th><th>video id</th><th>text n-gram</th><th>frame hash</th><th>samples</th></tr>")
        for bm, c in lk.items():
            cells = "".join(f"<td class='n{' hit' if c[m] else ''}'>{c[m]:,}</td>" for m in ("video_id", "text_ngram", "frame_hash"))
            parts.append(f"<tr><td>{E(bm)}</td>{cells}<td class='n'>{c['keys']:,}</td></tr>")
        parts.append("</table>")
        parts.append(_hbars([(bm, c["keys"]) for bm, c in lk.items()], "flagged samples per benchmark"))
    else:
        parts.append("<p class='ok'>No leakage found by any method.</p>")

    # methods
    ti = s["text_index"]
    parts.append("<h2 id='methods'>Methods</h2><ul>")
    parts.append("<li><b>video id</b>: ids normalised per dataset namespace (YouTube url forms and <code>v_</code> prefix, "
                 "Charades ids upper-cased, Ego4D uids with time-window overlap for EgoSchema); ids of different datasets never match. "
                 f"Rows whose id could not be normalised: {E(json.dumps(s['rows_without_normalised_id']))}.</li>")
    parts.append(f"<li><b>text n-gram</b>: {ti['n']}-grams of normalised text (NFKC, lower case, punctuation removed) of benchmark "
                 f"questions, options and answers. Texts shorter than {ti['n']} tokens but at least {ti['min_tokens']} are matched whole "
                 f"({ti['short_texts_used_whole']:,} such texts); {ti['texts_too_short']:,} shorter texts are not used; "
                 f"{ti['template_sequences_ignored']:,} sequences shared by more than {ti['max_videos']} benchmark videos are templates and are ignored. "
                 f"{ti['sequences']:,} sequences indexed from {ti['texts']:,} texts.</li>")
    bf = s["benchmark_frames"]
    if bf:
        parts.append(f"<li><b>frame hash</b>: 64-bit dHash of {bf['frames']:,} frames of {bf['videos']} benchmark videos at {bf['fps']} fps "
                     f"against every stored frame's hash; match within {cfg.phash_threshold} bits on at least {cfg.phash_min_frames} frames "
                     f"(multi-index hashing over bands of the 64 bits); {bf['flat_frames_ignored']} flat benchmark frames ignored"
                     + (f"; <span class='bad'>{len(bf['failed'])} videos could not be decoded</span>" if bf["failed"] else "") + ".</li>")
    else:
        parts.append("<li><b>frame hash</b>: not run (no <code>--benchmark-videos</code>).</li>")
    parts.append("</ul><h3>Benchmark files</h3><table><tr><th>file</th><th>format</th><th>benchmark</th><th>video refs</th><th>texts</th></tr>")
    for f in s["benchmark_files"]:
        parts.append(f"<tr><td class='mono'>{E(f['path'])}</td><td>{E(f['format'])}</td><td>{E(f['benchmark'])}</td>"
                     f"<td class='n'>{f['videos']:,}</td><td class='n'>{f['texts']:,}</td></tr>")
    parts.append("</table>")
    if s["unknown_benchmark_files"]:
        parts.append("<p class='bad'>Files not recognised or not readable (not used):</p><ul>" + "".join(
            f"<li><code>{E(u['path'])}</code>: {E(u['why'])}</li>" for u in s["unknown_benchmark_files"]) + "</ul>")
    ub = s.get("unusable_benchmark_records") or {}
    if ub.get("count"):
        parts.append(f"<p class='bad' id='unusable-records'>Benchmark records that cannot be used (left out): {ub['count']:,}</p>"
                     "<table><tr><th>file</th><th>record</th><th>field</th><th>why</th></tr>")
        for u in ub["listed"][:60]:
            parts.append(f"<tr><td class='mono'>{E(u['path'])}</td><td>{E(u['record'])}</td><td>{E(u['field'])}</td>"
                         f"<td>{E(u['why'])}</td></tr>")
        parts.append("</table>")
        if ub["count"] > 60:
            parts.append(f"<p class='muted'>{ub['count'] - 60:,} more: the first {len(ub['listed']):,} are in summary.json</p>")
    if s.get("unusable_manifest_parts"):
        parts.append("<p class='bad' id='unusable-parts'>Manifest and failure parts left out (cannot be read):</p><ul>" + "".join(
            f"<li><code>{E(u['file'])}</code>: {E(u['why'])}</li>" for u in s["unusable_manifest_parts"]) + "</ul>")

    # corpus
    st = s["stats"]
    parts.append("<h2 id='corpus'>Corpus by source</h2><table><tr><th>source</th><th>samples</th><th>hours</th><th>GB</th><th>failures</th></tr>")
    for src, c in st["sources"].items():
        parts.append(f"<tr><td>{E(src)}</td><td class='n'>{c['samples']:,}</td><td class='n'>{c['hours']:,.2f}</td>"
                     f"<td class='n'>{c['bytes'] / 1e9:,.3f}</td><td class='n'>{c['failures']:,}</td></tr>")
    parts.append("</table><div class='cards'>")
    dl, fl = _bin_labels(st["duration_bins"]), _bin_labels(st["frame_bins"], minutes=False)
    for src, c in st["sources"].items():
        if c["samples"]:
            parts.append("<div>" + _bars(c["duration_hist"], dl, f"{src}: samples by duration (s, bin start)", 420) +
                         _bars(c["frames_hist"], fl, f"{src}: samples by frames per sample (bin start)", 420, color="#59a14f") + "</div>")
    parts.append("</div>")
    if st["failures"]:
        parts.append("<h3>Failures by reason</h3><table><tr><th>source</th><th>stage</th><th>reason</th><th>count</th></tr>")
        for f in st["failures"][:60]:
            parts.append(f"<tr><td>{E(f['source'])}</td><td>{E(f['stage'])}</td><td>{E(f['reason'])}</td><td class='n'>{f['count']:,}</td></tr>")
        parts.append("</table>")
        if len(st["failures"]) > 60:
            parts.append(f"<p class='muted'>{len(st['failures']) - 60} more reasons in summary.json</p>")

    # duplicates
    parts.append("<h2 id='duplicates'>Duplicates in the corpus</h2>")
    if dups.num_rows:
        parts.append("<p>" + " · ".join(f"{E(m)}: {n:,}" for m, n in s["duplicates"].items()) + "</p>")
        parts.append("<table><tr><th>key</th><th>duplicate of</th><th>method</th><th>evidence</th><th>score</th></tr>")
        for r in dups.slice(0, 100).to_pylist():
            parts.append(f"<tr><td class='mono'>{E(r['key'])}</td><td class='mono'>{E(r['dup_of'])}</td><td>{E(r['method'])}</td>"
                         f"<td class='mono'>{E(r['evidence'][:300])}</td><td class='n'>{r['score']:.2f}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='ok'>No duplicates found.</p>")

    # flagged samples
    parts.append("<h2 id='samples'>Flagged samples</h2>")
    rows = leak.to_pylist() if leak.num_rows <= 200_000 else leak.slice(0, 200_000).to_pylist()
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append(r)
    keys = sorted(by_key, key=lambda k: (-max(r["score"] for r in by_key[k]), k))[: cfg.report_max_samples]
    if keys:
        marked = {k: where[k][2] for k in keys if k in where}
        sheets = _load_sheets([k for k in keys if k in where], jobs, where, marked, map_fn)
        for k in keys:
            rs = by_key[k]
            sheet = sheets.get(k, "! not located")
            img = (f"<img alt='frames of {E(k)}' src='{sheet}'>" if not sheet.startswith("!") else f"<p class='bad'>{E(sheet[2:])}</p>")
            parts.append(f"<div class='card'><div>{img}</div><div class='ev'><div class='mono'><b>{E(k)}</b> ({E(rs[0]['source'])}, "
                         f"<code>{E(str(rs[0]['video_id']))}</code>)</div><ul>" +
                         "".join(_evidence_html(r, frames) for r in rs[:8]) +
                         (f"<li class='muted'>{len(rs) - 8} more findings in leakage.parquet</li>" if len(rs) > 8 else "") + "</ul></div></div>")
        if len(by_key) > len(keys):
            parts.append(f"<p class='muted'>{len(by_key) - len(keys)} more flagged samples in leakage.parquet</p>")
    else:
        parts.append("<p class='ok'>None.</p>")
    parts.append(f"<p class='muted small'>report rendered in {time.perf_counter() - t0:.1f} s · all data is inline: this page needs no network.</p></body></html>")
    # redacted: the page shows the user's paths (a --manifests folder, a shard) and texts; never fails on a surrogate
    storage.write_bytes(str(path), storage.redact("".join(parts)).encode("utf-8", "backslashreplace"))
