"""Events over time: imagery from STAC catalogues and what changed between dates.
``catalog`` (a STAC API opened through pystac-client with short timeouts, headers and a signer;
searching one collection over an area, dates and a cloud limit, saying which filter removed
every item), ``grid`` (the one grid of an area), ``fetch`` (``imagery search|fetch``: the window
of each asset onto that grid, COG files with the acquisition in their tags, ``items.json``),
``tags`` (those tags, and reading an image's date back), ``changes`` (``slidewatch changes``:
two scans on one grid, detections new, persisting or gone), ``dating`` (``slidewatch date``: when
each detection of the latest image appeared), ``chips`` (``data from-inventory --stac``: chips
from the least cloudy image after each event). Needs the ``stac`` extra for catalogues only;
pystac-client is imported when a catalogue is opened.

Sits below ``cli`` beside ``experiments`` (siblings never import each other); runs scans
through ``scan`` and cuts chips through ``data``.

May import: scan, data, inference, models, config and the leaf modules.
"""
