"""Bad input, files side (issue 16: items 6, 9 tiles.csv, 10b, 11, 15, 16b, 19): file names that
are not UTF-8, tiles.csv and inventory encodings and quotes, damaged scan states, scenes in a
local CRS or too large, unknown devices, CAM layers without a feature map, broken links,
unreadable folders and FIFOs among the images.

Every refusal goes through :func:`_badinput.run_bad` (the real command line: one ``error:`` line
naming the file or option, exit 2, no traceback, nothing written). Cases that are handled rather
than refused (a damaged resume state starts again; a scene whose CRS has no WGS84 transformation
is scanned in pixel coordinates; ``data info`` lists what it cannot read) check the outputs.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _badinput import run_bad, snapshot
from _factories import make_class_dataset, slide_image, train_tiny_cnn
from conftest import UTM45, write_image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from slidewatch.cli.main import main
from slidewatch.scan.mosaic import OUT_BLOCK
from slidewatch.scan.run import scan

TRANSFORM = from_origin(500000, 3000000, 10, 10)
BAD = b"bad\xff\xfename"  # not UTF-8: reaches Python as surrogate escapes
SHOWN = "bad\\xff\\xfename"  # how the error line shows it
SCAN_KW = ["--tile", "32", "--stride", "16", "--device", "cpu", "--no-progress"]
LOCAL_GRID = ('LOCAL_CS["Site grid",LOCAL_DATUM["local",0],UNIT["metre",1],'
              'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny CNN (32 px, 3 bands) of this module. Read-only."""
    root = tmp_path_factory.mktemp("files_model")
    return train_tiny_cnn(make_class_dataset(root / "d", images=2, per_image=2), root / "m")


def dataset(tmp_path: Path) -> Path:
    return make_class_dataset(tmp_path / "d", images=1, per_image=2)


