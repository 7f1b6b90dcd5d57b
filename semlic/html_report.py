"""One static HTML page of a run's results, readable offline (``semlic report``; the aggregate stage writes it).

``build_report(results_dir, out_dir, ...)`` reads the aggregate stage's files (rd.parquet with every
row, bd.parquet) and writes:

====================================================  =========================================================
``out_dir/index.html``                                the page: per data set the rate-distortion plots (inline
                                                      SVG: PSNR-RGB, MS-SSIM, LPIPS when measured; bpp of the
                                                      whole file), the BD table against the anchor (HEVC 4:4:4),
                                                      the mean point of each method, the layer shares of every
                                                      method whose files have more than one layer, the
                                                      segmentation scores, and the image viewer; its script and
                                                      data are inline, nothing is fetched from a network
``out_dir/images/<dataset>/<image>/original.png``     the viewer's pictures, beside the page: the original and
``out_dir/images/<dataset>/<image>/<method>_<q>.png`` every coded file of that image decoded from its bytes
                                                      (PNG, lossless)
====================================================  =========================================================

The viewer: pick a data set, an image and a target bpp (a slider on a log scale); it shows the
original and, for every method, the decoded file whose bpp is nearest the target (by the ratio of
the rates, as ``semlic compare``), each captioned with its quality, bpp and PSNR-RGB; a zoom
(1x-8x, pixels kept sharp) whose scrolling moves every picture together. The viewer's images are
``viewer_images`` evenly spaced images of each data set (:func:`semlic.code_stage.sample_images`);
their files are found under ``coded_dir/files/<dataset>/<method>/<image>_<quality>.<ext>`` (the
code stage's layout) and decoded as a user decodes them: ``.sem`` files with the models of
``models_dir`` (:func:`semlic.pillow.decode`), the classical codecs' files with Pillow. bpp is
every byte of the file over the image's pixels; PSNR-RGB is measured again against the original.
A file that cannot be decoded (its models missing, say) is left out of the viewer and named on
the page.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from .errors import ConfigError, SemlicError
from .fileio import atomic_write_bytes
from .reporting import (bd_table, fmt, layer_share_columns, load_rows, rate_miou_figure, rd_curves, rd_figure,
                        segmentation_scores)

#: The commands this module adds to ``semlic`` (read by semlic.cli without importing it).
COMMANDS = {
    "report": "one offline HTML page of a run's results: RD plots, BD table, layer shares, segmentation, an image viewer",
}

log = logging.getLogger(__name__)

PAGE = "index.html"
ORIGINAL = "original"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


# --- tables -------------------------------------------------------------------------------------
def _cell(value, digits: int = 3, signed: bool = False) -> str:

    return html.escape(fmt(value, digits, signed))


def html_table(frame: pd.DataFrame, digits: dict | None = None, signed: Sequence[str] = (),
               css: str = "") -> str:
    """``frame`` as an HTML table (NaN as a dash, numbers right-aligned)."""
    digits, signed = digits or {}, set(signed)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row):
            numeric = isinstance(value, (int, float, np.integer, np.floating))
            cells.append(f"<td{' class=num' if numeric else ''}>{_cell(value, digits.get(column, 3), column in signed)}"
                         "</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _svg(curves: pd.DataFrame, dataset: str, anchor: str) -> str:
    text = rd_figure(curves, dataset, anchor=anchor, fmt="svg").decode()
    return text[text.index("<svg"):]    # drop the XML declaration and doctype: inline in HTML


def machines_section(machines_dir: str | os.PathLike | None, dataset: str) -> list[str]:
    """The rate-mIoU figure and table of one data set from the machines stage's folder (none there: [])."""
    if machines_dir is None or not (Path(machines_dir) / "summary.csv").is_file():
        return []
    summary = pd.read_csv(Path(machines_dir) / "summary.csv", dtype={"quality": str})
    table = pd.read_csv(Path(machines_dir) / "machines.csv")
    summary, table = summary[summary["dataset"] == dataset], table[table["dataset"] == dataset]
    if summary.empty:
        return []
    svg = rate_miou_figure(summary, dataset, fmt="svg").decode()
    columns = ["method", "output", "points", "bpp_min", "miou_best", "bd_rate_miou_pct", "bd_note", "bpp_90pct",
               "bpp_95pct"]
    shown = table[columns].rename(columns={"bd_rate_miou_pct": "BD-rate on mIoU (%)", "bpp_90pct": "bpp to 90 %",
                                           "bpp_95pct": "bpp to 95 %"})
    ceiling = table["original_miou"].iloc[0] if len(table) else float("nan")
    return [f"<h3>Segmentation at the receiver (coding for machines): mIoU against the bits it reads; PSPNet on the "
            f"uncompressed images {ceiling:.3f}</h3>", f'<div class="plot">{svg[svg.index("<svg"):]}</div>',
            "<p>BD-rate on mIoU against HEVC 4:4:4 + PSPNet (negative: fewer bits for the same mIoU); bpp to "
            "reach 90 % and 95 % of the uncompressed mIoU.</p>",
            html_table(shown, {"BD-rate on mIoU (%)": 1, "bpp to 90 %": 4, "bpp to 95 %": 4, "bpp_min": 4},
                       ("BD-rate on mIoU (%)",))]


