"""Static files over HTTP with Range requests, as object stores serve COGs (GDAL's /vsicurl/ reads them
by range): the tests' stand-in for a STAC catalogue and its bucket, on loopback only.

``python -m tests.range_server FOLDER`` binds 127.0.0.1 on an ephemeral port, prints the port on one
line and serves FOLDER until terminated. It runs in a process of its own: rasterio holds the GIL
while GDAL opens a URL, so a server thread in the reading process would never answer.

Faults, as servers misbehave (all off unless asked for):

- ``--stall-at OFFSET``: a response holding byte OFFSET or any later one sends its headers and
  half its body (``--stall-keep N``: its first N bytes, short of the whole), then holds the connection without a byte
  more for ``--stall-for`` seconds (60) and closes it: a stalled or dying server mid-body. The
  stalled responses are listed on stderr.
- ``--status CODE``: every request is answered with CODE (403: an expired signed URL or
  credentials); with ``--status-at OFFSET`` only those for a range holding byte OFFSET or a later
  one (the header reads and opens, the pixels do not: a URL that expires during a run).
- ``--token TOKEN``: a request without ``Authorization: Bearer TOKEN`` is answered 401.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import time
from pathlib import Path


class RangeFiles(http.server.SimpleHTTPRequestHandler):
    stall_at: int | None = None
    stall_for: float = 60.0
    stall_keep: int | None = None
    status: int | None = None
    status_at: int | None = None
    token: str | None = None

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_error(401)
            return
        if self.status is not None and self.status_at is None:
            self.send_error(self.status)
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if wanted and not wanted[1]:  # a suffix: the last N bytes
            start = max(0, len(data) - int(wanted[2] or 0))
        elif wanted:
            start, end = int(wanted[1]), min(int(wanted[2]) if wanted[2] else end, end)
        if self.status is not None and wanted and end >= self.status_at:
            self.send_error(self.status)
            return
        if wanted:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Type", "application/geo+json" if path.suffix == ".json" else "image/tiff")
        self.end_headers()
        if body and self.stall_at is not None and end >= self.stall_at:
            size = end - start + 1
            half = start + (size // 2 if self.stall_keep is None else min(self.stall_keep, size - 1))  # always short
            self.wfile.write(data[start:half])
            self.wfile.flush()
            print(f"stalled {start}-{end}", file=sys.stderr, flush=True)
            time.sleep(self.stall_for)  # bounded: the connection then closes, short of its Content-Length
            self.close_connection = True
            return
        if body:
            self.wfile.write(data[start : end + 1])

    def log_message(self, *args) -> None:  # quiet: tests read clay-run's output, not the server's
        pass


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.range_server")
    parser.add_argument("folder")
    parser.add_argument("--stall-at", type=int, default=None)
    parser.add_argument("--stall-for", type=float, default=60.0)
    parser.add_argument("--stall-keep", type=int, default=None)
    parser.add_argument("--status", type=int, default=None)
    parser.add_argument("--status-at", type=int, default=None)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    faults = {"stall_at": args.stall_at, "stall_for": args.stall_for, "stall_keep": args.stall_keep, "status": args.status,
              "status_at": args.status_at, "token": args.token}  # fmt: skip
    handler = type("Handler", (RangeFiles,), faults)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=args.folder))
    server.daemon_threads = True  # a stalled response never holds up the server's exit
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
