"""WebVid-10M / 2M: `results_{2M,10M}_{train,val}.csv`, columns by name (order differs between files).

Row -> one whole-video record; videos at `<page_dir>/<videoid>.mp4` under the video root
(the release's `videos/` prefix is tried second). `name` is the caption, `duration` ISO-8601.
"""
from __future__ import annotations

from typing import Iterator

from longvid.operators.records import TextSpan
from longvid.operators.sources.base import (
    Adapter,
    BadValue,
    Item,
    Row,
    check_id,
    clean_text,
    make_failure,
    make_record,
    open_csv,
    parse_digits,
    parse_iso_duration,
    show,
)

SOURCE = "webvid"
REQUIRED = ("videoid", "page_dir", "name")


class WebVidAdapter(Adapter):
    name = SOURCE
    patterns = ("results_*.csv", "*.csv")

    def _read(self, paths: list[str], options: dict) -> Iterator[Row]:
        tables = [open_csv(p, REQUIRED, "WebVid results") for p in paths]
        return self._rows(tables)

    def _rows(self, tables) -> Iterator[Row]:
        for table in tables:
            yield from table.parse_rows(_row)


def _row(row: dict, origin: str) -> Item:
    vid = (row.get("videoid") or "").strip()
    try:
        vid = check_id(row.get("videoid"), "videoid")
        vid = str(parse_digits(vid, "videoid"))
        page_dir = check_id(row.get("page_dir"), "page_dir")
        if "/" in page_dir or "\\" in page_dir or page_dir in (".", ".."):
            raise BadValue("page_dir", f"page_dir must be one folder name, got {show(page_dir)}")
        dur = row.get("duration")
        duration = parse_iso_duration(dur, "duration") if dur is not None and dur.strip() else None
    except BadValue as e:
        return make_failure(SOURCE, origin, e.field, e.reason, video_id=vid)
    name = clean_text(row.get("name"))
    meta = {
        "duration_sec": duration,
        "page_dir": page_dir,
        "url": (row.get("contentUrl") or "").strip() or None,
        "page_idx": (row.get("page_idx") or "").strip() or None,
    }
    return make_record(
        SOURCE,
        vid,
        (f"{page_dir}/{vid}.mp4", f"videos/{page_dir}/{vid}.mp4"),
        origin,
        texts=(TextSpan(name, kind="caption"),) if name else (),
        meta=meta,
    )


ADAPTER = WebVidAdapter()
