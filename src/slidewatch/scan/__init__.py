"""Whole scenes window by window: ``run`` (the scan entry point), ``plan`` (settings, output
paths, resume state), ``score`` (batches of windows through the model), ``mosaic`` (blending into
the probability raster), ``outputs`` (polygons, GeoJSON, quick-looks), ``ray_backend`` (Ray).

May import: leaves, config, data, models, inference.
"""
