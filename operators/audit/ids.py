"""Video-id normalisation: one key per (namespace, id), so that ids only match within a dataset.

`video_12` in Perception Test and `video_12` in CLEVRER are different videos: every id is keyed as
`"<namespace>:<id>"`. YouTube ids keep their case (they are case-sensitive); Charades ids are upper-cased;
Ego4D uids are lower-cased uuids.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

YOUTUBE = "youtube"
CHARADES = "charades"
EGO4D = "ego4d"

_YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_YT_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com")
_YT_PATH_PREFIXES = ("embed", "shorts", "v", "live", "e")
_CHARADES = re.compile(r"^[A-Za-z0-9]{5}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EXT = re.compile(r"\.(mp4|mkv|webm|avi|mov|m4v|flv|json|txt)$", re.IGNORECASE)

# Manifest `source` -> the namespace its video_id lives in. Anything not listed is its own namespace.
SOURCE_NAMESPACES: dict[str, str] = {
    "howto100m": YOUTUBE,
    "hdvila": YOUTUBE,
    "miradata": YOUTUBE,
    "activitynet": YOUTUBE,
    "kinetics": YOUTUBE,
    "youcook2": YOUTUBE,
    "ego4d": EGO4D,
    "webvid": "webvid",
    "charades": CHARADES,
    "star": CHARADES,
    "perception_test": "perception_test",
    "clevrer": "clevrer",
    "ssv2": "ssv2",
}


def strip_ext(name: str) -> str:
    """Remove one known video/annotation extension."""
    return _EXT.sub("", name)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def youtube_id(value: str | None) -> str | None:
    """The 11-character YouTube id in any usual form, or None.

    Accepts a bare id, `v_<id>` (ActivityNet), `<id>.mp4`, `<id>.1.mp4` (HD-VILA clip ids), paths ending in
    one of those, and urls: `watch?v=`, `youtu.be/<id>`, `/embed/`, `/shorts/`, `/v/`, `/live/`.
    """
    if not value:
        return None
    s = value.strip()
    low = s.lower()
    if any(h in low for h in _YT_HOSTS):
        try:
            u = urlparse(s if "//" in s else "https://" + s)
        except ValueError:  # "Invalid IPv6 URL" and the like: not a YouTube url
            return None
        host = (u.hostname or "").lower()
        parts = [p for p in u.path.split("/") if p]
        cand = None
        if host.endswith("youtu.be"):
            cand = parts[0] if parts else None
        else:
            q = parse_qs(u.query).get("v")
            if q:
                cand = q[0]
            elif len(parts) >= 2 and parts[0] in _YT_PATH_PREFIXES:
                cand = parts[1]
        if cand and _YT_ID.match(cand):
            return cand
        return None
    name = basename(s)
    if _YT_ID.match(name):
        return name
    if len(name) >= 13 and name.startswith("v_") and _YT_ID.match(name[2:13]) and (len(name) == 13 or name[13] == "."):
        return name[2:13]
    stem = name.split(".", 1)[0] if "." in name else None
    if stem is not None:
        if _YT_ID.match(stem):
            return stem
        if len(stem) == 13 and stem.startswith("v_") and _YT_ID.match(stem[2:]):
            return stem[2:]
    return None


def charades_id(value: str | None) -> str | None:
    """`3msza`, `3MSZA.mp4`, `Charades_v1/3MSZA.mp4` -> `3MSZA`."""
    if not value:
        return None
    stem = strip_ext(basename(value.strip()))
    return stem.upper() if _CHARADES.match(stem) else None


def ego4d_uid(value: str | None) -> str | None:
    if not value:
        return None
    stem = strip_ext(basename(value.strip())).lower()
    return stem if _UUID.match(stem) else None


def generic_id(value: str | None) -> str | None:
    """Path without extension (keeps sub-folders: `left/4504_frame52`), for datasets with no stricter rule."""
    if not value:
        return None
    s = strip_ext(value.strip().lstrip("./"))
    return s or None


def _youtube_or_raw(value: str | None) -> str | None:
    """A YouTube id, else the raw name without extension: a malformed id in a benchmark (Video-MME has a
    13-character one) still matches the same malformed id in a manifest."""
    return youtube_id(value) or (strip_ext(basename(value.strip())) if value and value.strip() else None)


def vidor_id(value: str | None) -> str | None:
    """NExT-QA `4010069381` and VidOR `1025/4010069381` -> `4010069381`."""
    if not value:
        return None
    stem = strip_ext(basename(value.strip()))
    return stem if stem.isdigit() else None


_NORMALISERS = {YOUTUBE: _youtube_or_raw, CHARADES: charades_id, EGO4D: ego4d_uid, "vidor": vidor_id}


def normalise(namespace: str, value: str | None) -> str | None:
    """The id of `value` inside `namespace`, or None when it is not a valid id there."""
    fn = _NORMALISERS.get(namespace, generic_id)
    return fn(value)


def id_key(namespace: str, value: str | None) -> str | None:
    """`"<namespace>:<normalised id>"`, or None."""
    v = normalise(namespace, value)
    return f"{namespace}:{v}" if v else None


def source_namespace(source: str, overrides: dict[str, str] | None = None) -> str:
    if overrides and source in overrides:
        return overrides[source]
    return SOURCE_NAMESPACES.get(source, source)


def manifest_id_key(source: str, video_id: str | None, uri: str | None = None,
                    overrides: dict[str, str] | None = None) -> str | None:
    """Key of a manifest row's video: by its source's namespace; a YouTube source falls back to the uri."""
    ns = source_namespace(source, overrides)
    v = youtube_id(video_id) or youtube_id(uri) or normalise(ns, video_id) if ns == YOUTUBE else normalise(ns, video_id)
    return f"{ns}:{v}" if v else None


def manifest_id_keys(sources, video_ids, uris, overrides: dict[str, str] | None = None) -> list[str | None]:
    """`manifest_id_key` over pyarrow string arrays: plain YouTube ids and lower-case Ego4D uids are keyed
    in bulk; only the other rows go through the per-row normalisers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(sources)
    src = pc.fill_null(sources, "")
    vid = pc.fill_null(video_ids, "")
    uniq = pc.unique(src).to_pylist()
    ns = pc.take(pa.array([source_namespace(u, overrides) for u in uniq]), pc.index_in(src, value_set=pa.array(uniq)))
    fast = pa.array([None] * n, pa.string())
    for name, pattern in ((YOUTUBE, r"^[A-Za-z0-9_-]{11}$"),
                          (EGO4D, r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")):
        m = pc.and_(pc.equal(ns, name), pc.match_substring_regex(vid, pattern))
        fast = pc.if_else(m, pc.binary_join_element_wise(name, vid, ":"), fast)
    out = fast.to_pylist()
    todo = [i for i, k in enumerate(out) if k is None]
    if todo:
        s_l, v_l, u_l = (sources.take(todo).to_pylist(), video_ids.take(todo).to_pylist(),
                         uris.take(todo).to_pylist() if uris is not None else [None] * len(todo))
        for i, s, v, u in zip(todo, s_l, v_l, u_l):
            out[i] = manifest_id_key(s or "", v, u, overrides)
    return out
