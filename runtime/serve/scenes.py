"""Whole scenes through ``clay-serve``: ``POST /scene`` embeds a GeoTIFF and answers its rows.

The scene is the request body (a GeoTIFF's bytes, or a ``multipart/form-data`` upload of one file),
or ``?url=`` an http(s) GeoTIFF or STAC Item that the server was allowed to read (``--allow-url``
prefixes; the Item's asset files must be under them too). It is embedded by the Python API
(:class:`clay.runtime.ClayEmbedder`, on the engine the chip endpoint runs), so chipping, dates,
units, resampling, nodata and the refusals are ``clay-run``'s, and the answer holds the rows
``clay-run`` writes: chips, or with ``rows=patches`` the patch rows, as GeoJSON (``application/geo+json``)
or GeoParquet (``application/vnd.apache.parquet``), chosen by ``format=`` or the ``Accept`` header.

Limits (``clay-serve`` options): a body or a remote scene larger than ``--max-scene-mb`` is a 413
(a body announcing more is refused before it is read; a chunked one when it passes the limit);
``--scene-workers`` scenes are embedded at once, ``--scene-queue`` more may wait (their bodies
arriving, or queued), and a request beyond that is a 503 with ``Retry-After`` before its body is
read. The scene work (unpacking, embedding, encoding the rows) runs on the workers' threads, never
on the event loop. Every refusal is one line: a scene ``clay-run`` refuses is a 422 with the words
``clay-run`` prints (the file named as the client named it, its advice as query parameters:
:func:`in_request_terms`), a bad parameter a 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect

from ..api import ClayEmbedder
from ..engines.base import EngineError
from ..errors import SceneError, first_line
from ..metadata import EngineMetadata
from ..options import EDGE_MODES, SAR_UNITS, RunOptions, check_patch_embeddings
from ..resampling import RESAMPLING
from ..scenes.dates import parse_date
from ..scenes.inputs import GdalPath, SceneFiles
from ..scenes.remote import describe_fetch_error, http_url, remote_size_and_start
from ..scenes.scene import as_scene_files

log = logging.getLogger(__name__)

SCENE_PATH = "/scene"
GEOJSON = "application/geo+json"
PARQUET = "application/vnd.apache.parquet"
FORMATS = {"geojson": GEOJSON, "parquet": PARQUET}
#: What an ``Accept`` header may name for each format (``application/json``: GeoJSON is JSON).
ACCEPTED = {
    GEOJSON: "geojson",
    "application/json": "geojson",
    PARQUET: "parquet",
    "application/x-parquet": "parquet",
}
ROWS = ("chips", "patches")
#: The query parameters ``POST /scene`` takes, and what each is (also the 400's list).
PARAMETERS = {
    "url": "an http(s) GeoTIFF or STAC Item under a --allow-url prefix, instead of a body",
    "name": "the body's file name, or the folder name of several uploaded files (a date may be read from it)",
    "date": "YYYY-MM-DD, overrides the file's tags (clay-run --date)",
    "sar_units": "/".join(SAR_UNITS), "s2_offset": "a number (clay-run --s2-offset)",
    "resampling": "/".join(RESAMPLING), "edge": "/".join(EDGE_MODES), "max_nodata": "0..1",
    "sensor": "a Clay v1.5 sensor (clay-run --sensor), where the scene does not say", "rows": "/".join(ROWS),
    "format": "/".join(FORMATS),
}  # fmt: skip
DEFAULT_NAME = "upload.tif"
DEFAULT_FOLDER = "upload"  # several files: one scene folder
#: An uploaded file must be a TIFF (classic or BigTIFF, either byte order) named ``.tif``/``.tiff``: GDAL
#: opens a file by its content, and a VRT (XML) named scene.tif would read any path or URL it names.
UPLOAD_SUFFIXES = (".tif", ".tiff")
TIFF_STARTS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
#: A remote band file may also be JPEG 2000 (Earth Search's ``*-jp2`` assets): a JP2 box or a codestream.
JP2_STARTS = (b"\0\0\0\x0cjP  ", b"\xff\x4f\xff\x51")
#: How much of a chunked body past the limit is read (and dropped) before the 413 is answered.
DRAIN_BYTES = 16 << 20
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

SCENE_REQUESTS = Counter("clay_scene_requests", "POST /scene requests by outcome", ["outcome"])
SCENES_ADMITTED = Gauge(
    "clay_scenes_admitted",
    "Scenes admitted and not yet answered (their bodies arriving, "
    "queued or embedding): at --scene-workers + --scene-queue, the next is a 503",
)
SCENE_SECONDS = Histogram("clay_scene_seconds", "Time from a scene's arrival to its answer",
                          buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))  # fmt: skip


@dataclass(frozen=True)
class SceneLimits:
    """``clay-serve``'s bounds on scenes: bytes per scene (a body, or a remote scene's files
    together), scenes embedded at once, scenes that may wait, and the URL prefixes it may read."""

    max_bytes: int = 512 << 20
    workers: int = 2
    queue: int = 4
    allow_urls: tuple[str, ...] = ()

    def meaning(self) -> str:
        return f"scenes up to {self.max_bytes / (1 << 20):g} MiB: --max-scene-mb"


class Refusal(Exception):
    """A scene request refused: its HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SceneRequest:
    """What one ``POST /scene`` asks for, validated."""

    options: RunOptions
    rows: str
    media_type: str
    url: str | None
    name: str | None


