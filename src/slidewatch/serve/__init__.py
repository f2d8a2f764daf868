"""The web map of ``slidewatch serve``: analysts scan scenes, review the detections and feed
their corrections back into training. ``settings`` (the server's folders, token and limits, and
the rule that a server reachable from other machines needs a token), ``paths`` (scenes under
the data root and uploads, models under the model folders; nothing outside them), ``jobs``
(scan jobs as JSON files under the work folder, one worker thread, resume after a restart),
``tiles`` (map tiles, chips and the colour ramp through rio-tiler), ``reviews`` (accept, reject,
redraw or add detections in a GeoPackage per scanned scene, with a version per detection),
``uploads`` (GeoTIFFs streamed to disk under a size limit), ``app`` (the FastAPI application:
routes, token, host and origin checks, JSON errors). The page and its vendored libraries
(Leaflet, Swagger UI) are package data under ``static/``. Needs the ``serve`` extra
(``pip install 'slidewatch[serve]'``): FastAPI, uvicorn, rio-tiler, python-multipart.

Sits just below ``cli``; runs scans through ``scan`` and reads rasters and GeoPackages through
``data``.

May import: scan, explain, inference, data, models, config and the leaf modules.
"""
