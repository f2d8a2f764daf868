"""HTML pieces of ``slidewatch report`` for multi-modal models: the size-class table (confusion
matrix, macro-F1 beside the majority baseline), the model's extra inputs, and each explained
tile's tabular attributions as bars beside its Grad-CAM overlay. Plain CSS bars (no script, no
external file); every text is escaped by the caller's ``_e``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from slidewatch.errors import DataError
from slidewatch.evaluation.sizes import second_task

CSS = """
.attr{margin-top:.3em;font-size:.95em}.attr .r{display:flex;align-items:center;gap:.3em}
.attr .n{width:40%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.attr .b{flex:1;display:flex;height:.8em;background:#f4f4f4}
.attr .h{width:50%;display:flex}.attr .neg{justify-content:flex-end}
.attr .p{background:#d9534f}.attr .m{background:#428bca}
.attr .v{width:3.6em;text-align:right;font-variant-numeric:tabular-nums}
"""


def css_for(cams: dict[str, dict]) -> str:
    """The bars' CSS when some tile has attributions (plain reports stay as they were)."""
    return CSS if any(c.get("attribution") for c in cams.values()) else ""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rates(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(x is None or (_number(x) and 0 <= x <= 1)
                                                        for x in v)


def check_size_block(path: Path, block, bad, task: str = "size") -> None:
    """metrics.json's ``size`` (or ``age``: ``task``) block as ``slidewatch evaluate`` writes
    it; ``bad(path, field, rule, value)`` makes the error."""
    if not isinstance(block, dict):
        raise bad(path, task, "an object", block)
    names = block.get("names")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str)
                                                                  for n in names)):
        raise bad(path, f"{task}.names", "a list of two or more class names", names)
    n = block.get("n")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise bad(path, f"{task}.n", "a whole number >= 0", n)
    for key in ("source", "unit", "note"):
        if block.get(key) is not None and not isinstance(block[key], str):
            raise bad(path, f"{task}.{key}", "a string", block[key])
    if not n:
        return
    k = len(names)
    cm = block.get("confusion")
    if not (isinstance(cm, list) and len(cm) == k and all(
            isinstance(r, list) and len(r) == k and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in r)
            for r in cm)):
        raise bad(path, f"{task}.confusion", f"a {k} x {k} table of whole numbers", cm)
    for key in ("precision", "recall", "f1"):
        if not _rates(block.get(key), k):
            raise bad(path, f"{task}.{key}", f"a list of {k} numbers from 0 to 1", block.get(key))
    for key in ("macro_f1", "accuracy"):
        if not _rates([block.get(key)], 1):
            raise bad(path, f"{task}.{key}", "a number from 0 to 1", block.get(key))
    for base in ("baseline", "baseline_evaluated_majority"):
        b = block.get(base)
        if b is None:
            continue
        if not (isinstance(b, dict) and b.get("class") in names
                and _rates([b.get("macro_f1"), b.get("accuracy")], 2)):
            raise bad(path, f"{task}.{base}", "an object with class, macro_f1 and accuracy", b)


