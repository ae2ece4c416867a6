"""Remote reads that end: GDAL's HTTP limits for every thread that opens or reads a remote file,
STAC documents fetched with the same limit, and HTTP failures said in the user's terms.

GDAL leaves a request without a time limit unless told (``GDAL_HTTP_TIMEOUT``, the low-speed
limits and retries are unset by default), so one range request held by a stalled server would
block its reader thread, and the run, forever. :func:`gdal_http_options` sets, for
``timeout`` = ``RunOptions.http_timeout`` / ``clay-run --http-timeout`` (default
:data:`DEFAULT_HTTP_TIMEOUT` s):

- ``GDAL_HTTP_CONNECTTIMEOUT`` = ``timeout``: a server that does not accept the connection;
- ``GDAL_HTTP_LOW_SPEED_TIME`` = ``timeout`` below ``GDAL_HTTP_LOW_SPEED_LIMIT`` =
  :data:`LOW_SPEED_BYTES` bytes/s: a response that stalls mid-body (or trickles);
- ``GDAL_HTTP_TIMEOUT`` = :data:`REQUEST_TIMEOUTS` × ``timeout``: any one request, in all (a chip's
  range read is a few MB: at the low-speed limit's 1 KiB/s a 300 s cap is never the binding one);
- ``GDAL_HTTP_MAX_RETRY`` = :data:`HTTP_RETRIES`, ``GDAL_HTTP_RETRY_DELAY`` = :data:`RETRY_DELAY` s
  (GDAL doubles it at each retry): 429, 5xx and timed-out requests are tried again.

The options are GDAL configuration options set per thread (``rasterio.Env``): they win over the
same names in the environment, and leave GDAL's other settings (``GDAL_HTTP_HEADERS``,
``AWS_*``…) to the user. GDAL does not say why a range read failed ("TIFFReadEncodedTile()
failed"), so :func:`remote_problem` asks the server once (one byte, the same limit) and says its
HTTP status: 401 and 403 with the hint that credentials or a signed URL may have expired.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request

import rasterio

# DEFAULT_HTTP_TIMEOUT (30 s): object stores answer in well under a second; 30 s rides out a slow link
from ..options import DEFAULT_HTTP_TIMEOUT
from .inputs import GdalPath

LOW_SPEED_BYTES = 1024
#: One request in all may take this many times the timeout.
REQUEST_TIMEOUTS = 10
HTTP_RETRIES = 3
RETRY_DELAY = 1.0
#: What the user can do about an HTTP status the server gave.
HTTP_HINTS = {
    401: "credentials or a signed URL may have expired (or none were given: GDAL_HTTP_HEADERS, AWS_*, ...)",
    403: "credentials or a signed URL may have expired, or they do not grant access to this file",
    404: "no such file on the server",
}
_GDAL_STATUS = re.compile(r"HTTP (?:response code|error code)\s*[:=]?\s*(\d{3})", re.IGNORECASE)


def gdal_http_options(timeout: float = DEFAULT_HTTP_TIMEOUT) -> dict[str, str]:
    """GDAL's HTTP configuration for a remote read that gives up after ``timeout`` seconds without
    progress (see the module docstring); values as GDAL takes them, strings."""
    seconds = max(1, round(timeout))  # curl's connect and low-speed limits count whole seconds
    return {
        "GDAL_HTTP_CONNECTTIMEOUT": str(seconds),
        "GDAL_HTTP_LOW_SPEED_TIME": str(seconds),
        "GDAL_HTTP_LOW_SPEED_LIMIT": str(LOW_SPEED_BYTES),
        "GDAL_HTTP_TIMEOUT": str(REQUEST_TIMEOUTS * seconds),
        "GDAL_HTTP_MAX_RETRY": str(HTTP_RETRIES),
        "GDAL_HTTP_RETRY_DELAY": str(RETRY_DELAY),
    }


def http_env(timeout: float = DEFAULT_HTTP_TIMEOUT) -> rasterio.Env:
    """A ``rasterio.Env`` with :func:`gdal_http_options`; enter it in the thread that opens or reads
    (rasterio's environment is per thread; nested inside another, it adds to it)."""
    return rasterio.Env(**gdal_http_options(timeout))


def current_timeout() -> float:
    """The ``timeout`` of the :func:`http_env` this thread is in (the default outside one)."""
    options = rasterio.env.getenv() if rasterio.env.hasenv() else {}
    try:
        return float(options.get("GDAL_HTTP_LOW_SPEED_TIME", DEFAULT_HTTP_TIMEOUT))
    except (TypeError, ValueError):
        return DEFAULT_HTTP_TIMEOUT


def open_failure(path, message: str) -> str:
    """Why a file could not be opened, in one line: for a remote file, the HTTP status GDAL names
    (``HTTP response code: 403``) or, where it names none, the one its server gives when asked
    (:func:`remote_problem`), with its hint, before GDAL's words; else GDAL's words."""
    if not is_remote(path):
        return message
    status = gdal_status(message)
    problem = status_hint(status) if status is not None else remote_problem(path, current_timeout())
    return f"{problem}; GDAL: {message}" if problem else f"{message}; {stalled_hint(current_timeout())}"


def stalled_hint(timeout: float) -> str:
    """What a failed remote read may be when its server answers well when asked again."""
    return (f"the server may have stopped sending or cut the transfer: remote reads give up after {timeout:g} s "
            f"without progress and {HTTP_RETRIES} retries (--http-timeout)")


def worst_case_seconds(timeout: float = DEFAULT_HTTP_TIMEOUT) -> float:
    """How long one stalled request can hold a reader, retries included: the bound the tests check."""
    seconds = max(1, round(timeout))
    delays = sum(RETRY_DELAY * 2**k for k in range(HTTP_RETRIES))
    return (HTTP_RETRIES + 1) * REQUEST_TIMEOUTS * seconds + delays


def status_hint(status: int, reason: str = "") -> str:
    """``HTTP 403 Forbidden: credentials or a signed URL may have expired, ...``."""
    hint = HTTP_HINTS.get(status)
    text = f"HTTP {status}{' ' + reason if reason else ''}"
    return f"{text}: {hint}" if hint else text


def gdal_status(message: str) -> int | None:
    """The HTTP status in a GDAL error message (``HTTP response code: 403``), if it names one."""
    found = _GDAL_STATUS.search(message)
    return int(found[1]) if found else None


#: GDAL's network file systems (``/vsizip/``, ``/vsimem/`` and the like are local).
NETWORK_PREFIXES = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs",
                    "/vsihdfs")  # fmt: skip


