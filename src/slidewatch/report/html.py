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
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_write_text
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


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(_need(path), newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


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


def _figures_section(m: dict, eval_dir: Path) -> str:
    plots = m.get("plots") or {"confusion_matrix": "confusion_matrix.png"}
    imgs = [_img_file(eval_dir / plots[k], k.replace("_", " "))
            for k in ("confusion_matrix", "roc", "pr") if plots.get(k)]
    note = f'<p class="note">{_e(plots["note"])}</p>' if plots.get("note") else ""
    return f'<h2>Figures</h2><div class="figs">{"".join(imgs)}</div>{note}'


def _training_section(model_dir: Path) -> str:
    curves, hist = model_dir / "curves.png", model_dir / "history.csv"
    parts = ["<h2>Training</h2>"]
    parts.append(f'<div class="figs">{_img_file(curves, "training curves")}</div>'
                 if curves.is_file() else f'<p class="note">{_e(curves)}: not found</p>')
    if hist.is_file():
        rows = _read_csv(hist)
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
    m = _read_json(eval_dir / "metrics.json")
    if "overall" not in m or "classes" not in meta:
        raise DataError(f"{eval_dir / 'metrics.json'}: not written by `slidewatch evaluate`"
                        if "overall" not in m else
                        f"{model_dir / 'slidewatch.json'}: not a slidewatch model description")
    preds = _read_csv(eval_dir / "predictions.csv")
    cams, loc = {}, None
    if explain_dir is not None:
        cams = {_key(r["path"]): r for r in _read_csv(explain_dir / "cams.csv")}
        loc = _read_json(explain_dir / "localisation.json")
        mm.attach_attributions(cams, explain_dir, _key)
    title = f"slidewatch report: {meta.get('architecture', '')} ({model_dir.name})"
    body = [f"<h1>{_e(title)}</h1><p>Model {_e(model_dir)}; evaluation {_e(eval_dir)}"
            f"{'; explanations ' + _e(explain_dir) if explain_dir else ''}.</p>",
            _metrics_section(m), mm.size_section(m, eval_dir, _e, _num, _table, _img_file),
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
