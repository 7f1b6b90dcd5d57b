"""semlic.run_report's one definition of a layered codec's curve: its base alone plus its residual QPs."""

from __future__ import annotations

import pandas as pd

from semlic import reporting, run_report
from semlic.methods import get_method

from .conftest import make_image


def test_the_base_alone_file_does_not_depend_on_the_residual_chroma(tiny_model):
    image, seg = make_image(40, 56)
    method = get_method("dsslic")
    files = {chroma: method.encode(image, {"dsslic": tiny_model}, None, segmentation=seg, chroma=chroma).data
             for chroma in ("420", "444")}
    assert files["420"] == files["444"]   # what lets dsslic_444's curve take dsslic's base-alone point
    coded = {chroma: method.encode(image, {"dsslic": tiny_model}, 30, segmentation=seg, chroma=chroma).data
             for chroma in ("420", "444")}
    assert coded["420"] != coded["444"]


def _rows(method, qualities, images=("a", "b"), dataset="camvid"):
    return [{"dataset": dataset, "method": method, "image_id": i, "quality": float(q), "bpp": 0.1 * (q + 2)}
            for i in images for q in qualities]


def test_a_variant_takes_the_shared_base_alone_rows_only_when_it_lacks_them():
    rows = pd.DataFrame(_rows("dsslic", [-1, 42, 28]) + _rows("dsslic_444", [42, 28], images=("a",))
                        + _rows("dsslic", [-1], dataset="kodak"))
    out = reporting.with_shared_base(rows, run_report.SHARED_BASE)
    added = out[(out.method == "dsslic_444") & (out.quality == -1)]
    assert added[["dataset", "image_id", "bpp"]].values.tolist() == [["camvid", "a", 0.1]]   # its own images only
    assert len(out) == len(rows) + 1 and not ((out.dataset == "kodak") & (out.method == "dsslic_444")).any()
    assert reporting.with_shared_base(out, run_report.SHARED_BASE).equals(out)   # nothing added twice
    alone = pd.DataFrame(_rows("dsslic", [-1, 42]))
    assert reporting.with_shared_base(alone, run_report.SHARED_BASE) is alone


def test_the_ablation_table_comes_from_the_methods_published_settings():
    """DSSLIC's Table 1 beside the measured base-alone points: which methods, their setting names and the
    paper's figures come from the registered methods' PaperPoints (no method named in the report code)."""
    curves = pd.DataFrame([{"dataset": d, "method": m, "quality": q, "images": 3, "bpp": 0.3, "bits_per_subpixel": 0.1,
                            "psnr_rgb": 20.0, "psnr_channel_mean": 20.5, "ms_ssim": 0.8}
                           for d in ("camvid", "kodak") for m in ("dsslic", "dsslic_noseg", "dsslic_upcomp", "edms", "hevc")
                           for q in (-1.0, 32.0)])
    table = reporting.ablation_table(curves).set_index(["dataset", "setting"])
    assert sorted(table.index) == [(d, s) for d in ("camvid", "kodak") for s in ("noSeg", "upComp", "withSeg")]
    assert table.loc[("kodak", "noSeg"), "method"] == "dsslic_noseg"
    assert table.loc[("camvid", "withSeg"), "paper_kodak_psnr"] == 21.91
    assert table.loc[("camvid", "upComp"), "paper_ade20k_ms_ssim"] == 0.759
    kodak_only = {p["dataset"] for p in reporting.paper_points()}
    assert kodak_only == {"Kodak"} and {p["dataset"] for p in reporting.paper_points(None)} == {"Kodak", "ADE20K"}