def scene_pixels(rows: int = 3, cols: int = 3, seed: int = 0) -> np.ndarray:
    """A mosaic of 32-px slide/no-slide images (a checkerboard)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate([slide_image(rng, (i + j) % 2 == 0, 32)
                                           for j in range(cols)], 1) for i in range(rows)], 0)


def rename_bytes(path: Path, new_name: bytes) -> Path:
    """Rename ``path`` to a name given as bytes (Linux file names are bytes)."""
    target = os.path.join(os.fsencode(path.parent), new_name)
    os.rename(os.fsencode(path), target)
    return Path(os.fsdecode(target))


def first_tile(root: Path) -> Path:
    return sorted(p for p in (root / "landslide").glob("*.png") if p.is_file())[0]


def train_args(root: Path, out: Path) -> list:
    return ["train", "--data", root, "--out", out, "--model", "baseline_cnn", "--weights", "none",
            "--input-size", "32", "--phase1-epochs", "0", "--phase2-epochs", "1", "--quiet",
            "--device", "cpu"]


def dataset_commands(model: Path, root: Path, tmp_path: Path) -> dict[str, list]:
    """Every command that scans a class-folder dataset, writing under ``tmp_path/out*``."""
    return {
        "train": train_args(root, tmp_path / "out_m"),
        "evaluate": ["evaluate", model, "--data", root, "--out", tmp_path / "out_e", "--quiet",
                     "--device", "cpu"],
        "data split": ["data", "split", root, "--out", tmp_path / "out_split.json"],
    }


# ---------------------------------------------------------------- 6: names that are not UTF-8


@pytest.mark.parametrize("command", ["predict", "evaluate", "train", "data split", "explain"])
def test_image_name_not_utf8_is_refused_naming_it(model, tmp_path, capsys, command):
    root = dataset(tmp_path)
    rename_bytes(first_tile(root), BAD + b".png")
    argv = {"predict": ["predict", model, root / "landslide", "--out", tmp_path / "p.csv",
                        "--device", "cpu", "--quiet"],
            "explain": ["explain", model, root / "landslide", "--out", tmp_path / "out_x",
                        "--quiet"],
            **dataset_commands(model, root, tmp_path)}[command]
    line = run_bad(capsys, argv, "file name is not valid UTF-8; rename it", watch=(tmp_path,),
                   progress_lines=command == "train")
    assert SHOWN + ".png" in line
    assert not (tmp_path / "out_e").exists()  # evaluate left an empty folder before


@pytest.mark.parametrize("which", ["image and mask", "scene folder"])
def test_data_tiles_scene_file_not_utf8(tmp_path, capsys, which):
    img = scene_pixels(2, 2)
    mask = np.zeros(img.shape[:2], np.uint8)
    for sub, arr in (("images", img), ("masks", mask)):
        write_image(tmp_path / "sc" / sub / "a.png", arr)
    if which == "scene folder":
        scene = rename_bytes(tmp_path / "sc", BAD)
    else:
        scene = tmp_path / "sc"
        for sub in ("images", "masks"):
            rename_bytes(scene / sub / "a.png", BAD + b".png")
    line = run_bad(capsys, ["data", "tiles", scene, "--out", tmp_path / "t", "--tile", "32",
                            "--quiet"], "file name is not valid UTF-8", watch=(tmp_path,))
    assert SHOWN in line


def test_scan_scene_name_not_utf8(model, tmp_path, capsys):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    s = rename_bytes(s, BAD + b".tif")
    line = run_bad(capsys, ["scan", model, s, "--out", tmp_path / "o", *SCAN_KW],
                   "file name is not valid UTF-8", watch=(tmp_path,))
    assert SHOWN + ".tif" in line


def test_scan_out_folder_not_utf8(model, tmp_path, capsys):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + BAD))
    line = run_bad(capsys, ["scan", model, s, "--out", out, *SCAN_KW],
                   "folder name is not valid UTF-8; rename it", watch=(tmp_path,))
    assert line.startswith("error: --out ") and SHOWN in line


def test_data_tiles_geotiff_tiles_into_a_folder_not_utf8(tmp_path, capsys):
    img = scene_pixels(2, 2)
    write_image(tmp_path / "sc" / "images" / "a.tif", img, crs=UTM45, transform=TRANSFORM)
    write_image(tmp_path / "sc" / "masks" / "a.png", np.zeros(img.shape[:2], np.uint8))
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + BAD))
    line = run_bad(capsys, ["data", "tiles", tmp_path / "sc", "--out", out, "--tile", "32",
                            "--quiet"], "file name is not valid UTF-8", watch=(tmp_path,))
    assert SHOWN in line


def test_data_info_lists_a_name_not_utf8_with_escapes(tmp_path, capsys):
    root = dataset(tmp_path)
    rename_bytes(first_tile(root), BAD + b".png")
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "unreadable: 1" in out and f"{SHOWN}.png: file name is not valid UTF-8" in out
    assert main(["data", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in info["unreadable"]] == [os.fsdecode(BAD + b".png")]


@pytest.mark.parametrize("argv", [["data", "info", "PATH"], ["data", "split", "PATH", "--out", "o"],
                                  ["data", "tiles", "PATH", "--out", "o"]],
                         ids=["data info", "data split", "data tiles"])
def test_error_line_shows_a_name_not_utf8_with_escapes(tmp_path, capsys, argv):
    missing = Path(os.fsdecode(os.fsencode(tmp_path) + b"/nope\xe9"))
    argv = [missing if a == "PATH" else tmp_path / a if a == "o" else a for a in argv]
    line = run_bad(capsys, argv, "nope\\xe9", watch=(tmp_path,))
    assert "\udce9" not in line


@pytest.mark.parametrize("text, shown", [
    ("a\udcff\udcfeb.png: x", "a\\xff\\xfeb.png: x"),
    ("two\nlines\r\n", "two lines"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    (b"by\xfftes", "by\\xfftes"),
], ids=["surrogate escapes", "line breaks", "lone surrogate", "bytes"])
def test_printable_never_fails(text, shown):
    from slidewatch.cli.main import printable

    assert printable(text) == shown
    printable(text).encode("utf-8")


# ---------------------------------------------------------------- 9: tiles.csv encodings, quotes


def rewrite_tiles_csv(root: Path, how: str) -> None:
    csv_path = root / "tiles.csv"
    text = csv_path.read_text(encoding="utf-8")
    if how == "cp1252":
        csv_path.write_bytes(text.replace("north", "Mérida", 1).encode("cp1252"))
    elif how == "utf-16":
        csv_path.write_bytes(text.encode("utf-16"))  # with a byte-order mark
    elif how == "utf-16-le":
        csv_path.write_bytes(text.encode("utf-16-le"))  # without one
    elif how == "quote":
        lines = text.splitlines(keepends=True)
        lines[2] = lines[2].replace(",north", ',"north', 1)
        csv_path.write_text("".join(lines), encoding="utf-8")


TILES_CASES = [("cp1252", "tiles.csv: line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"),
               ("utf-16", "tiles.csv: looks like UTF-16; save it as UTF-8"),
               ("utf-16-le", "tiles.csv: looks like UTF-16; save it as UTF-8"),
               ("quote", "tiles.csv: line 3: a quote (\") opened in this row is never closed")]


@pytest.mark.parametrize("how, needle", TILES_CASES, ids=[how for how, _ in TILES_CASES])
@pytest.mark.parametrize("command", ["data info", "data split", "evaluate", "train"])
def test_tiles_csv_bad_text_is_one_line(model, tmp_path, capsys, how, needle, command):
    root = dataset(tmp_path)
    rewrite_tiles_csv(root, how)
    argv = {"data info": ["data", "info", root], **dataset_commands(model, root, tmp_path)}
    run_bad(capsys, argv[command], needle, watch=(tmp_path,), progress_lines=command == "train")


def test_tiles_csv_with_a_byte_order_mark_is_read(tmp_path, capsys):
    root = dataset(tmp_path)
    plain = main(["data", "info", str(root), "--json"]), json.loads(capsys.readouterr().out)
    csv_path = root / "tiles.csv"
    csv_path.write_bytes(codecs.BOM_UTF8 + csv_path.read_bytes())
    assert main(["data", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert plain[0] == 0 and info == plain[1]
    assert set(info["per_region"]) == {"north", "south"} and info["tiles_csv"]


# ---------------------------------------------------------------- 10b: damaged scan state


@pytest.fixture(scope="module")
def interrupted(model, tmp_path_factory):
    """A scene of two output blocks, its full scan, and a scan stopped after the first block
    (state: rows_written = OUT_BLOCK)."""
    root = tmp_path_factory.mktemp("state")
    img = np.concatenate([scene_pixels(5, 2, seed=1), scene_pixels(5, 2, seed=2)], 0)  # 320x64
    s = write_image(root / "s.tif", img, crs=UTM45, transform=TRANSFORM)
    kw = {"tile": 32, "stride": 16, "device": "cpu"}
    scan(model, [s], root / "full", **kw)

    def stop_after(iterable, desc="", total=None):
        for k, item in enumerate(iterable):
            if k == 17:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        scan(model, [s], root / "part", progress=stop_after, **kw)
    state = json.loads((root / "part" / ".s_scan-state.json").read_text())
    assert state["rows_written"] == OUT_BLOCK and state["next_row"] == 16
    return {"scene": s, "full": root / "full", "part": root / "part", "state": state}


def _set(key, value):
    def edit(state):
        state[key] = value
        return json.dumps(state)
    return edit


def _replay(fn):
    def edit(state):
        fn(state["replay"])
        return json.dumps(state)
    return edit


DAMAGE = {
    "not json": lambda s: "{broken",
    "not utf-8": lambda s: b"\xff\xfe{}",
    "a list": lambda s: "[]",
    "fingerprint not a dict": _set("fingerprint", "x"),
    "key missing": lambda s: json.dumps({k: v for k, v in s.items() if k != "replay"}),
    "extra key": _set("more", 1),
    "rows_written negative": _set("rows_written", -OUT_BLOCK),
    "rows_written past the scene": _set("rows_written", 100000),
    "rows_written text": _set("rows_written", str(OUT_BLOCK)),
    "rows_written float": _set("rows_written", float(OUT_BLOCK)),
    "rows_written not a block": _set("rows_written", OUT_BLOCK - 16),
    "rows_written true": _set("rows_written", True),
    "next_row past the grid": _set("next_row", 999),
    "next_row negative": _set("next_row", -1),
    "next_row null": _set("next_row", None),
    "next_row behind": _set("next_row", 3),
    "replay not a dict": _set("replay", [0.5]),
    "replay row missing": _replay(lambda r: r.clear()),
    "replay row extra": _replay(lambda r: r.update({"2": [0.5, 0.5, 0.5]})),
    "replay key not a number": _replay(lambda r: r.update({"abc": r.pop(next(iter(r)))})),
    "replay row short": _replay(lambda r: r.update({k: v[:1] for k, v in r.items()})),
    "replay probability above 1": _replay(lambda r: r.update({k: [7.0] * len(v)
                                                              for k, v in r.items()})),
    "replay probability negative": _replay(lambda r: r.update({k: [-0.5] * len(v)
                                                               for k, v in r.items()})),
    "replay probability NaN": _replay(lambda r: r.update({k: [float("nan")] * len(v)
                                                          for k, v in r.items()})),
    "replay probability text": _replay(lambda r: r.update({k: ["x"] * len(v)
                                                           for k, v in r.items()})),
}


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_scan_state_starts_again_with_a_warning(model, interrupted, tmp_path, capsys,
                                                        damage):
    out = tmp_path / "o"
    shutil.copytree(interrupted["part"], out)
    state_path = out / ".s_scan-state.json"
    text = DAMAGE[damage](json.loads(json.dumps(interrupted["state"])))
    if isinstance(text, bytes):
        state_path.write_bytes(text)
    else:
        state_path.write_text(text)
    capsys.readouterr()
    assert main(["scan", str(model), str(interrupted["scene"]), "--out", str(out),
                 *SCAN_KW]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ".s_scan-state.json: damaged resume state" in warnings[0], err
    assert "detections (scanned)" in err and "resumed" not in err
    assert float(re.search(r"([-0-9.]+) megapixels/s", err)[1]) >= 0
    np.testing.assert_array_equal(read_band(out / "s_probability.tif"),
                                  read_band(interrupted["full"] / "s_probability.tif"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in interrupted["full"].iterdir())


def test_partial_map_of_another_size_starts_again(model, interrupted, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(interrupted["part"], out)
    write_image(out / ".s_probability.partial.tif", np.zeros((8, 8), np.float32))
    assert main(["scan", str(model), str(interrupted["scene"]), "--out", str(out),
                 *SCAN_KW]) == 0
    err = capsys.readouterr().err
    assert "damaged resume state (partial map is 8x8x1, not the scene's size)" in err
    np.testing.assert_array_equal(read_band(out / "s_probability.tif"),
                                  read_band(interrupted["full"] / "s_probability.tif"))


def test_intact_scan_state_still_resumes(model, interrupted, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(interrupted["part"], out)
    assert main(["scan", str(model), str(interrupted["scene"]), "--out", str(out),
                 *SCAN_KW]) == 0
    err = capsys.readouterr().err
    assert "detections (resumed)" in err and "warning" not in err
    np.testing.assert_array_equal(read_band(out / "s_probability.tif"),
                                  read_band(interrupted["full"] / "s_probability.tif"))


# ---------------------------------------------------------------- 11: CRS, device, CAM layer


def test_scene_in_a_local_crs_is_scanned_in_pixel_coordinates(model, tmp_path, capsys):
    s = write_image(tmp_path / "site.tif", scene_pixels(), crs=CRS.from_wkt(LOCAL_GRID),
                    transform=from_origin(1000, 2000, 1, 1))
    argv = ["scan", str(model), str(s), "--out", str(tmp_path / "o"), "--threshold", "0.01",
            *SCAN_KW]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "warning: " in err and "site.tif: its CRS (Site grid) has no transformation to " \
        "WGS84" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "site_detections.geojson", "site_probability.tif", "site_quicklook.png"]
    collection = json.loads((tmp_path / "o" / "site_detections.geojson").read_text())
    features = collection["features"]
    assert features and "crs" not in collection
    xs = [x for x, _ in features[0]["geometry"]["coordinates"][0]]
    assert 0 <= min(xs) and max(xs) <= 96  # pixel coordinates
    with rasterio.open(tmp_path / "o" / "site_probability.tif") as ds, rasterio.open(s) as src:
        assert ds.crs == src.crs and ds.transform == src.transform  # the map keeps the CRS
    assert main(argv) == 0  # the rerun: already done, no permanent failure
    assert "(already done)" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu0", "GPU", "cuda:x", "cuda:-1", "cuda0", "cpu:0", ""])
def test_scan_unknown_device_is_one_line(model, tmp_path, capsys, device):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    run_bad(capsys, ["scan", model, s, "--out", tmp_path / "o", "--device", device],
            f"--device {device!r}: unknown device; use auto, cpu, cuda or cuda:N",
            watch=(tmp_path,))


@pytest.mark.parametrize("command", ["scan-ray", "predict", "evaluate", "explain"])
def test_every_command_checks_the_device_name(model, tmp_path, capsys, command):
    root = dataset(tmp_path)
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    argv = {"scan-ray": ["scan", model, s, "--out", tmp_path / "o", "--backend", "ray"],
            "predict": ["predict", model, root, "--out", tmp_path / "p.csv"],
            "evaluate": ["evaluate", model, "--data", root, "--out", tmp_path / "o"],
            "explain": ["explain", model, root / "landslide", "--out", tmp_path / "o"]}[command]
    if command == "scan-ray":
        pytest.importorskip("ray")
    run_bad(capsys, [*argv, "--device", "gpu0"], "--device 'gpu0': unknown device",
            watch=(tmp_path,))


def test_cuda_index_beyond_the_machine(model, tmp_path, capsys):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    run_bad(capsys, ["scan", model, s, "--out", tmp_path / "o", "--device", "cuda:99"],
            "--device cuda:99: ", watch=(tmp_path,))


@pytest.mark.parametrize("layer, what", [("classifier", "a 2-D tensor"),
                                         ("flatten", "a 2-D tensor"),
                                         ("hidden", "a 2-D tensor"),
                                         ("head_drop", "a 2-D tensor")])
def test_explain_layer_without_feature_map_lists_valid_ones(model, tmp_path, capsys, layer, what):
    root = dataset(tmp_path)
    line = run_bad(capsys, ["explain", model, root / "landslide", "--out", tmp_path / "o",
                            "--target-layer", layer, "--quiet"],
                   f"--target-layer '{layer}': gives {what}, not the 4-D feature map",
                   watch=(tmp_path,))
    assert "e.g. conv3, " in line and "classifier" not in line.split("e.g.")[1]


@pytest.mark.parametrize("layer", ["conv3", "global_pool"])
def test_explain_layers_with_a_feature_map_still_work(model, tmp_path, capsys, layer):
    root = dataset(tmp_path)
    assert main(["explain", str(model), str(root / "landslide"), "--out", str(tmp_path / "o"),
                 "--target-layer", layer, "--quiet"]) == 0
    assert (tmp_path / "o" / "cams.csv").is_file()


# ---------------------------------------------------------------- 15, 16b: links, folders, FIFOs


def break_dataset(root: Path, kind: str, monkeypatch) -> str:
    """Put something unreadable into the landslide folder; returns its name."""
    folder = root / "landslide"
    if kind == "broken link":
        (folder / "gone.png").symlink_to(root / "nowhere.png")
        return "gone.png: broken symbolic link (its target"
    if kind == "fifo":
        os.mkfifo(folder / "pipe.png")
        return "pipe.png: not a regular file (a named pipe)"
    sub = folder / "locked"
    sub.mkdir()
    shutil.copy(first_tile(root), sub / "x.png")
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and Path(os.fsdecode(path)).resolve() == sub.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root reads every folder; refuse this one
    return "locked: cannot list folder (Permission denied)"


KINDS = ["broken link", "fifo", "unreadable folder"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["train", "evaluate", "data split"])
def test_unreadable_entry_in_a_dataset_is_refused(model, tmp_path, capsys, monkeypatch, kind,
                                                 command):
    root = dataset(tmp_path)
    needle = break_dataset(root, kind, monkeypatch)
    argv = dataset_commands(model, root, tmp_path)[command]
    run_bad(capsys, argv, needle, watch=(tmp_path,), progress_lines=command == "train")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission")
def test_folder_without_permission_is_refused(tmp_path, capsys):
    root = dataset(tmp_path)
    (root / "landslide" / "locked").mkdir()
    (root / "landslide" / "locked").chmod(0)
    try:
        run_bad(capsys, ["data", "split", root, "--out", tmp_path / "s.json"],
                "locked: cannot list folder", watch=(tmp_path / "d" / "non_landslide",))
    finally:
        (root / "landslide" / "locked").chmod(0o755)


def test_data_info_counts_and_lists_every_unreadable_entry(tmp_path, capsys, monkeypatch):
    root = dataset(tmp_path)
    needles = [break_dataset(root, kind, monkeypatch) for kind in KINDS]
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "unreadable: 3" in out and "landslide 4, non_landslide 4" in out
    for needle in needles:
        assert needle in out


@pytest.mark.parametrize("kind", [*KINDS, "socket"])
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_unreadable_entry_among_images_to_predict_is_refused(model, tmp_path, capsys,
                                                            monkeypatch, kind, command):
    """Folders given to predict and explain are read as datasets are (before: broken links,
    FIFOs, sockets and folders that cannot be listed were left out without a word)."""
    root = dataset(tmp_path)
    if kind == "socket":
        import socket

        monkeypatch.chdir(root / "landslide")  # a socket's path is short: bind a relative one
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock.png")
        sock.close()
        monkeypatch.chdir(tmp_path)
        needle = "sock.png: not a regular file (a socket)"
    else:
        needle = break_dataset(root, kind, monkeypatch)
    argv = {"predict": ["predict", model, root, "--out", tmp_path / "p.csv", "--device", "cpu",
                        "--quiet"],
            "explain": ["explain", model, root / "landslide", "--out", tmp_path / "out_x",
                        "--quiet"]}[command]
    run_bad(capsys, argv, needle, watch=(tmp_path,))


@pytest.mark.parametrize("kind, needle", [("fifo", "pipe.png: not a regular file (a named pipe)"),
                                         ("broken link", "gone.png: broken symbolic link")])
def test_predict_of_a_special_file_given_by_name(model, tmp_path, capsys, kind, needle):
    """Before: "no such file or folder" for a FIFO or broken link that is there."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.png")
        image = tmp_path / "pipe.png"
    else:
        image = tmp_path / "gone.png"
        image.symlink_to(tmp_path / "nowhere.png")
    run_bad(capsys, ["predict", model, image, "--out", tmp_path / "p.csv", "--device", "cpu",
                     "--quiet"], needle, watch=(tmp_path,))


