"""S3 transfers: `S3RangeReader` (seekable ranged GETs, bounded readahead, ETag pinned at open) and uploads (one
PUT below `multipart_threshold`, else a multipart upload completed only at the end and aborted on failure;
`abort_multipart_uploads` for the ones a killed writer left)."""
from __future__ import annotations

import io
from typing import Any

from .failures import ObjectNotFound, StorageError
from .redaction import redact
from .s3 import MiB, _client, _head, _IncompleteBody, _options, _retry
from .uris import _split, is_s3


class S3RangeReader(io.RawIOBase):
    """A seekable raw reader over one S3 object, by ranged GETs, with a readahead buffer of `block_size` bytes.

    Never holds more than max(block_size, 0) bytes of its own (reads at least block_size long go straight into
    the caller's buffer). The object's ETag is pinned at open: if the object is replaced while being read, the
    next range fails with a StorageError instead of mixing two versions. Stats: `requests`, `bytes_fetched`,
    `peak_buffered`.
    """

    def __init__(self, uri: str, block_size: int = 4 * MiB):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"open_read: block_size must be >= 1, got {block_size}")
        self.uri = uri
        self.name = redact(uri)
        self._bucket, self._key = _split(uri)
        head = _head(uri)
        self._size = int(head["ContentLength"])
        self._etag = head.get("ETag")
        self._block = int(block_size)
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self.requests = 0
        self.bytes_fetched = 0
        self.peak_buffered = 0

    # io.RawIOBase protocol
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise ValueError(f"{self.name}: negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        self._check_open()
        mv = memoryview(b).cast("B")
        want = len(mv)
        if want == 0 or self._pos >= self._size:
            return 0
        want = min(want, self._size - self._pos)
        off = self._pos - self._buf_start
        if not (0 <= off < len(self._buf)):
            if want >= self._block:  # big read: straight into the caller's buffer, no copy kept
                self._fetch_into(self._pos, mv[:want])
                self._pos += want
                return want
            end = min(self._size, self._pos + self._block)
            self._buf = b""  # drop the old block before fetching the next one (bounded memory)
            buf = bytearray(end - self._pos)
            self._fetch_into(self._pos, memoryview(buf))
            self._buf, self._buf_start = bytes(buf), self._pos
            self.peak_buffered = max(self.peak_buffered, len(self._buf))
            off = 0
        n = min(want, len(self._buf) - off)
        mv[:n] = self._buf[off : off + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._check_open()
        n = max(0, self._size - self._pos)
        out = bytearray(n)
        got = 0
        mv = memoryview(out)
        while got < n:
            k = self.readinto(mv[got:])
            if not k:
                break
            got += k
        return bytes(out[:got])

    def close(self) -> None:
        self._buf = b""
        super().close()

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed reader {self.name}")

    def _fetch_into(self, start: int, dst: memoryview) -> None:
        """Fill dst with object bytes [start, start+len(dst)); resume after a cut from the last byte received."""
        got = 0
        total = len(dst)

        def attempt() -> None:
            nonlocal got
            lo, hi = start + got, start + total - 1
            kw: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={lo}-{hi}"}
            if self._etag:
                kw["IfMatch"] = self._etag
            self.requests += 1
            try:
                resp = _client().get_object(**kw)
            except Exception as exc:  # an object replaced under us is not a transient error
                import botocore.exceptions as bce

                if isinstance(exc, bce.ClientError) and exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "412"):
                    raise StorageError(self.uri, "object changed while being read (ETag mismatch)") from None
                raise
            body = resp["Body"]
            try:
                while got < total:
                    chunk = body.read(min(total - got, 256 * 1024))
                    if not chunk:
                        raise _IncompleteBody(f"ranged GET ended after {got} of {total} bytes")
                    dst[got : got + len(chunk)] = chunk
                    got += len(chunk)
                    self.bytes_fetched += len(chunk)
            finally:
                body.close()

        _retry(self.uri, f"read bytes {start}-{start + total - 1}", attempt)


def _read_exact(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _put_s3(uri: str, f, n: int | None) -> None:
    o = _options()
    bucket, key = _split(uri)
    if not key or key.endswith("/"):
        raise StorageError(uri, "write: S3 URI must name an object key")
    first = _read_exact(f, o.multipart_threshold)
    if len(first) < o.multipart_threshold:  # small: a single PUT is atomic by itself
        _retry(uri, "put", lambda: _client().put_object(Bucket=bucket, Key=key, Body=first))
        return
    _multipart(uri, bucket, key, first, f)


def _multipart(uri: str, bucket: str, key: str, first: bytes, f) -> None:
    o = _options()
    upload_id = _retry(uri, "create multipart upload",
                       lambda: _client().create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts: list[dict] = []
    try:
        pending, number, eof = first, 1, False
        while True:
            while len(pending) < o.part_size and not eof:
                more = _read_exact(f, o.part_size - len(pending))
                if more:
                    pending += more
                else:
                    eof = True
            if not pending:
                break
            body, pending = pending[: o.part_size], pending[o.part_size :]
            resp = _retry(uri, f"upload part {number}", lambda b=body, k=number: _client().upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=k, Body=b))
            parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            number += 1
            if eof and not pending:
                break
        try:
            _retry(uri, "complete multipart upload", lambda: _client().complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except ObjectNotFound:
            # NoSuchUpload on a retried complete: the first attempt succeeded but its answer was lost. Accept it
            # when the object now under the key is exactly this upload (the ETag of the parts' MD5s).
            if not _is_our_multipart(uri, bucket, key, parts):
                raise
    except BaseException:
        try:
            _retry(uri, "abort multipart upload", lambda: _client().abort_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id))
        except Exception:  # the original error matters more; a leftover upload is reclaimed by lifecycle rules
            pass
        raise


def _is_our_multipart(uri: str, bucket: str, key: str, parts: list[dict]) -> bool:
    import hashlib

    try:
        digests = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
    except ValueError:  # part ETags that are not MD5s (e.g. SSE-KMS): cannot tell
        return False
    expected = f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"
    try:
        head = _retry(uri, "head", lambda: _client().head_object(Bucket=bucket, Key=key))
    except ObjectNotFound:
        return False
    return str(head.get("ETag", "")).strip('"') == expected


def abort_multipart_uploads(prefix: str) -> int:
    """Abort the incomplete multipart uploads of the keys starting with `prefix` (s3://bucket/key-prefix; a no-op
    for local paths). A writer killed mid-upload leaves one behind: invisible to listings, billed until aborted.
    A live writer's upload under `prefix` is aborted too (its completion then fails), so call it only where that
    is harmless, e.g. the retry of a unit whose other attempts are dead or write the same bytes. Returns the count."""
    if not is_s3(prefix):
        return 0
    bucket, key = _split(prefix)
    found: list[tuple[str, str]] = []
    marker: dict[str, str] = {}
    while True:
        page = _retry(prefix, "list multipart uploads", lambda m=dict(marker): _client().list_multipart_uploads(
            Bucket=bucket, Prefix=key, **m))
        found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", []) or [] if u["Key"].startswith(key)]
        if page.get("IsTruncated") and page.get("NextKeyMarker"):
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page.get("NextUploadIdMarker") or ""}
        else:
            break
    for k, upload_id in found:
        try:
            _retry(f"s3://{bucket}/{k}", "abort multipart upload", lambda k=k, u=upload_id: _client()
                   .abort_multipart_upload(Bucket=bucket, Key=k, UploadId=u))
        except ObjectNotFound:  # NoSuchUpload: already completed or aborted
            pass
    return len(found)
