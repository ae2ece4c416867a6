"""Outputs: GeoParquet chip and patch files, the patch grid and patch rasters (COG), the preview
picture, and the durable publish they share. Reads scenes' records (grid, footprints, the scene),
never an engine.
"""