@pytest.mark.parametrize("name", ["pipe.png", "pipe.tif"])
def test_scan_of_a_fifo_is_not_a_regular_file(model, tmp_path, capsys, name):
    os.mkfifo(tmp_path / name)
    run_bad(capsys, ["scan", model, tmp_path / name, "--out", tmp_path / "o"],
            f"{name}: not a regular file", watch=(tmp_path,))


def test_scan_of_a_broken_link(model, tmp_path, capsys):
    (tmp_path / "s.tif").symlink_to(tmp_path / "gone.tif")
    run_bad(capsys, ["scan", model, tmp_path / "s.tif", "--out", tmp_path / "o"],
            "s.tif: broken symbolic link", watch=(tmp_path,))


def inventory_scene(tmp_path: Path) -> Path:
    return write_image(tmp_path / "scene.tif", scene_pixels(2, 2), crs=UTM45,
                       transform=from_origin(330000, 3070000, 10, 10))


INVENTORY = "id,latitude,longitude,landslide_size\n1,27.74,84.0,Medium\n2,27.73,84.01,Large\n"


INVENTORY_CASES = [
    ("utf-16", "inv.csv: looks like UTF-16; save it as UTF-8"),
    ("utf-16-le", "inv.csv: looks like UTF-16; save it as UTF-8"),
    ("utf-16-be", "inv.csv: looks like UTF-16; save it as UTF-8"),
    ("utf-32", "inv.csv: looks like UTF-32; save it as UTF-8"),
    ("utf-32-le", "inv.csv: looks like UTF-32; save it as UTF-8"),
    ("nul", "inv.csv: line 2: a NUL byte; not a text CSV file"),
    ("quote", "inv.csv: line 2: a quote (\") opened in this row is never closed"),
    ("quote last line", "inv.csv: line 3: a quote (\") opened in this row is never closed"),
]


