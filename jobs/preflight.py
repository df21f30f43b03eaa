"""Pre-flight checks of a job's paths and storage, before Ray starts or anything is written.

A missing input, an output that is a file, or storage that cannot be used (no credentials, no such bucket, access
denied, an endpoint that cannot be reached) is a user mistake: ConfigError naming the setting, one line, exit 2.
The checks themselves are operators/storage/'s (check_readable, check_writable); this names the setting.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterable

from longvid.operators.errors import ConfigError

# A pre-flight S3 request keeps the job's retries (a flaky network is not a configuration error: with 2 attempts, 4%
# of checks failed under the 20% injected faults of tests/pipelines/test_ingest_s3.py) but connects with a short
# timeout, so an unreachable endpoint is still reported in seconds (refused: ~3 s for 6 attempts; black-holed: ~6 x 3 s).
PREFLIGHT_S3_TIMEOUT_S = 3.0


def use_s3(endpoint_url: str = "", profile: str = "", region: str = "") -> None:
    """Set this process's S3 options from the job's s3_* settings; a bad value names the setting."""
    from longvid.operators import storage

    try:
        storage.configure_s3(storage.S3Options(endpoint_url=endpoint_url or None, profile=profile or None,
                                               region=region or None))
    except ValueError as e:  # S3Options: "S3Options.endpoint_url: must start with http:// ..."
        field = str(e).split(":", 1)[0].removeprefix("S3Options.")
        raise ConfigError(f"s3_{field}: {str(e).split(':', 1)[-1].strip()}") from None


@contextlib.contextmanager
def _quick_s3():
    """S3 requests of a pre-flight check connect with a short timeout: an unreachable endpoint is reported soon."""
    from longvid.operators import storage

    o = storage.s3_options()
    storage.configure_s3(dataclasses.replace(o, connect_timeout=min(o.connect_timeout, PREFLIGHT_S3_TIMEOUT_S)))
    try:
        yield
    finally:
        storage.configure_s3(o)


def _check(setting: str, uri: str, check) -> None:
    from longvid.operators import storage

    try:
        if storage.is_s3(uri):
            with _quick_s3():
                check(uri)
        else:
            check(uri)
    except storage.StorageError as e:
        raise ConfigError(f"{setting}: {e}") from None
    except ValueError as e:  # a malformed URI (e.g. s3:// without a bucket)
        raise ConfigError(f"{setting}: {uri}: {e}") from None


def readable(setting: str, uris: str | Iterable[str], folder: bool = False) -> None:
    """Each uri must be a readable file or folder (an S3 object or a non-empty prefix); `folder`: a local one
    must be a folder."""
    from longvid.operators import storage

    for uri in [uris] if isinstance(uris, str) else uris:
        _check(setting, uri, storage.check_readable)
        if folder and not storage.is_s3(uri) and not os.path.isdir(uri):
            raise ConfigError(f"{setting}: {uri}: is a file, not a folder")


def writable(setting: str, uri: str) -> None:
    """Files can be written under the folder/prefix uri (a local one may not exist yet; its parent must)."""
    from longvid.operators import storage

    _check(setting, uri, storage.check_writable)
