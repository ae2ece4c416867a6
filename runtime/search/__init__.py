"""Similarity search over clay-run's outputs (``clay-search``): an archive of GeoParquet chip or patch
files of one model (:mod:`.archive`), exact (numpy) and approximate (LanceDB IVF-PQ) indexes over their
unit vectors (:mod:`.index`), queries by point, row id, vector or several positive examples with
each piece of ground returned once (:mod:`.query`), and the command (:mod:`.cli`). Reads outputs
only: no engine, no scene, no torch.
"""

from .archive import Archive, SearchError, open_archive
from .query import search

__all__ = ["Archive", "SearchError", "open_archive", "search"]
