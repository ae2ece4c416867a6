"""Outputs: GeoParquet chip and patch files, the patch grid and patch rasters (COG), which rows
repeat ground (the ``overlap`` columns, by the patch raster's rule), the preview picture, and the
durable publish they share. Reads scenes' records (grid, footprints, the scene), never an engine.
"""