@pytest.mark.parametrize("how, needle", INVENTORY_CASES, ids=[h for h, _ in INVENTORY_CASES])
def test_inventory_text_problems_are_one_line(tmp_path, capsys, how, needle):
    scene = inventory_scene(tmp_path)
    inv = tmp_path / "inv.csv"
    if how.startswith("utf-"):
        inv.write_bytes(INVENTORY.encode(how))
    elif how == "nul":
        inv.write_bytes(INVENTORY.replace("Medium", "Med\0ium").encode())
    elif how == "quote":
        inv.write_text(INVENTORY.replace("1,27.74", '1,"27.74'))
    else:
        inv.write_text(INVENTORY.replace("2,27.73", '2,"27.73'))
    run_bad(capsys, ["data", "from-inventory", inv, scene, "--out", tmp_path / "o",
                     "--size", "32"], needle, watch=(tmp_path,))


@pytest.mark.parametrize("kind, needle", [("fifo", "inv.csv: not a regular file (a named pipe)"),
                                         ("broken link", "inv.csv: broken symbolic link")])
def test_inventory_that_is_no_regular_file(tmp_path, capsys, kind, needle):
    scene = inventory_scene(tmp_path)
    inv = tmp_path / "inv.csv"
    if kind == "fifo":
        os.mkfifo(inv)  # reading it would block
    else:
        inv.symlink_to(tmp_path / "gone.csv")
    run_bad(capsys, ["data", "from-inventory", inv, scene, "--out", tmp_path / "o",
                     "--size", "32"], needle, watch=(tmp_path,))


