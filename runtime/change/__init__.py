"""``clay-change``: per-cell change between runs of one place at different dates, on the outputs.

``cells.py`` reads a run's patch embeddings onto its cell grid (a patch raster, int8 dequantised, or
patch rows placed by the patch raster's rule) with what made them; ``compare.py`` says what differs
between runs that cannot be compared (grid, model, engine, sensor); ``distance.py`` computes the
cosine distance per cell and writes it as a COG; ``quicklook.py`` draws it; ``cli.py`` is the command.
"""
