"""One self-contained HTML report of a model and its evaluation (and, optionally, its CAMs).

:func:`build_report` reads what ``slidewatch train``, ``evaluate`` and ``explain`` wrote and
returns one HTML page that opens offline: every picture is a base64 ``data:`` URI, the CSS is
inline, nothing is fetched from anywhere and no JavaScript is needed to read it. A tiny inline
script only marks ``<body data-images-ok="loaded/total">`` once the page has loaded (for
automated checks). All text from the inputs is HTML-escaped.

Required inputs (a missing one raises :class:`~slidewatch.errors.DataError` naming the file):
``MODEL_DIR/slidewatch.json``, ``EVAL_DIR/metrics.json``, ``EVAL_DIR/predictions.csv``, the
figures that ``metrics.json`` lists and, with an explain folder, its ``cams.csv`` and
``localisation.json``. ``MODEL_DIR/curves.png`` and ``history.csv`` are shown when present.
Everything read is checked before anything is rendered: a field of the wrong type or out of
range (a string where a score belongs, a probability of 7, a figure outside its folder) is a
one-line error naming the file, the field (or CSV line and column) and what it must be.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation.sizes import TASKS
from slidewatch.io_utils import atomic_write_text
from slidewatch.meta import ModelMeta
from slidewatch.report import multimodal as mm

OUTCOMES = (("TP", "true positives"), ("FP", "false positives"), ("FN", "false negatives"),
            ("TN", "true negatives"))
THUMB_MAX = 256
LOC_KEYS = ("energy_inside", "pointing_game", "iou", "border_share", "top_left_share",
            "top_right_share", "bottom_left_share", "bottom_right_share")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs img{max-width:32%;margin:.3em;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ccc;border-radius:4px;padding:.4em;width:280px;font-size:.8em}
.card img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated}
.card .path{word-break:break-all;color:#555}.note{color:#666;font-style:italic}
.seg{display:inline-block;margin:.3em;border:1px solid #eee;font-size:.8em}
.seg img{max-height:200px}
"""

SCRIPT = """window.addEventListener("load",function(){var i=document.images,n=0;
for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){n++;}}
document.body.setAttribute("data-images-ok",n+"/"+i.length);});"""


