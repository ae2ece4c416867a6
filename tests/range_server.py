"""Static files over HTTP with Range requests, as object stores serve COGs (GDAL's /vsicurl/ reads them
by range): the tests' stand-in for a STAC catalogue and its bucket, on loopback only.

``python -m tests.range_server FOLDER`` binds 127.0.0.1 on an ephemeral port, prints the port on one
line and serves FOLDER until terminated. It runs in a process of its own: rasterio holds the GIL
while GDAL opens a URL, so a server thread in the reading process would never answer.
"""

from __future__ import annotations

import functools
import http.server
import re
import sys
from pathlib import Path


class RangeFiles(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start, end = int(wanted[1]), min(int(wanted[2]) if wanted[2] else end, end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Type", "application/geo+json" if path.suffix == ".json" else "image/tiff")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def log_message(self, *args) -> None:  # quiet: tests read clay-run's output, not the server's
        pass


def main(folder: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeFiles, directory=folder))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