def is_remote(path) -> bool:
    """Whether GDAL reads ``path`` over the network (also inside an archive: ``/vsizip//vsicurl/…``)."""
    return isinstance(path, GdalPath) and any(prefix in path.gdal for prefix in NETWORK_PREFIXES)


def http_url(path) -> str | None:
    """The http(s) URL GDAL reads for a remote path (``/vsicurl/…`` or an ``https://`` URI); ``None``
    for a local file or an object-store path (``/vsis3/``: signed by GDAL, not probed here)."""
    if not isinstance(path, GdalPath):
        return None
    text = path.gdal.removeprefix("/vsicurl/")
    return text if text.lower().startswith(("http://", "https://")) else None


def user_headers() -> dict[str, str]:
    """The headers the user gave GDAL (``GDAL_HTTP_HEADERS``: ``Name: value`` lines, as GDAL takes
    them), so that a probe or a STAC fetch is authorised as GDAL's reads are."""
    text = rasterio.env.getenv().get("GDAL_HTTP_HEADERS") if rasterio.env.hasenv() else None
    text = text or os.environ.get("GDAL_HTTP_HEADERS", "")
    headers = {}
    for line in re.split(r"\r?\n|\\r\\n", text):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def fetch(url: str, timeout: float = DEFAULT_HTTP_TIMEOUT, byte_range: str | None = None, limit: int = 64 << 20) -> bytes:
    """The body of ``url`` (at most ``limit`` bytes), each socket operation within ``timeout`` s and
    the whole within :data:`REQUEST_TIMEOUTS` × ``timeout``. Raises ``urllib.error.HTTPError`` (the
    server's status), ``TimeoutError`` (no progress, or too slow in all) or ``OSError``."""
    request = urllib.request.Request(url, headers={**user_headers(), **({"Range": byte_range} if byte_range else {})})
    deadline = time.monotonic() + REQUEST_TIMEOUTS * timeout
    with urllib.request.urlopen(request, timeout=timeout) as response:
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the transfer took over {REQUEST_TIMEOUTS * timeout:g} s")
            try:
                chunk = response.read1(1 << 16)
            except TimeoutError:  # socket.timeout
                raise TimeoutError(f"no byte for {timeout:g} s") from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(f"larger than {limit >> 20} MB")


def remote_size_and_start(
    url: str, timeout: float = DEFAULT_HTTP_TIMEOUT, start: int = 16
) -> tuple[int | None, bytes]:
    """The size in bytes of the file at ``url`` and its first ``start`` bytes, in one range request
    (the size: the total of its ``Content-Range``; from a server that ignores ranges, its
    ``Content-Length``; ``None`` when it says neither), within ``timeout`` as :func:`fetch`. Raises
    as :func:`fetch` does."""
    request = urllib.request.Request(url, headers={**user_headers(), "Range": f"bytes=0-{start - 1}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        head = response.read(start)
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        if response.status == 206 and total.isdigit():
            return int(total), head
        length = response.headers.get("Content-Length")
        return (int(length) if response.status == 200 and length and length.isdigit() else None), head


def describe_fetch_error(exc: BaseException, timeout: float) -> str:
    """A failed :func:`fetch` in one line: the HTTP status and its hint, or the network's reason."""
    if isinstance(exc, urllib.error.HTTPError):
        return status_hint(exc.code, exc.reason or "")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within {timeout:g} s ({reason or 'timed out'}; --http-timeout)"
    return str(getattr(reason, "strerror", None) or reason or type(exc).__name__)


def remote_problem(path, timeout: float = DEFAULT_HTTP_TIMEOUT) -> str | None:
    """Why a remote file cannot be read, asked of its server after GDAL failed without saying: the
    HTTP status of a one-byte request (401/403 with the credentials hint), or that it did not
    answer in time; ``None`` when the server answers well (or the path is not an http(s) URL)."""
    url = http_url(path)
    if url is None:
        return None
    try:
        fetch(url, timeout, byte_range="bytes=-1", limit=1 << 16)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return describe_fetch_error(exc, timeout)
    return None
