"""Everything between files on disk and model-ready tensors.

``readers`` (images and masks of every format, pixel scaling), ``raster`` (rasterio access: the one
way to open a raster, the band rule, the nodata mask, window grids and windowed reads),
``geometry`` (ground area, metres per pixel, distances), ``transforms`` (augmentation,
normalisation), ``folders``/``tiling``/``splits``/``info`` (datasets, tiles from scenes, splits by
image or region), ``dataset`` and ``inputs`` (the one builder of model inputs from a model's
metadata), ``standardize`` (the per-image radiometric standardisation rule; ``imagestats``
its statistics record and their ``tiles.csv`` form),
``inventory``/``inventory_csv`` (chips around inventory points), ``tabular``, ``terrain``,
``sizes`` (the other inputs of multi-modal models), ``sampledata`` (the demo's data).

May import: the leaf modules and ``config``. Never models, training, inference or anything above.
"""