def attach_attributions(cams: dict[str, dict], explain_dir: Path | None, key,
                        bad=None) -> None:
    """Add each image's attribution entry (``attributions.json``, when the explain folder has
    one) to its ``cams.csv`` row under ``"attribution"``; a tile without a CAM row gets one.
    Every entry is checked (``bad(path, field, rule, value)`` makes the error)."""
    if explain_dir is None:
        return
    path = explain_dir / "attributions.json"
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = list(doc["images"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not an attributions file ({exc})") from None
    for i, entry in enumerate(entries):
        _check_entry(path, f"images[{i}]", entry, bad or _bad)
        cams.setdefault(key(entry["path"]), {"path": entry["path"]})["attribution"] = entry


def _bad(path: Path, name: str, rule: str, value) -> DataError:
    return DataError(f"{path}: field {name} must be {rule}, got {value!r}"[:300])


def _check_entry(path: Path, name: str, entry, bad) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
            or not entry["path"]:
        raise bad(path, name, "an object with the image's path", entry)
    for key in ("probability", "baseline_probability"):
        if not _rates([entry.get(key)], 1):
            raise bad(path, f"{name}.{key}", "null or a number from 0 to 1", entry.get(key))
    feats = entry.get("features") or []
    if not isinstance(feats, list):
        raise bad(path, f"{name}.features", "a list", feats)
    for j, f in enumerate(feats):
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and _number(f.get("attribution"))):
            raise bad(path, f"{name}.features[{j}]", "an object with a name and a finite "
                      "attribution", f)


def attribution_bars(entry: dict, e, num) -> str:
    """Bars of the tabular attributions (red raises the landslide probability, blue lowers
    it), scaled to the largest one, with each input's raw value."""
    feats = sorted(entry.get("features") or [], key=lambda f: -abs(float(f["attribution"])))
    if not feats:
        return ""
    top = max(abs(float(f["attribution"])) for f in feats) or 1.0
    lines = []
    for f in feats:
        a = float(f["attribution"])
        width = f"{50 * abs(a) / top:.1f}%"
        bar = f'<span class="{"p" if a >= 0 else "m"}" style="width:{width}"></span>'
        left = f'<span class="h neg">{bar if a < 0 else ""}</span>'
        right = f'<span class="h">{bar if a >= 0 else ""}</span>'
        raw = f.get("raw", "")
        label = f"{f['name']} = {raw}" if raw != "" else f"{f['name']} (imputed)"
        lines.append(f'<div class="r"><span class="n" title="{e(label)}">{e(label)}</span>'
                     f'<span class="b">{left}{right}</span>'
                     f'<span class="v">{num(a, 3)}</span></div>')
    return (f'<div class="attr"><div>tabular attribution (p {num(entry.get("probability"))}'
            f' vs baseline row {num(entry.get("baseline_probability"))})</div>'
            + "".join(lines) + "</div>")


def size_section(m: dict, eval_dir: Path, e, num, table, img_file) -> str:
    """Size- (or age-) class confusion matrix and scores from metrics.json's ``size``
    (``age``) block."""
    found = second_task(m)
    if not found:
        return ""
    task, block = found
    parts = [f"<h2>{task.capitalize()} classes</h2>"]
    if not block.get("n"):
        return parts[0] + f'<p class="note">{e(block.get("note", "no labelled tiles"))}</p>'
    names = block["names"]
    rows = [[e(f"true {n}")] + [e(v) for v in row] for n, row in zip(names, block["confusion"])]
    parts.append(table(["rows: true, columns: predicted"] + list(names), rows))
    scores = [[e(n), num(p), num(r), num(f)] for n, p, r, f in
              zip(names, block["precision"], block["recall"], block["f1"])]
    parts.append(table(["class", "precision", "recall", "F1"], scores))
    base = block.get("baseline")
    line = (f"Macro-F1 {num(block['macro_f1'])}, accuracy {num(block['accuracy'])} over "
            f"{e(block['n'])} landslide tiles with a known {task} ({e(block.get('source'))}"
            f"{', ' + e(block['unit']) if block.get('unit') else ''}).")
    if base:
        line += (f" Always predicting the most common training class ({e(base['class'])}): "
                 f"macro-F1 {num(base['macro_f1'])}, accuracy {num(base['accuracy'])}.")
    top = block.get("baseline_evaluated_majority")
    if top:
        line += (f" Always the most common class of these tiles ({e(top['class'])}, known only "
                 f"afterwards): macro-F1 {num(top['macro_f1'])}.")
    parts.append(f"<p>{line}</p>")
    figure = (m.get("plots") or {}).get(f"{task}_confusion_matrix")
    if figure:
        parts.append('<div class="figs">'
                     f'{img_file(eval_dir / figure, f"{task} confusion")}</div>')
    return "".join(parts)


def inputs_section(meta: dict, e, num, table) -> str:
    """The model's inputs beside the image: encoder statistics, terrain and size classes."""
    tab, aux, sizes, fusion = (meta.get(k) for k in ("tabular", "aux", "sizes", "fusion"))
    if not (tab or aux or sizes or fusion):
        return ""
    parts = ["<h2>Inputs beside the image</h2>"]
    age = (sizes or {}).get("source") == "age"
    if fusion:
        parts.append(f"<p>Fusion mode {e(fusion.get('mode'))}; "
                     f"{e(fusion.get('size_classes') or 'no')} "
                     f"{'age' if age else 'size'} classes.</p>")
    if tab:
        rows = [[e(c), num(s["mean"]), num(s["std"])] for c, s in tab["numeric"].items()]
        rows += [[e(c), e(f"{len(v['vocabulary']) - 1} categories"), e(f"fill {v['fill']}")]
                 for c, v in tab["categorical"].items()]
        parts.append(table(["column", "training mean / categories", "std / fill"], rows)
                     + f'<p class="note">Statistics from {e(tab.get("n_train"))} training rows; '
                       f'missing indicators: {e(", ".join(tab.get("indicators") or []) or "none")}'
                       "</p>")
    if aux:
        parts.append(f"<p>Terrain from a DEM as {e(aux.get('use'))}: "
                     f"{e(', '.join(aux.get('names') or []))}.</p>")
    if sizes:
        edges = sizes.get("edges")
        what = "Age classes" if age else "Size classes"
        source = f"column {sizes.get('column')}" if age else sizes.get("source")
        parts.append(f"<p>{what} {e(', '.join(sizes.get('names') or []))} from "
                     f"{e(source)}"
                     f"{' (edges ' + e(edges) + ' ' + e(sizes.get('unit')) + ')' if edges else ''}"
                     f"; training counts {e(sizes.get('train_counts'))}.</p>")
    return "".join(parts)