def test_inventory_quoted_line_breaks_still_read(tmp_path):
    from slidewatch.data.inventory_csv import read_inventory

    inv = tmp_path / "inv.csv"
    inv.write_text('id,latitude,longitude,note\n1,27.74,84.0,"two\nlines"\n2,27.73,84.01,x\n'
                   '3,27.72,84.02,"last ""row""\nends here"\n')
    got = read_inventory(inv)
    assert got.rows == 3 and len(got.lat) == 3 and [a[-1] for a in got.attrs] == [1, 2, 3]


# ---------------------------------------------------------------- 19: scene size limit


def test_huge_sparse_scene_is_refused_before_planning(model, tmp_path, capsys):
    path = tmp_path / "huge.tif"
    profile = {"driver": "GTiff", "width": 40000, "height": 30000, "count": 3, "dtype": "uint8",
               "crs": UTM45, "transform": TRANSFORM, "tiled": True, "blockxsize": 512,
               "blockysize": 512, "sparse_ok": True}
    with rasterio.open(path, "w", **profile):
        pass  # no block written: a few hundred KB on disk
    assert path.stat().st_size < 5 * 2**20
    run_bad(capsys, ["scan", model, path, "--out", tmp_path / "o", *SCAN_KW],
            "huge.tif: 40000x30000 = 1200000000 pixels is more than the scan limit of "
            "1073741824; crop or tile it, or raise the limit with --max-pixels 1200000000",
            watch=(tmp_path,))


@pytest.mark.parametrize("limit, needle", [
    ("9215", "s.tif: 96x96 = 9216 pixels is more than the scan limit of 9215"),
    ("1", "s.tif: 96x96 = 9216 pixels is more than the scan limit of 1"),
    ("-1", "--max-pixels: must be >= 0 (0: no limit), got -1"),
])
def test_max_pixels_option(model, tmp_path, capsys, limit, needle):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    run_bad(capsys, ["scan", model, s, "--out", tmp_path / "o", "--max-pixels", limit,
                     *SCAN_KW], needle, watch=(tmp_path,))


@pytest.mark.parametrize("limit", ["9216", "0"])
def test_max_pixels_at_or_without_the_limit_scans(model, tmp_path, capsys, limit):
    s = write_image(tmp_path / "s.tif", scene_pixels(), crs=UTM45, transform=TRANSFORM)
    before = snapshot(tmp_path)
    assert main(["scan", str(model), str(s), "--out", str(tmp_path / "o"), "--max-pixels", limit,
                 *SCAN_KW]) == 0
    assert (tmp_path / "o" / "s_probability.tif").is_file() and len(snapshot(tmp_path)) > \
        len(before)