# --- the viewer's pictures ------------------------------------------------------------------------
def find_original(prepared_dir: Path | None, dataset: str, image_id: str) -> Path | None:
    """The image ``image_id`` of ``dataset`` under a prepared tree (``<dataset>/<split>/images/``) or
    directly in ``prepared_dir`` (a folder of images)."""
    if prepared_dir is None:
        return None
    for pattern in (f"{dataset}/*/images/{image_id}.*", f"{image_id}.*"):
        for path in sorted(prepared_dir.glob(pattern)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                return path
    return None


def coded_files(coded_dir: Path, dataset: str, image_id: str) -> dict[str, list[tuple[str, Path]]]:
    """{method: [(quality label, file)]} of the code stage's files of one image."""
    found: dict[str, list[tuple[str, Path]]] = {}
    root = coded_dir / "files" / dataset
    for method_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        for path in sorted(method_dir.iterdir()):
            stem, _, label = path.stem.rpartition("_")
            if path.is_file() and stem == image_id and label:
                found.setdefault(method_dir.name, []).append((label, path))
    return found


def decode_file(path: Path, models_dir: Path | None, device: str = "cpu") -> np.ndarray:
    """A coded file decoded from its bytes: ``.sem`` by its method with the models of ``models_dir``,
    anything else by Pillow (with the codec plugins semlic registers)."""
    from .imageio import load_image

    if path.suffix == ".sem":
        from .pillow import decode

        return decode(path.read_bytes(), models_dir, device)
    return load_image(path)


def _png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buffer, format="PNG", compress_level=6)
    atomic_write_bytes(path, buffer.getvalue())


def viewer_data(rows: pd.DataFrame, out_dir: Path, *, coded_dir: Path | None, prepared_dir: Path | None,
                models_dir: Path | None, viewer_images: int, device: str = "cpu",
                progress: bool = True) -> tuple[dict, list[str]]:
    """Decode the viewer's files, write their PNGs under ``out_dir/images``; return the viewer's
    data ({dataset: [{id, width, height, original, methods: {name: [{quality, bpp, psnr, src}]}}]})
    and notes on what was left out."""
    from tqdm.auto import tqdm

    from .code_stage import sample_images

    data: dict[str, list[dict]] = {}
    notes: list[str] = []
    if coded_dir is None or viewer_images <= 0:
        return data, notes
    todo = []
    for dataset in sorted(rows["dataset"].unique()):
        ids = sorted(rows.loc[rows["dataset"] == dataset, "image_id"].unique())
        for image_id in sample_images(ids, viewer_images):
            original = find_original(prepared_dir, dataset, image_id)
            if original is None:
                notes.append(f"{dataset}/{image_id}: original image not found under {prepared_dir}")
                continue
            todo.append((dataset, image_id, original, coded_files(coded_dir, dataset, image_id)))
    bar = tqdm(total=sum(len(f) for *_, files in todo for f in files.values()), desc="report: decode",
               unit="file", disable=not progress)
    from .imageio import load_image

    for dataset, image_id, original_path, files in todo:
        original = load_image(original_path)
        h, w = original.shape[:2]
        folder = out_dir / "images" / dataset / image_id
        _png(folder / f"{ORIGINAL}.png", original)
        entry = {"id": image_id, "width": w, "height": h,
                 "original": (folder / f"{ORIGINAL}.png").relative_to(out_dir).as_posix(), "methods": {}}
        for method, versions in files.items():
            points = []
            for label, path in versions:
                bar.update()
                try:
                    decoded = decode_file(path, models_dir, device)
                except SemlicError as exc:
                    notes.append(f"{dataset}/{image_id} {method} {label}: not decoded ({exc})")
                    continue
                if decoded.shape != original.shape:
                    notes.append(f"{dataset}/{image_id} {method} {label}: decoded {decoded.shape[1]}x"
                                 f"{decoded.shape[0]}, the image is {w}x{h}")
                    continue
                target = folder / f"{method}_{label}.png"
                _png(target, decoded)
                points.append({"quality": label, "bytes": path.stat().st_size,
                               "bpp": metrics.bpp(path.stat().st_size, h, w),
                               "psnr": round(float(metrics.psnr_rgb(original, decoded)), 4),
                               "src": target.relative_to(out_dir).as_posix()})
            if points:
                entry["methods"][method] = sorted(points, key=lambda p: p["bpp"])
        data.setdefault(dataset, []).append(entry)
    bar.close()
    return data, notes


