"""Coding for machines (semlic.machines): task rows from real files, their bytes, their scores and tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from semlic import format as fmt
from semlic import machines, reporting
from semlic.errors import LabelMapError
from semlic.fuzz import NUM_CLASSES, seed_image
from semlic.imageio import save_png
from semlic.methods import all_methods
from semlic.segnet.prepared import PreparedSample


# --- confusion and scores ------------------------------------------------------------------------
def test_confusion_counts_void_predictions_as_misses_and_leaves_void_truth_out():
    truth = np.array([[0, 0, 1, 255]], np.uint8)
    prediction = np.array([[0, 255, 1, 0]], np.uint8)      # a void prediction on a class-0 pixel
    matrix = machines.confusion(prediction, truth, 2)
    assert matrix.shape == (3, 3)
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    miou, accuracy = reporting.confusion_scores(matrix)
    assert miou == pytest.approx((1 / 2 + 1 / 1) / 2)          # class 0: 1 of 2 pixels, no false positive
    assert accuracy == pytest.approx(2 / 3)
    with pytest.raises(LabelMapError):
        machines.confusion(prediction[:, :2], truth, 2)


def test_rate_at_and_the_operational_curve():
    points = pd.DataFrame({"bpp": [0.1, 0.2, 0.4, 0.3], "miou": [0.2, 0.4, 0.6, 0.3]})
    curve = reporting.operational_miou(points)
    assert curve["bpp"].tolist() == [0.1, 0.2, 0.4]                  # 0.3 bpp does worse than 0.2 bpp
    rate, how = reporting.rate_at_miou(points, 0.5)
    assert how == "interpolated" and rate == pytest.approx(math.sqrt(0.2 * 0.4))
    assert reporting.rate_at_miou(points, 0.1) == (0.1, "<=")
    assert math.isnan(reporting.rate_at_miou(points, 0.7)[0])


def test_machine_table_bd_rate_on_miou_against_the_anchor():
    rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    mious = np.array([0.30, 0.40, 0.48, 0.53, 0.55])
    rows = [{"dataset": "d", "method": "hevc", "output": "decoded", "quality": str(i), "bpp": r, "miou": m,
             "images": 2} for i, (r, m) in enumerate(zip(rates, mious))]
    rows += [{"dataset": "d", "method": "half", "output": "map", "quality": str(i), "bpp": r / 2, "miou": m,
              "images": 2} for i, (r, m) in enumerate(zip(rates, mious))]
    rows += [{"dataset": "d", "method": "once", "output": "map", "quality": str(i), "bpp": 0.05, "miou": 0.52,
              "images": 1} for i in range(3)]
    rows += [{"dataset": "d", "method": machines.ORIGINAL, "output": "decoded", "quality": "-", "bpp": math.nan,
              "miou": 0.56, "images": 2}]
    table = reporting.task_table(pd.DataFrame(rows)).set_index("method")
    assert table.loc["half", "bd_rate_miou_pct"] == pytest.approx(-50.0, abs=1e-6)
    assert table.loc["hevc", "bd_note"] == "anchor" and table.loc["once", "images"] == 1
    assert math.isnan(table.loc["once", "bd_rate_miou_pct"]) and "1 operational point" in table.loc["once", "bd_note"]
    assert table.loc["once", "bpp_90pct"] == pytest.approx(0.05) and table.loc["once", "bpp_90pct_note"] == "<="
    assert table.loc["once", "bpp_95pct_note"] == "not reached"
    # 95 % of 0.56 = 0.532: HEVC gets there between 0.8 and 1.6 bpp
    assert 0.8 < table.loc["hevc", "bpp_95pct"] < 1.6
    flat = pd.DataFrame(rows)
    flat.loc[flat["method"] == "hevc", "miou"] = 0.55                  # an anchor with one operational point
    table = reporting.task_table(flat).set_index("method")
    assert table.loc["half", "bd_note"] == "the anchor has 1 operational point(s): BD-rate needs 4"


# --- from real files -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coded(every_models_dir, tmp_path_factory):
    """One labelled image coded by every registered method (tiny random models) and by HEVC and JPEG,
    laid out as the code stage writes them; the receiver."""
    from semlic.baselines import code_image_bytes
    from semlic.model_files import ModelStore

    root = tmp_path_factory.mktemp("machines")
    image, _ = seed_image(64, 96)
    store = ModelStore(dirs=[every_models_dir])
    receiver = machines.Receiver(every_models_dir)
    truth = receiver.segment(seed_image(64, 96, seed=1)[0])        # a ground truth that differs from PSPNet's
    save_png(root / "image.png", image)
    save_png(root / "truth.png", truth)
    files = root / "files"
    made = {}
    for method in all_methods():
        wanted = method.models + method.encoder_models + method.task_models
        if not all(name in store.names() for name in wanted):
            continue
        models = store.models(wanted)
        quality = method.default_qualities[0]
        result = method.encode(image, models, quality, segmentation=None)
        path = files / method.name / f"img_{method.quality_label(method.parse_quality(quality))}.sem"
        path.parent.mkdir(parents=True)
        path.write_bytes(result.data)
        made[method.name] = path
    for codec, quality in (("hevc", 32), ("jpeg", 50)):
        data = code_image_bytes(image, codec, quality).data
        path = files / codec / f"img_{quality}.{'heic' if codec == 'hevc' else 'jpg'}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        made[codec] = path
    sample = PreparedSample("img", root / "image.png", root / "truth.png")
    rows = machines.frame(machines.task_rows([sample], files, receiver, dataset="d", progress=False))
    return made, rows, receiver


def test_every_method_yields_task_rows_from_its_file_alone(coded):
    made, rows, _ = coded
    assert {"dsslic", "edms", "smic", "hyperprior", "dsslic_rd", "hevc", "jpeg"} <= set(made)
    for name, path in made.items():
        own = rows[rows["method"] == name]
        decoded = own[own["output"] == machines.DECODED]
        assert len(decoded) == 1, name
        assert decoded["bytes"].iloc[0] == path.stat().st_size      # the whole file
    outputs = {(r.method, r.output) for r in rows.itertuples()}
    for name, output in (("dsslic", "map"), ("edms", "derived"), ("edms_noenh", "derived"), ("smic", "map"),
                         ("dsslic_rd", "map"), ("dsslic_rd_derived", "derived"), ("dsslic_rd_lossy", "map"),
                         ("sgfilter", "derived"), ("sgfilter_sent", "map")):
        if name in made:
            assert (name, output) in outputs
    assert not {o for m, o in outputs if m in ("dsslic_noseg", "dsslic_upcomp", "hyperprior", "sgfilter_nomap")} - {"decoded"}
    assert (machines.ORIGINAL, machines.DECODED) in outputs
    matrix = np.asarray(rows["confusion"].iloc[0])
    assert matrix.sum() == 64 * 96 and len(matrix) == (NUM_CLASSES + 1) ** 2


def test_a_map_output_reads_the_header_and_its_layers_only(coded):
    from semlic.methods import get_method

    made, rows, _ = coded
    for r in rows[~rows["output"].isin([machines.DECODED])].itertuples():
        sem = fmt.unpack(made[r.method].read_bytes())
        method = get_method(sem.method)
        layers = {"map": {"segmentation", "map"}, "derived": {"compact", "correction", "image"}}[r.output]
        read = sum(layer.bits for layer in sem.layers if method.role_name(layer.role) in layers) // 8
        assert r.bytes == sem.header_bytes + read, (r.method, r.output)
        size = len(made[r.method].read_bytes())
        assert r.bytes < size if r.output == "map" else r.bytes <= size   # a derived map reads c^: all but x - x'
        assert r.bpp == pytest.approx(8 * r.bytes / (64 * 96))


def test_a_map_sent_losslessly_scores_as_the_encoders_map(coded):
    """DSSLIC's encoder segments with PSPNet and sends the map losslessly: the receiver's map
    scores exactly as PSPNet on the uncompressed image."""
    _, rows, _ = coded
    original = rows[rows["method"] == machines.ORIGINAL]["confusion"].iloc[0]
    for name in ("dsslic", "dsslic_rd"):
        sent = rows[(rows["method"] == name) & (rows["output"] == "map")]["confusion"].iloc[0]
        assert list(sent) == list(original), name


def test_summary_tables_and_figure_from_the_rows(coded, tmp_path):
    _, rows, _ = coded
    headline = machines.write_outputs(rows, tmp_path)
    table = pd.read_csv(tmp_path / "machines.csv")
    assert {"dsslic", "hevc"} <= set(table["method"])
    assert (tmp_path / "figures" / "rate_miou_d.png").stat().st_size > 1000
    assert headline["original_miou"]["d"] == pytest.approx(
        reporting.confusion_scores(np.asarray(rows[rows["method"] == machines.ORIGINAL]["confusion"].iloc[0]).reshape(
            NUM_CLASSES + 1, -1))[0], abs=1e-4)
    from semlic.html_report import machines_section

    section = "".join(machines_section(tmp_path, "d"))
    assert section.count("<svg") == 1 and "BD-rate on mIoU" in section and "dsslic" in section
    assert machines_section(tmp_path, "other") == [] and machines_section(None, "d") == []
    again = machines.read_rows([tmp_path / "rows.parquet"])
    assert again.drop(columns="confusion").equals(rows.drop(columns="confusion"))


def test_a_damaged_file_is_refused_with_its_place(coded, tmp_path):
    from semlic.errors import SemlicError

    made, _, receiver = coded
    folder = tmp_path / "files" / "dsslic"
    folder.mkdir(parents=True)
    (folder / "img_40.sem").write_bytes(made["dsslic"].read_bytes()[:-20])
    sample = PreparedSample("img", made["dsslic"].parents[2] / "image.png", made["dsslic"].parents[2] / "truth.png")
    with pytest.raises(SemlicError, match=r"files/dsslic, image img"):
        machines.task_rows([sample], tmp_path / "files", receiver, dataset="d", progress=False)


def test_labelled_sets_keep_the_coded_images_with_ground_truth(tmp_path):
    """Only the coded images of a prepared split that have labels; a data set without labels is left out."""
    image, seg = seed_image()
    for dataset, labelled in (("camvid", True), ("kodak", False)):
        folder = tmp_path / "prepared" / dataset
        for image_id in ("a", "b"):
            save_png(folder / "test" / "images" / f"{image_id}.png", image)
            if labelled:
                save_png(folder / "test" / "labels" / f"{image_id}.png", seg)
        pd.DataFrame({"id": ["a", "b"], "split": ["test", "test"]}).to_parquet(folder / "manifest.parquet")
        coded = tmp_path / "coded" / "files" / dataset / "hevc"
        coded.mkdir(parents=True)
        (coded / "a_32.heic").write_bytes(b"x")                 # only image a was coded
    assert machines.labelled_sets(tmp_path / "coded", tmp_path / "prepared", "test") == {"camvid": ["a"]}
    assert machines.labelled_sets(tmp_path / "coded", tmp_path / "nowhere", "test") == {}


def test_files_of_one_image_share_their_decoder_map(every_models_dir, monkeypatch):
    """decoder_maps_many gives each file's maps as decoder_maps does; a layered codec derives the map of
    files that differ only in the residual once (EDMS: PSPNet + SMapNet once per image, not per QP)."""
    from semlic.methods import get_method
    from semlic.model_files import ModelStore

    image, _ = seed_image(64, 96)
    method = get_method("edms")
    models = ModelStore(dirs=[every_models_dir]).models(method.models + method.encoder_models)
    files = [r.data for r in method.encode_many(image, models, [None, 40, 30])]
    alone = [method.decoder_maps(method.open(data, models), models) for data in files]
    calls = []
    derive = type(method).decoder_map

    def counted(self, *args, **kwargs):
        calls.append(1)
        return derive(self, *args, **kwargs)

    monkeypatch.setattr(type(method), "decoder_map", counted)
    together = method.decoder_maps_many(files, models)
    assert len(calls) == 1 and len(together) == 3
    for maps, (shared, seconds) in zip(alone, together):
        assert seconds > 0 and sorted(maps) == sorted(shared) == ["derived"]
        assert np.array_equal(maps["derived"].labels, shared["derived"].labels)
        assert maps["derived"].roles == shared["derived"].roles
    smic = get_method("smic")   # the default: one file at a time, the same maps
    smic_models = ModelStore(dirs=[every_models_dir]).models(smic.models + smic.encoder_models + smic.task_models)
    data = smic.encode(image, smic_models, smic.default_qualities[0]).data
    (maps, _), = smic.decoder_maps_many([data], smic_models)
    assert np.array_equal(maps["map"].labels, smic.decoder_maps(smic.open(data, smic_models), smic_models)["map"].labels)


def test_decoding_with_the_maps_gives_what_decoding_and_reading_the_maps_give(every_models_dir):
    """For every registered method, decode_with_maps_many (one pass: a layered codec reuses the map its
    prediction used) returns the images of decode_many and the maps of decoder_maps_many."""
    from semlic.model_files import ModelStore

    image, seg = seed_image(64, 96)
    store = ModelStore(dirs=[every_models_dir])
    checked = []
    for method in all_methods():
        wanted = method.models + method.encoder_models + method.task_models
        if not all(name in store.names() for name in wanted):
            continue
        models = store.models(wanted)
        qualities = list(method.default_qualities)[:2]
        files = [r.data for r in method.encode_many(image, models, qualities, segmentation=seg)]
        together = method.decode_with_maps_many(files, models)
        apart = zip(method.decode_many(files, models), method.decoder_maps_many(files, models))
        for (image_1, dec_s, maps_1, maps_s), ((image_2, _), (maps_2, _)) in zip(together, apart):
            assert np.array_equal(image_1, image_2) and dec_s > 0 and maps_s >= 0, method.name
            assert sorted(maps_1) == sorted(maps_2), method.name
            for output in maps_1:
                assert np.array_equal(maps_1[output].labels, maps_2[output].labels), (method.name, output)
                assert maps_1[output].roles == maps_2[output].roles
        checked.append(method.name)
    assert {"dsslic", "edms", "dsslic_rd_derived", "dsslic_rd_lossy", "smic", "sgfilter"} <= set(checked)