# ----------------------------------------------------------------------------- inputs


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: not found; the report needs it")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(_need(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _read_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a CSV that must have ``columns``."""
    try:
        with open(_need(path), newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            return [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


# ----------------------------------------------------------------------------- checks
# What the report reads is checked field by field before anything is rendered (a tampered or
# damaged file would otherwise be shown as nonsense): one DataError naming the file and field.


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(path: Path, name: str, rule: str, value) -> DataError:
    return DataError(f"{path}: field {name} must be {rule}, got {_shown(value)}")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_rate(v) -> bool:
    return v is None or (is_number(v) and 0 <= v <= 1)


def _is_file_name(v) -> bool:
    """A plain file name inside its folder (no path, not ``..``)."""
    return isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v and "\\" not in v


SCORE_KEYS = ("accuracy", "precision", "recall", "sensitivity", "specificity", "f1", "roc_auc",
              "pr_auc")


def _check_block(path: Path, name: str, b) -> None:
    if not isinstance(b, dict):
        raise _bad(path, name, "an object of scores", b)
    if not _is_count(b.get("n")):
        raise _bad(path, f"{name}.n", "a whole number of tiles >= 0", b.get("n"))
    counts = b.get("counts") or {}
    if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
        raise _bad(path, f"{name}.counts", "an object of class names to tile counts", counts)
    for key in SCORE_KEYS:
        if not _is_rate(b.get(key)):
            raise _bad(path, f"{name}.{key}", "null or a number from 0 to 1", b.get(key))
    ci = b.get("ci95") or {}
    if not isinstance(ci, dict):
        raise _bad(path, f"{name}.ci95", "an object of intervals", ci)
    for key, interval in ci.items():
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(_is_rate(v) for v in interval)):
            raise _bad(path, f"{name}.ci95.{key}", "null or [low, high] from 0 to 1", interval)
    confusion = b.get("confusion") or {}
    if not isinstance(confusion, dict) or not all(_is_count(v) for v in confusion.values()):
        raise _bad(path, f"{name}.confusion", "an object of whole numbers", confusion)


def _check_metrics(path: Path, m) -> None:
    """metrics.json as ``slidewatch evaluate`` writes it."""
    if not isinstance(m, dict) or "overall" not in m:
        raise DataError(f"{path}: not written by `slidewatch evaluate`")
    _check_block(path, "overall", m["overall"])
    regions = m.get("regions") or {}
    if not isinstance(regions, dict):
        raise _bad(path, "regions", "an object of region names to scores", regions)
    for name, block in regions.items():
        _check_block(path, f"regions.{name}", block)
    if not (is_number(m.get("threshold")) and 0 <= m["threshold"] <= 1):
        raise _bad(path, "threshold", "a number from 0 to 1", m.get("threshold"))
    for key in ("threshold_source", "positive_class"):
        if not isinstance(m.get(key, ""), str):
            raise _bad(path, key, "a string", m.get(key))
    ci = m.get("confidence_intervals") or {}
    if not isinstance(ci, dict):
        raise _bad(path, "confidence_intervals", "an object", ci)
    plots = m.get("plots") or {}
    if not isinstance(plots, dict):
        raise _bad(path, "plots", "an object of figure names to file names", plots)
    for key, value in plots.items():
        if key == "overlays":  # segmentation: figures in the overlays/ sub-folder
            if not isinstance(value, list) or not all(_is_file_name(v) for v in value):
                raise _bad(path, "plots.overlays", "a list of file names in overlays/", value)
            continue
        ok = isinstance(value, str) if key == "note" else _is_file_name(value)
        if value is not None and not ok:
            raise _bad(path, f"plots.{key}", "null or a file name in the evaluation folder",
                       value)
    cal = m.get("calibration") or {}
    if not isinstance(cal, dict):
        raise _bad(path, "calibration", "an object", cal)
    for key in ("ece", "brier"):
        if cal.get(key) is not None and not _is_rate(cal[key]):
            raise _bad(path, f"calibration.{key}", "null or a number from 0 to 1", cal[key])
    for key in TASKS:  # the second task's block: size or age
        if m.get(key):
            mm.check_size_block(path, m[key], _bad, key)
    if m.get("task", "classify") not in ("classify", "segment"):
        raise _bad(path, "task", "classify or segment", m.get("task"))
    if m.get("task") == "segment":
        _check_pixels(path, m.get("pixels"))


PIXEL_KEYS = ("iou", "f1", "precision", "recall", "mcc")


def _check_pixels(path: Path, px) -> None:
    """The pixel and object scores of a segmentation evaluation."""
    if not isinstance(px, dict) or not isinstance(px.get("overall"), dict):
        raise _bad(path, "pixels", "an object with the overall pixel scores", px)
    blocks = [("pixels.overall", px["overall"])]
    for part in ("regions", "scenes"):
        group = px.get(part) or {}
        if not isinstance(group, dict):
            raise _bad(path, f"pixels.{part}", "an object of names to pixel scores", group)
        blocks += [(f"pixels.{part}.{k}", v) for k, v in group.items()]
    for name, b in blocks:
        if not isinstance(b, dict) or not _is_count(b.get("n_images")):
            raise _bad(path, f"{name}.n_images", "a whole number of images",
                       b.get("n_images") if isinstance(b, dict) else b)
        for key in PIXEL_KEYS:
            v = b.get(key)
            ok = v is None or (is_number(v) and (-1 <= v <= 1 if key == "mcc" else 0 <= v <= 1))
            if not ok:
                raise _bad(path, f"{name}.{key}", "null or a score from 0 to 1", v)


def _check_record(path: Path, meta: dict) -> None:
    """The training record that the model card and dataset section show (not needed to run
    the model, so not part of the model-folder contract)."""
    data = meta.get("data") or {}
    if not isinstance(data, dict):
        raise _bad(path, "data", "an object", data)
    for part in ("train", "val", "test"):
        counts = data.get(part) or {}
        if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
            raise _bad(path, f"data.{part}", "an object of class names to tile counts", counts)
    for key in ("training", "versions"):
        if not isinstance(meta.get(key) or {}, dict):
            raise _bad(path, key, "an object", meta.get(key))
    if meta.get("best_epoch") is not None and not _is_count(meta["best_epoch"]):
        raise _bad(path, "best_epoch", "null or a whole number", meta["best_epoch"])


def _read_predictions(path: Path, segment: bool = False) -> list[dict]:
    """predictions.csv: every row with a path, a probability from 0 to 1 and an outcome (a
    segmentation evaluation's ambiguous windows have none and are left out)."""
    codes = {code for code, _ in OUTCOMES} | ({""} if segment else set())
    rows = []
    for line, row in _read_rows(path, ("path", "probability", "outcome")):
        where = f"{path}: line {line}"
        if not row["path"]:
            raise DataError(f"{where}: column path is empty")
        try:
            p = float(row["probability"])
        except (TypeError, ValueError):
            p = math.nan
        if not 0 <= p <= 1:
            raise DataError(f"{where}: column probability must be a number from 0 to 1, got "
                            f"{_shown(row['probability'])}")
        if row["outcome"] not in codes:
            raise DataError(f"{where}: column outcome must be one of {', '.join(sorted(codes))}"
                            f", got {_shown(row['outcome'])}")
        if row["outcome"]:
            rows.append(row)
    return rows


def _check_history(path: Path, rows: list[tuple[int, dict]]) -> list[dict]:
    """history.csv: a number (or an empty cell) in every column of every row."""
    for line, row in rows:
        if None in row or None in row.values():
            raise DataError(f"{path}: line {line}: not as many cells as columns in the header")
        for column, value in row.items():
            try:
                if value:
                    float(value)
            except ValueError:
                raise DataError(f"{path}: line {line}: column {column} must be a number, got "
                                f"{_shown(value)}") from None
    return [row for _, row in rows]


def _read_cams(path: Path) -> list[dict]:
    rows = []
    for line, row in _read_rows(path, ("path",)):
        overlay = row.get("overlay_png")
        if overlay and not _is_file_name(overlay):
            raise DataError(f"{path}: line {line}: column overlay_png must be a file name in "
                            f"the explain folder, got {_shown(overlay)}")
        rows.append(row)
    return rows


def _check_localisation(path: Path, loc) -> None:
    if not isinstance(loc, dict):
        raise DataError(f"{path}: not written by `slidewatch explain`")
    groups = loc.get("by_outcome") or {}
    if not isinstance(groups, dict):
        raise _bad(path, "by_outcome", "an object of outcomes to statistics", groups)
    for group, stats in groups.items():
        if not isinstance(stats, dict):
            raise _bad(path, f"by_outcome.{group}", "an object of statistics", stats)
        for key, st in stats.items():
            if st is None:
                continue
            if not (isinstance(st, dict) and all(st.get(k) is None or is_number(st[k])
                                                 for k in ("mean", "std"))
                    and _is_count(st.get("n", 0))):
                raise _bad(path, f"by_outcome.{group}.{key}", "null or {mean, std, n} numbers",
                           st)
    ref = loc.get("uniform_reference") or {}
    if not isinstance(ref, dict) or not all(
            ref.get(k.replace("_share", "")) is None or is_number(ref[k.replace("_share", "")])
            for k in LOC_KEYS[3:]):
        raise _bad(path, "uniform_reference", "an object of numbers", ref)


def _check_dirs(model_dir: Path, eval_dir: Path, explain_dir: Path | None) -> None:
    for flag, folder in (("MODEL_DIR", model_dir), ("--eval", eval_dir),
                         ("--explain", explain_dir)):
        if folder is not None and not folder.is_dir():
            raise DataError(f"{folder}: {flag} folder not found")


# ----------------------------------------------------------------------------- HTML bits


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _e(value)
    return "n/a" if v != v else f"{v:.{digits}f}"


def _ci(block: dict, key: str) -> str:
    ci = (block.get("ci95") or {}).get(key)
    value = _num(block.get(key))
    return f"{value} [{_num(ci[0])}, {_num(ci[1])}]" if ci else value


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """``rows`` hold HTML already escaped; ``head`` is plain text."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _mime(data: bytes, where: Path) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    raise DataError(f"{where}: not a PNG or JPEG picture")


def _img(data: bytes, where: Path, alt: str, cls: str = "") -> str:
    uri = f"data:{_mime(data, where)};base64,{base64.b64encode(data).decode('ascii')}"
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} src="{uri}" alt="{_e(alt)}">'


def _img_file(path: Path, alt: str) -> str:
    return _img(_need(path).read_bytes(), path, alt)


def thumbnail_png(path: Path, scale: float | None = None) -> bytes:
    """A PNG of the tile's first three bands (or band 1 as grey), at most THUMB_MAX px."""
    import numpy as np
    from PIL import Image

    from slidewatch.data.readers import read_image, scale_to_unit

    unit = scale_to_unit(read_image(path), scale)
    rgb = unit[..., :3] if unit.shape[2] >= 3 else np.repeat(unit[..., :1], 3, axis=2)
    im = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    im.thumbnail((THUMB_MAX, THUMB_MAX))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- sections


def _metrics_section(m: dict) -> str:
    head = ["block", "n", "accuracy [95% CI]", "precision", "recall [95% CI]", "specificity",
            "F1 [95% CI]", "ROC-AUC", "PR-AUC"]
    rows = []
    for name, b in [("overall", m["overall"])] + sorted((m.get("regions") or {}).items()):
        rows.append([_e(name), _e(b.get("n")), _ci(b, "accuracy"), _num(b.get("precision")),
                     _ci(b, "recall"), _num(b.get("specificity")), _ci(b, "f1"),
                     _num(b.get("roc_auc")), _num(b.get("pr_auc"))])
    ci = m.get("confidence_intervals") or {}
    how = "; ".join(f"{k}: {v}" for k, v in ci.items() if k != "level")
    return (f"<h2>Metrics</h2><p>Threshold {_num(m.get('threshold'), 4)} "
            f"({_e(m.get('threshold_source', 'n/a'))}); positive class "
            f"{_e(m.get('positive_class', ''))}.</p>{_table(head, rows)}"
            f'<p class="note">95% intervals: {_e(how)}</p>')


def _pixels_section(m: dict, eval_dir: Path, cams: dict[str, dict],
                    explain_dir: Path | None) -> str:
    """A segmentation evaluation: pixel and object scores, then the best and worst images
    (probability, truth, prediction) with their Grad-CAM when they were explained."""
    px = m.get("pixels")
    if m.get("task") != "segment" or not px:
        return ""
    head = ["block", "images", "IoU [95% CI]", "F1 [95% CI]", "precision", "recall", "MCC",
            "objects found", "object precision"]
    rows = []
    for name, b in [("overall", px["overall"])] + sorted((px.get("regions") or {}).items()):
        o = b.get("objects") or {}
        rows.append([_e(name), _e(b.get("n_images")), _ci(b, "iou"), _ci(b, "f1"),
                     _num(b.get("precision")), _num(b.get("recall")), _num(b.get("mcc")),
                     f"{_e(o.get('found', ''))} / {_e(o.get('true', ''))}",
                     _num(o.get("precision"))])
    sizes = (px["overall"].get("objects") or {}).get("by_size") or []
    size_rows = [[_e(r.get("size_class", k)), _e(r.get("true")), _e(r.get("found")),
                  _num(r.get("recall"))] for k, r in enumerate(sizes)]
    rule = (px["overall"].get("objects") or {}).get("match_rule", "")
    by_stem = {Path(r["path"]).stem: r for r in cams.values()}
    cards = []
    for name in (m.get("plots") or {}).get("overlays") or []:
        fig = _img_file(eval_dir / "overlays" / name, "probability, truth, prediction")
        stem = name.split("__", 1)[-1].rsplit(".", 1)[0]
        cam = by_stem.get(stem)
        extra = ""
        if cam is not None and explain_dir is not None and cam.get("overlay_png"):
            extra = _img_file(explain_dir / cam["overlay_png"], "Grad-CAM of the prediction")
        cards.append(f'<div class="seg">{fig}{extra}<div class="path">{_e(name)}</div></div>')
    return (f"<h2>Pixels and objects</h2>{_table(head, rows)}"
            f'<p class="note">Pooled over pixels; 95% intervals by bootstrap over images; '
            f"objects: a landslide is found when a predicted object overlaps it with "
            f"{_e(rule)}.</p>"
            + (_table(["size class", "landslides", "found", "recall"], size_rows)
               if size_rows else "")
            + "<h3>Best and worst images</h3><p>Probability, truth, prediction (green found, "
            "red false alarm, blue missed), then the Grad-CAM of the predicted region when "
            f"explained.</p><div>{''.join(cards) or '<p class=note>none</p>'}</div>")


def _figures_section(m: dict, eval_dir: Path) -> str:
    plots = m.get("plots") or {"confusion_matrix": "confusion_matrix.png"}
    imgs = [_img_file(eval_dir / plots[k], k.replace("_", " "))
            for k in ("confusion_matrix", "roc", "pr", "reliability") if plots.get(k)]
    note = f'<p class="note">{_e(plots["note"])}</p>' if plots.get("note") else ""
    cal = m.get("calibration") or {}
    if cal.get("ece") is not None:
        note += (f'<p class="note">Calibration of the probabilities: expected calibration '
                 f'error {_num(cal["ece"])}, Brier score {_num(cal["brier"])} '
                 f'({len(cal.get("bins", []))} equal-width bins, {cal.get("n")} tiles); '
                 'the reliability diagram plots the observed landslide share per bin.</p>')
    return f'<h2>Figures</h2><div class="figs">{"".join(imgs)}</div>{note}'


def _training_section(model_dir: Path) -> str:
    curves, hist = model_dir / "curves.png", model_dir / "history.csv"
    parts = ["<h2>Training</h2>"]
    parts.append(f'<div class="figs">{_img_file(curves, "training curves")}</div>'
                 if curves.is_file() else f'<p class="note">{_e(curves)}: not found</p>')
    if hist.is_file():
        rows = _check_history(hist, _read_rows(hist, ()))
        cols = [c for c in (rows[0].keys() if rows else []) if c != "lr"]
        parts.append(_table(cols, [[_num(r[c], 4) if c not in ("epoch", "phase", "phase_epoch")
                                    else _e(r[c]) for c in cols] for r in rows], 0))
    else:
        parts.append(f'<p class="note">{_e(hist)}: not found</p>')
    return "".join(parts)


def _card(row: dict, cams: dict[str, dict], explain_dir: Path | None,
          scale: float | None) -> str:
    path = Path(row["path"])
    try:
        thumb = _img(thumbnail_png(path, scale), path, "tile")
    except (OSError, DataError, ValueError) as exc:
        thumb = f'<span class="note">tile not shown: {_e(exc)}</span>'
    cam = cams.get(_key(row["path"]))
    overlay = ""
    if cam is not None and explain_dir is not None and cam.get("overlay_png"):
        overlay = _img_file(explain_dir / cam["overlay_png"], "Grad-CAM overlay")
    if cam is not None and cam.get("attribution"):
        overlay += mm.attribution_bars(cam["attribution"], _e, _num)
    return (f'<div class="card">{thumb} {overlay}<div>p = {_num(row.get("probability"))}, '
            f'{_e(row.get("true_label", ""))} ({_e(row.get("region", ""))})</div>'
            f'<div class="path">{_e(row["path"])}</div></div>')


def _key(path: str) -> str:
    return str(Path(path).resolve())


def _galleries_section(preds: list[dict], cams: dict[str, dict], explain_dir: Path | None,
                       per_gallery: int, scale: float | None) -> str:
    parts = [f"<h2>Galleries</h2><p>Up to {per_gallery} tiles each, most confident first"
             f"{'; Grad-CAM overlays beside tiles that were explained' if cams else ''}.</p>"]
    for code, title in OUTCOMES:
        rows = [r for r in preds if r.get("outcome") == code]
        positive = code in ("TP", "FP")
        rows.sort(key=lambda r: float(r["probability"]), reverse=positive)
        cards = "".join(_card(r, cams, explain_dir, scale) for r in rows[:per_gallery])
        parts.append(f'<h3 id="{code}">{_e(title)} ({code}): {len(rows)}</h3>'
                     f'<div class="gallery">{cards or "<p class=note>none</p>"}</div>')
    return "".join(parts)


def _stat(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{_num(s['mean'])} &plusmn; {_num(s['std'])} (n={_e(s['n'])})"


def _localisation_section(loc: dict) -> str:
    ref = loc.get("uniform_reference") or {}
    rows = [[_e(group)] + [_stat(stats.get(k)) for k in LOC_KEYS]
            for group, stats in (loc.get("by_outcome") or {}).items()]
    rows.append([_e("uniform map (reference)"), "", "", ""]
                + [_num(ref.get(k.replace("_share", ""))) for k in LOC_KEYS[3:]])
    return (f"<h2>Localisation</h2><p>{_e(loc.get('method', ''))} at layer "
            f"{_e(loc.get('target_layer', ''))}; border band {_e(loc.get('band', ''))} of the "
            "tile size. Energy inside the mask, pointing game and IoU count landslide tiles "
            "with a mask only; compare border and corner shares with the uniform map.</p>"
            + _table(["outcome"] + list(LOC_KEYS), rows))


def _dataset_section(m: dict, meta: dict) -> str:
    blocks = [("overall", m["overall"])] + sorted((m.get("regions") or {}).items())
    classes = sorted({c for _, b in blocks for c in (b.get("counts") or {})})
    rows = [[_e(n)] + [_e((b.get("counts") or {}).get(c, 0)) for c in classes] + [_e(b["n"])]
            for n, b in blocks]
    data = meta.get("data") or {}
    split_rows = [[_e(part)] + [_e((data.get(part) or {}).get(c, 0)) for c in meta["classes"]]
                  for part in ("train", "val", "test")]
    extra = [[_e(k), _e(data[k])] for k in ("paths", "split_by", "train_regions",
                                            "holdout_regions") if k in data]
    return ("<h2>Dataset</h2><h3>Evaluated tiles</h3>"
            + _table(["block"] + classes + ["total"], rows)
            + "<h3>Training split</h3>" + _table(["part"] + list(meta["classes"]), split_rows)
            + _table(["setting", "value"], extra, 2))


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _model_card(meta: dict, m: dict) -> str:
    src = meta.get("threshold_source")
    rows = [("architecture", meta.get("architecture")), ("classes", meta.get("classes")),
            ("positive class", meta.get("positive_class")),
            ("input size", meta.get("input_size")), ("bands", meta.get("in_chans")),
            ("grayscale", meta.get("grayscale")), ("scale", meta.get("scale") or "by dtype"),
            ("normalisation mean", meta.get("mean")), ("normalisation std", meta.get("std")),
            ("threshold (model)", meta.get("threshold")),
            ("threshold source (model)", json.dumps(src) if src else "default / training"),
            ("threshold (this evaluation)", f"{m.get('threshold')} ({m.get('threshold_source')})"),
            ("weight source", meta.get("weights_source")),
            ("best epoch", meta.get("best_epoch")), ("created", meta.get("created"))]
    if meta.get("standardize"):  # written only when a rule is set
        rows.insert(6, ("standardisation", f"{meta['standardize']} (per band: the whole "
                                           "source image's mean and std)"))
    rows += [(f"version {k}", v) for k, v in (meta.get("versions") or {}).items()]
    rows += [(f"training.{k}", v) for k, v in _flatten(meta.get("training") or {})]
    return "<h2>Model card</h2>" + _table(["field", "value"], [[_e(k), _e(v)] for k, v in rows], 2)


# ----------------------------------------------------------------------------- the report


def build_report(model_dir: str | Path, eval_dir: str | Path,
                 explain_dir: str | Path | None = None, per_gallery: int = 8) -> str:
    """The HTML page (a string) of ``model_dir`` evaluated in ``eval_dir``."""
    if per_gallery < 0:
        raise ConfigError(f"--per-gallery: must be >= 0, got {per_gallery}")
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    explain_dir = Path(explain_dir) if explain_dir is not None else None
    _check_dirs(model_dir, eval_dir, explain_dir)
    meta = _read_json(model_dir / "slidewatch.json")
    task = ModelMeta.from_json(meta, str(model_dir / "slidewatch.json")).task
    _check_record(model_dir / "slidewatch.json", meta)
    m = _read_json(eval_dir / "metrics.json")
    _check_metrics(eval_dir / "metrics.json", m)
    if m.get("task", "classify") != task:
        raise DataError(f"{eval_dir / 'metrics.json'}: an evaluation of a "
                        f"{m.get('task', 'classify')} model, but {model_dir} is a {task} model")
    preds = _read_predictions(eval_dir / "predictions.csv", task == "segment")
    if task == "segment":  # the galleries show whole images, not windows of scenes
        preds = [r for r in preds if r.get("tile") in (None, Path(r["path"]).stem)]
    cams, loc = {}, None
    if explain_dir is not None:
        cams = {_key(r["path"]): r for r in _read_cams(explain_dir / "cams.csv")}
        loc = _read_json(explain_dir / "localisation.json")
        _check_localisation(explain_dir / "localisation.json", loc)
        mm.attach_attributions(cams, explain_dir, _key, _bad)
    title = f"slidewatch report: {meta.get('architecture', '')} ({model_dir.name})"
    body = [f"<h1>{_e(title)}</h1><p>Model {_e(model_dir)}; evaluation {_e(eval_dir)}"
            f"{'; explanations ' + _e(explain_dir) if explain_dir else ''}.</p>",
            _metrics_section(m), _pixels_section(m, eval_dir, cams, explain_dir),
            mm.size_section(m, eval_dir, _e, _num, _table, _img_file),
            _figures_section(m, eval_dir), _training_section(model_dir),
            _galleries_section(preds, cams, explain_dir, per_gallery, meta.get("scale")),
            _localisation_section(loc) if loc is not None else "",
            _dataset_section(m, meta), mm.inputs_section(meta, _e, _num, _table),
            _model_card(meta, m)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{CSS}{mm.css_for(cams)}</style></head><body>"
            f"{''.join(body)}<script>{SCRIPT}</script></body></html>\n")


def write_report(model_dir: str | Path, eval_dir: str | Path, out: str | Path,
                 explain_dir: str | Path | None = None, per_gallery: int = 8) -> Path:
    """Build the report and write it atomically to ``out``; returns ``out``."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give an HTML file name")
    atomic_write_text(out, build_report(model_dir, eval_dir, explain_dir, per_gallery))
    return out