# --- the page -----------------------------------------------------------------------------------
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:14px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:8px 24px 40px;max-width:1700px}
h2{border-bottom:2px solid #1f3b57;padding-bottom:3px;margin-top:30px}h3{margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff}th,td{border:1px solid #d0d4d9;padding:3px 8px}
th{background:#eef1f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plot svg{max-width:100%;height:auto;background:#fff}.notes{color:#8a4b00}
#viewer .controls{display:flex;flex-wrap:wrap;gap:18px;align-items:center;background:#fff;padding:10px;
border:1px solid #d0d4d9;position:sticky;top:0;z-index:2}
#viewer .controls input[type=range]{width:280px;vertical-align:middle}
#v-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--tile,300px),1fr));gap:12px;margin-top:12px}
#v-grid figure{margin:0;background:#fff;border:1px solid #d0d4d9;padding:6px}
#v-grid .frame{overflow:auto;max-height:70vh}#v-grid img{display:block;image-rendering:pixelated}
#v-grid figcaption{font-size:12.5px;margin-top:4px}#v-grid figcaption b{font-size:13.5px}
"""

SCRIPT = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const sel = (id) => document.getElementById(id);
  const dsSel = sel("v-dataset"), imSel = sel("v-image"), bpp = sel("v-bpp"), bppOut = sel("v-bpp-out");
  const zoom = sel("v-zoom"), grid = sel("v-grid");
  const datasets = Object.keys(data);
  if (!datasets.length) { grid.textContent = "No decoded images to show."; return; }
  for (const d of datasets) dsSel.add(new Option(d, d));
  function current() { return data[dsSel.value][imSel.selectedIndex]; }
  function fillImages() {
    imSel.length = 0;
    for (const im of data[dsSel.value]) imSel.add(new Option(im.id + " (" + im.width + "x" + im.height + ")", im.id));
    setRange();
  }
  function setRange() {
    const rates = [];
    for (const pts of Object.values(current().methods)) for (const p of pts) rates.push(p.bpp);
    const lo = Math.log10(Math.min(...rates)), hi = Math.log10(Math.max(...rates));
    bpp.min = lo.toFixed(4); bpp.max = hi.toFixed(4); bpp.step = "any";
    bpp.value = ((lo + hi) / 2).toFixed(4);
    render();
  }
  function nearest(points, target) {
    let best = null, dist = Infinity;
    for (const p of points) {
      const d = Math.abs(Math.log(p.bpp / target));
      if (d < dist) { dist = d; best = p; }
    }
    return best;
  }
  function tile(title, caption, src, im) {
    const fig = document.createElement("figure");
    const frame = document.createElement("div"); frame.className = "frame";
    const img = document.createElement("img");
    const z = Number(zoom.value);
    img.src = src; img.width = im.width * z; img.height = im.height * z; img.alt = title;
    frame.appendChild(img); fig.appendChild(frame);
    const cap = document.createElement("figcaption");
    const b = document.createElement("b"); b.textContent = title;
    cap.appendChild(b); cap.appendChild(document.createTextNode(caption));
    fig.appendChild(cap);
    frame.addEventListener("scroll", () => {
      for (const other of grid.querySelectorAll(".frame")) {
        if (other !== frame) { other.scrollLeft = frame.scrollLeft; other.scrollTop = frame.scrollTop; }
      }
    });
    return fig;
  }
  function render() {
    const im = current(), target = Math.pow(10, Number(bpp.value));
    bppOut.textContent = target.toFixed(3) + " bpp";
    grid.style.setProperty("--tile", Math.min(im.width * Number(zoom.value), 520) + "px");
    grid.replaceChildren(tile("original", " " + im.width + "x" + im.height, im.original, im));
    for (const [name, points] of Object.entries(im.methods)) {
      const p = nearest(points, target);
      const fig = tile(name, " q " + p.quality + ": " + p.bpp.toFixed(3) + " bpp, " + p.psnr.toFixed(2) + " dB",
                       p.src, im);
      fig.dataset.method = name; fig.dataset.bpp = p.bpp; fig.dataset.psnr = p.psnr;
      grid.appendChild(fig);
    }
  }
  dsSel.addEventListener("change", fillImages);
  imSel.addEventListener("change", setRange);
  bpp.addEventListener("input", render);
  zoom.addEventListener("change", render);
  fillImages();
})();
"""


def _page(title: str, subtitle: str, sections: list[str], viewer: dict, notes: list[str]) -> str:
    payload = json.dumps(viewer, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    zoom = "".join(f'<option value="{z}">{z}x</option>' for z in (1, 2, 4, 8))
    note_html = ("<h3>Left out of the viewer</h3><ul class=notes>" +
                 "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header><main>
{"".join(sections)}
<section id="viewer"><h2>Images</h2>
<p>The original and, for every method, its file nearest the target rate (every byte of the file over the
image's pixels), decoded from its bytes. Zoomed, scrolling one picture scrolls them all.</p>
<div class="controls">
<label>Data set <select id="v-dataset"></select></label>
<label>Image <select id="v-image"></select></label>
<label>Target <input type="range" id="v-bpp"> <output id="v-bpp-out"></output></label>
<label>Zoom <select id="v-zoom">{zoom}</select></label>
</div><div id="v-grid"></div>{note_html}</section>
</main>
<script id="viewer-data" type="application/json">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def build_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 coded_dir: str | os.PathLike | None = None,
                 prepared_dir: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None,
                 segments_dir: str | os.PathLike | None = None, machines_dir: str | os.PathLike | None = None,
                 viewer_images: int = 3, anchor: str = "hevc", device: str = "cpu",
                 title: str = "semlic: rate-distortion results", progress: bool = True) -> dict:
    """Write ``out_dir/index.html`` and the viewer's pictures (module docstring); return a summary
    {page, datasets, methods, viewer_images, viewer_files, notes}. ``machines_dir``: the machines
    stage's folder; where it holds a data set's task summary, the page shows its rate-mIoU figure
    and table (semlic.machines)."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    rd_path = results_dir / "rd.parquet"
    if not rd_path.is_file():
        raise ConfigError(f"report: {rd_path} not found: run the aggregate stage (or `semlic` aggregate) first")
    rows = load_rows(rd_path)
    if rows.empty:
        raise ConfigError(f"report: {rd_path} has no rows")
    curves = rd_curves(rows)
    bd_path = results_dir / "bd.parquet"
    bd = pd.read_parquet(bd_path) if bd_path.is_file() else bd_table(curves, anchor=anchor)
    anchor = str(bd["anchor"].iloc[0]) if len(bd) else anchor
    shares = layer_share_columns(rows)
    segmentation = segmentation_scores(segments_dir)
    sections = []
    for dataset in sorted(curves["dataset"].unique()):
        per = curves[curves["dataset"] == dataset]
        n_images = int(rows.loc[rows["dataset"] == dataset, "image_id"].nunique())
        part = [f'<section class="dataset" id="ds-{html.escape(dataset)}"><h2>{html.escape(dataset)}: '
                f'{n_images} images, {per["method"].nunique()} methods</h2>',
                f'<div class="plot">{_svg(curves, dataset, anchor)}</div>']
        table = bd[bd["dataset"] == dataset][["method", "bd_rate_pct", "bd_psnr_db", "points", "note"]]
        table = table.rename(columns={"bd_rate_pct": "BD-rate (%)", "bd_psnr_db": "BD-PSNR (dB)"})
        part.append(f"<h3>Against {html.escape(anchor)} (Bjontegaard, PSNR-RGB; negative BD-rate: fewer bits)</h3>"
                    + html_table(table, {"BD-rate (%)": 1, "BD-PSNR (dB)": 2}, ("BD-rate (%)", "BD-PSNR (dB)")))
        means = per.groupby("method", sort=True).agg(points=("quality", "size"), bpp_min=("bpp", "min"),
                                                      bpp_max=("bpp", "max"), psnr_rgb_max=("psnr_rgb", "max"),
                                                      enc_s=("enc_s", "mean"), dec_s=("dec_s", "mean")).reset_index()
        part.append("<h3>Rate range and time per image</h3>" + html_table(means, {"enc_s": 3, "dec_s": 3}))
        layers = shares[shares["dataset"] == dataset].drop(columns="dataset")
        if len(layers):
            layers = layers.loc[:, (layers != "-").any()]   # the layers this data set's methods have
            part.append("<h3>Layer shares: bpp of each layer over all files (share of the bits)</h3>"
                        + html_table(layers, {"total bpp": 4}))
        if dataset in segmentation:
            seg = pd.DataFrame([{"split": s, **v} for s, v in sorted(segmentation[dataset].items())])
            part.append("<h3>Segmentation (PSPNet, mean per-image)</h3>" + html_table(seg))
        part.extend(machines_section(machines_dir, dataset))
        sections.append("".join(part) + "</section>")
    viewer, notes = viewer_data(rows, out_dir, coded_dir=Path(coded_dir) if coded_dir else None,
                                prepared_dir=Path(prepared_dir) if prepared_dir else None,
                                models_dir=Path(models_dir) if models_dir else None, viewer_images=viewer_images,
                                device=device, progress=progress)
    revs = sorted(set(rows["git_rev"])) if "git_rev" in rows else []
    subtitle = (f"{len(rows)} coded files, {rows['method'].nunique()} methods, data sets "
                f"{', '.join(sorted(rows['dataset'].unique()))}; code {', '.join(r[:10] for r in revs)}")
    page = _page(title, subtitle, sections, viewer, notes)
    atomic_write_bytes(out_dir / PAGE, page.encode())
    for note in notes:
        log.warning("report: %s", note)
    return {"page": str(out_dir / PAGE), "datasets": sorted(curves["dataset"].unique()),
            "methods": sorted(rows["method"].unique()), "viewer_images": sum(len(v) for v in viewer.values()),
            "viewer_files": sum(len(p) for v in viewer.values() for im in v for p in im["methods"].values()),
            "notes": notes}


_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def external_references(page: str) -> list[str]:
    """Every src/href of ``page`` that points at a network address (the report must have none)."""
    return [m.group(0) for m in _EXTERNAL.finditer(page)]


def _cli(args: argparse.Namespace) -> int:
    summary = build_report(args.results, args.out, coded_dir=args.coded, prepared_dir=args.prepared,
                           models_dir=args.models_dir, segments_dir=args.segments, viewer_images=args.images,
                           device=args.device, progress=not args.quiet)
    print(f"{summary['page']}: {len(summary['datasets'])} data sets, {len(summary['methods'])} methods, "
          f"viewer {summary['viewer_images']} images / {summary['viewer_files']} decoded files"
          + (f", {len(summary['notes'])} left out (named on the page)" if summary["notes"] else ""))
    if args.screenshot:
        from .browser import check_page

        check = check_page(Path(summary["page"]), screenshot=Path(args.screenshot))
        print(f"{args.screenshot}: screenshot; {len(check.errors)} console errors"
              + "".join(f"\n  {e}" for e in check.errors))
        return 1 if check.errors else 0
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help=COMMANDS["report"])
    p.add_argument("--results", default="data/results", help="the aggregate stage's folder (rd.parquet, bd.parquet)")
    p.add_argument("--out", default="data/results/report", help="folder of index.html and its pictures")
    p.add_argument("--coded", default="data/coded", help="the code stage's folder (files/<dataset>/<method>/)")
    p.add_argument("--prepared", default="data/prepared",
                   help="the prepared images (<dataset>/<split>/images/), or a folder of the original images")
    p.add_argument("--models-dir", default="data/models", help="models that decode the .sem files")
    p.add_argument("--segments", default="data/segments", help="the segment stage's scores (optional)")
    p.add_argument("--images", type=int, default=3, help="images per data set in the viewer (0: no viewer)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--screenshot", help="open the page in headless Chromium, fail on a console error, save a PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)