def parse_request(query: Mapping[str, str], accept: str | None, base: RunOptions, limits: SceneLimits,
                  metadata: EngineMetadata) -> SceneRequest:  # fmt: skip
    """The query parameters and ``Accept`` header → a :class:`SceneRequest`; raises :class:`Refusal`
    (400 for a parameter, 403 for a URL not allowed, 406 for an ``Accept`` it cannot answer)."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise Refusal(
            400, f"unknown parameter(s) {', '.join(unknown)}; {SCENE_PATH} takes {', '.join(PARAMETERS)}"
        )
    fields: dict = {}
    if "date" in query:
        try:
            fields["date"] = parse_date(query["date"])  # as clay-run --date reads it, and in its words
        except ValueError:
            raise Refusal(400, f"date={query['date']}: expected YYYY-MM-DD") from None
    for key in ("sar_units", "resampling", "edge", "sensor"):
        if key in query:
            fields[key] = query[key]
    for key in ("s2_offset", "max_nodata"):
        if key in query:
            try:
                fields[key] = float(query[key])
            except ValueError:
                raise Refusal(400, f"{key}={query[key]}: not a number") from None
            if not math.isfinite(fields[key]):
                raise Refusal(400, f"{key}={query[key]}: not a finite number")
    try:
        options = dataclasses.replace(base, **fields)
    except ValueError as exc:
        raise Refusal(400, first_line(exc)) from None
    rows = query.get("rows", "chips")
    if rows not in ROWS:
        raise Refusal(400, f"rows must be one of {', '.join(ROWS)}, not {rows!r}")
    if rows == "patches":
        try:
            check_patch_embeddings(metadata, True, "rows=patches")
        except SceneError as exc:
            raise Refusal(400, str(exc)) from None
        options = dataclasses.replace(options, patch_embeddings=True)
    url = query.get("url")
    if url is not None:
        check_url(url, limits.allow_urls)
    return SceneRequest(
        options, rows, media_type(query.get("format"), accept), url, safe_name(query.get("name", "")) or None
    )


#: clay-run's options that a refusal may name, and the query parameter that does the same here.
_OPTION = re.compile(r"--(date|sar-units|s2-offset|resampling|sensor|edge|max-nodata)\b ?")
_PYTHON_HINT = re.compile(r" \(RunOptions\([a-z_]+=\.\.\.\) in Python\)")


def in_request_terms(message: str) -> str:
    """A refusal in clay-run's words with its advice in this endpoint's: ``pass --date YYYY-MM-DD
    (RunOptions(date=...) in Python)`` → ``pass date=YYYY-MM-DD``; the rest unchanged."""
    message = _PYTHON_HINT.sub("", message)
    return _OPTION.sub(lambda m: m.group(1).replace("-", "_") + "=", message)


def media_type(format_: str | None, accept: str | None) -> str:
    """``format=`` wins; else the first type of ``Accept`` offered (``*/*`` or none: GeoJSON)."""
    if format_ is not None:
        if format_ not in FORMATS:
            raise Refusal(400, f"format must be one of {', '.join(FORMATS)}, not {format_!r}")
        return FORMATS[format_]
    wanted = [part.split(";")[0].strip().lower() for part in (accept or "").split(",") if part.strip()]
    for kind in wanted:
        if kind in ACCEPTED:
            return FORMATS[ACCEPTED[kind]]
        if kind in ("*/*", "application/*"):
            return GEOJSON
    if not wanted:
        return GEOJSON
    raise Refusal(
        406, f"Accept: {accept}: this endpoint answers {GEOJSON} or {PARQUET} (or say format=geojson|parquet)"
    )


def safe_name(name: str) -> str:
    """A client's file name as a bare name of safe characters (never a path on the server, never
    hidden); empty when nothing is left."""
    base = posixpath.basename(name.replace("\\", "/")).strip()
    return _SAFE_NAME.sub("_", base).lstrip(".")[:200]


def url_allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``url`` is an http(s) URL under one of ``prefixes``: same scheme, host and port, no
    credentials, no ``.``/``..`` segment, and a path under the prefix's (``https://host/bucket`` allows
    ``https://host/bucket/...``, not ``https://host/bucket-other/...``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
    ):
        return False
    if any(segment in (".", "..") for segment in urllib.parse.unquote(parts.path).split("/")):
        return False
    for prefix in prefixes:
        allowed = urllib.parse.urlsplit(prefix)
        root = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
        if (parts.scheme.lower(), parts.hostname, port) == (allowed.scheme.lower(), allowed.hostname, allowed.port) and (
            parts.path == allowed.path or parts.path.startswith(root)):  # fmt: skip
            return True
    return False


def check_url(url: str, prefixes: tuple[str, ...]) -> None:
    if not prefixes:
        raise Refusal(403, f"url={url}: this server reads no URL (start clay-serve with --allow-url PREFIX)")
    if not url_allowed(url, prefixes):
        raise Refusal(
            403, f"url={url}: not under a prefix this server may read (--allow-url: {', '.join(prefixes)})"
        )


class SceneService:
    """The ``POST /scene`` endpoint: admission, bodies, and the scene work on its own threads."""

    def __init__(self, embedder: ClayEmbedder, limits: SceneLimits) -> None:
        self.embedder, self.limits = embedder, limits
        self.base = embedder.options
        self.workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="clay-serve-scene")
        self.admitted = 0  # scenes waiting or running; changed on the event loop only

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)

    def install(self, app: FastAPI) -> None:
        app.add_api_route(SCENE_PATH, self.handle, methods=["POST"], include_in_schema=True,
                          summary="Embed a GeoTIFF scene; its chip or patch rows as GeoJSON or GeoParquet")  # fmt: skip

    async def handle(self, request: Request) -> Response:
        start = time.perf_counter()
        if self.admitted >= self.limits.workers + self.limits.queue:
            SCENE_REQUESTS.labels("busy").inc()
            message = (f"busy: {self.limits.workers} scene(s) embedding and {self.limits.queue} waiting "
                       "(--scene-workers, --scene-queue); try again")  # fmt: skip
            log.error("refused a scene: %s", message)
            return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})
        self.admitted += 1
        SCENES_ADMITTED.set(self.admitted)
        loop = asyncio.get_running_loop()
        folder = Path(tempfile.mkdtemp(prefix="clay-serve-scene-"))
        try:
            repeated = sorted(
                {k for k, _ in request.query_params.multi_items() if len(request.query_params.getlist(k)) > 1}
            )
            if repeated:
                raise Refusal(400, f"parameter(s) given more than once: {', '.join(repeated)}")
            wanted = parse_request(dict(request.query_params), request.headers.get("accept"), self.base, self.limits,
                                   self.embedder.metadata)  # fmt: skip
            body = None
            has_body = (
                request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
            )
            if wanted.url is not None and has_body:
                raise Refusal(400, "a scene is the body or url=, not both")
            if wanted.url is None:
                body = folder / "body"  # beside in/, where the scene is unpacked under the client's names
                await self.receive(request, body)
            content, media = await loop.run_in_executor(self.workers, self.embed, wanted, body,
                                                        request.headers.get("content-type", ""), folder)  # fmt: skip
        except Refusal as refusal:
            SCENE_REQUESTS.labels("invalid" if refusal.status < 500 else "failed").inc()
            log.error(
                "%s: %s", "refused a scene" if refusal.status < 500 else "scene failed", refusal.message
            )
            return JSONResponse({"error": refusal.message}, status_code=refusal.status)
        except ClientDisconnect:  # gone while its body was arriving: no one to answer
            SCENE_REQUESTS.labels("disconnected").inc()
            log.error("refused a scene: the client disconnected before its body was sent")
            return Response(status_code=400)
        finally:
            self.admitted -= 1
            SCENES_ADMITTED.set(self.admitted)
            await loop.run_in_executor(None, shutil.rmtree, folder, True)
        SCENE_REQUESTS.labels("ok").inc()
        SCENE_SECONDS.observe(time.perf_counter() - start)
        return Response(content, media_type=media)

    async def receive(self, request: Request, path: Path) -> None:
        """The body into ``path``; a 413 once it passes the limit (a chunked body has no length to
        refuse it by beforehand; one with a length is refused by the middleware). Past the limit the
        body is read on, unwritten, for up to :data:`DRAIN_BYTES` more, so that a client that is still
        sending reads the 413 rather than a connection reset."""
        size, limit = 0, self.limits.max_bytes
        with path.open("wb") as out:  # page-cache writes of the server's chunks (64 KiB): not worth a thread
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    out.write(chunk)
                elif size > limit + DRAIN_BYTES:
                    break
        if size > limit:
            raise Refusal(
                413,
                f"request body is larger than this server's limit of {limit} bytes ({self.limits.meaning()})",
            )
        if size == 0:
            raise Refusal(
                400,
                f"no scene: send a GeoTIFF as the body (or multipart/form-data), or give url= ({SCENE_PATH})",
            )

    def embed(
        self, wanted: SceneRequest, body: Path | None, content_type: str, folder: Path
    ) -> tuple[bytes, str]:
        """On a worker: the scene (a body unpacked into a file named as the client named it, or the
        URL's files checked) embedded by the API, its rows encoded."""
        try:
            if body is not None:
                scene, name = self.unpack(body, content_type, wanted.name, folder)
            else:
                scene, name = self.remote_scene(wanted.url, wanted.options), None
            result = self.embedder.embed_scene_to(scene, folder / "out" / "rows.parquet", wanted.options)
            table = pq.read_table(result.patches if wanted.rows == "patches" else result.output)
            if name is not None:  # not the server's temporary path: the name the client gave
                table = table.set_column(table.schema.get_field_index("source_url"), "source_url",
                                         pa.array([name] * table.num_rows, pa.string()))  # fmt: skip
            return encode(table, wanted.media_type), wanted.media_type
        except Refusal:
            raise
        except SceneError as exc:  # clay-run's words, the file named as the client named it
            raise Refusal(422, in_request_terms(str(exc).replace(f"{folder / 'in'}/", ""))) from None
        except EngineError as exc:
            raise Refusal(500, f"the engine failed: {first_line(exc)}") from None
        except Exception as exc:  # a bug of ours is still one line for the client
            log.error(
                "scene failed: internal error", exc_info=bool(os.environ.get("CLAY_DEBUG"))
            )  # as clay-run
            raise Refusal(500, f"internal error ({type(exc).__name__}: {first_line(exc)})") from None

    def unpack(self, body: Path, content_type: str, name: str | None, folder: Path) -> tuple[Path, str]:
        """The scene under ``folder/in/``: the body itself (a GeoTIFF named ``name``), or the files of a
        ``multipart/form-data`` body: one GeoTIFF (named by its part's file name), or several (a
        scene's band files, ``B02.tif``...) as one scene folder named ``name``, as ``clay-run`` takes a
        folder. Returns the scene's path and its name."""
        inside = folder / "in"
        inside.mkdir()
        if not content_type.lower().startswith("multipart/form-data"):
            name = name or DEFAULT_NAME
            body.rename(inside / name)
            check_upload(inside / name, inside)
            return inside / name, name
        uploads = self.form_files(body, content_type, folder)
        try:
            if not uploads:
                raise Refusal(
                    400,
                    "the multipart/form-data body holds no file; send a GeoTIFF (or a scene's band files)",
                )
            if len(uploads) == 1:
                given = uploads[0].file_name
                name = safe_name(given.decode("utf-8", "replace") if given else "") or name or DEFAULT_NAME
                scene, targets = inside / name, [inside / name]
            else:
                name = name or DEFAULT_FOLDER
                scene = inside / name
                scene.mkdir()
                targets = [
                    scene / safe_name((u.file_name or b"").decode("utf-8", "replace")) for u in uploads
                ]
                repeated = sorted({t.name for t in targets if targets.count(t) > 1 or t == scene})
                if repeated:
                    raise Refusal(
                        400,
                        f"the multipart/form-data files need distinct names (file names: {', '.join(repeated) or 'none'})",
                    )
            for upload, target in zip(uploads, targets):
                upload.file_object.seek(0)
                with target.open("wb") as out:
                    shutil.copyfileobj(upload.file_object, out, 1 << 20)
                check_upload(target, inside)
        finally:
            for upload in uploads:
                upload.close()
            body.unlink()
        return scene, name

    @staticmethod
    def form_files(body: Path, content_type: str, folder: Path) -> list:
        """The file parts of a ``multipart/form-data`` body (python-multipart ``File`` objects, spooled
        under ``folder/parts/``); its other fields are ignored."""
        from python_multipart import FormParser
        from python_multipart.multipart import parse_options_header

        (folder / "parts").mkdir()
        kind, params = parse_options_header(content_type)
        files: list = []
        try:
            parser = FormParser(kind.decode("latin-1"), None, files.append, boundary=params.get(b"boundary"),
                                config={"UPLOAD_DIR": str(folder / "parts")})  # fmt: skip
            with body.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    parser.write(chunk)
            parser.finalize()
        except Exception as exc:  # noqa: BLE001 - python-multipart's errors: a malformed form
            for upload in files:
                upload.close()
            raise Refusal(400, f"the multipart/form-data body cannot be read ({first_line(exc)})") from None
        return files

    def remote_scene(self, url: str, options: RunOptions) -> SceneFiles:
        """The files of ``url`` (a GeoTIFF, or a STAC Item's band assets), each under an allowed
        prefix and together within the size limit, asked of their servers before any is opened."""
        files = as_scene_files(url, options.http_timeout)
        total = 0
        for path in files.files:
            href = http_url(path) if isinstance(path, GdalPath) else None
            if href is None or not url_allowed(href, self.limits.allow_urls):
                raise Refusal(403, f"url={url}: its file {path} is not under a prefix this server may read "
                                   f"(--allow-url: {', '.join(self.limits.allow_urls)})")  # fmt: skip
            try:
                size, start = remote_size_and_start(href, options.http_timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise Refusal(422, f"{path}: {describe_fetch_error(exc, options.http_timeout)}") from None
            if not start.startswith(TIFF_STARTS + JP2_STARTS):
                raise Refusal(
                    422,
                    f"{path}: not a GeoTIFF (nor a JPEG 2000 band file); this server reads no other format",
                )
            if size is None:
                raise Refusal(422, f"{path}: its server does not say its size (Content-Range or Content-Length), so "
                                   f"the limit of {self.limits.max_bytes} bytes cannot be checked")  # fmt: skip
            total += size
            if total > self.limits.max_bytes:
                raise Refusal(413, f"url={url}: {total} bytes or more, larger than this server's limit of "
                                   f"{self.limits.max_bytes} bytes ({self.limits.meaning()})")  # fmt: skip
        return files


def check_upload(path: Path, inside: Path) -> None:
    """Refuse an uploaded file that is not named as a GeoTIFF (400) or does not start as a TIFF does
    (422: GDAL would open it by its content, whatever its name)."""
    shown = path.relative_to(inside).as_posix()
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise Refusal(400, f"{shown}: uploads are GeoTIFFs named {' or '.join(UPLOAD_SUFFIXES)}")
    with path.open("rb") as file:
        if not file.read(4).startswith(TIFF_STARTS):
            raise Refusal(422, f"{shown}: not a readable GeoTIFF (it does not start as a TIFF file does)")


def encode(table: pa.Table, media: str) -> bytes:
    if media == PARQUET:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()
    return geojson(table)


def geojson(table: pa.Table) -> bytes:
    """Rows → a GeoJSON FeatureCollection (RFC 7946: the rows' geometries are already OGC:CRS84):
    each row a Feature with its ``bbox`` and every other column as a property (``embeddings`` a list
    of floats, ``date`` ISO); the files' key-value metadata (engine, scene CRS, preprocessing) as
    the collection's ``metadata``."""
    import shapely

    geometries = shapely.to_geojson(shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False)))
    dim = table.schema.field("embeddings").type.list_size
    vectors = table["embeddings"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    corners = table["bbox"].combine_chunks().flatten()  # xmin, ymin, xmax, ymax
    bbox = (
        np.stack([c.to_numpy(zero_copy_only=False) for c in corners], axis=1)
        if table.num_rows
        else np.empty((0, 4))
    )
    names = [n for n in table.column_names if n not in ("geometry", "bbox", "embeddings")]
    columns = {n: table[n].to_pylist() for n in names}
    features = [
        {"type": "Feature", "bbox": bbox[k], "geometry": orjson.Fragment(geometries[k]),
         "properties": {**{n: columns[n][k] for n in names}, "embeddings": vectors[k]}}
        for k in range(table.num_rows)
    ]  # fmt: skip
    metadata = {
        key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items() if key != b"geo"
    }
    return orjson.dumps({"type": "FeatureCollection", "features": features, "metadata": metadata},
                        option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip
