"""The fuzzing harness (semlic.fuzz): its seeds keep the contract, what it found stays fixed, a short fuzz."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from semlic import format as fmt
from semlic import fuzz
from semlic.errors import ChecksumError, DatasetError, SemlicError, UnreadableImageError

FOUND = Path(__file__).parent / "fixtures" / "fuzz"   # inputs the fuzzer found escaping the contract (now fixed)


@pytest.fixture(scope="module")
def models():
    return fuzz.tiny_models()


def test_seeds_cover_every_registered_method_and_decode(models):
    from semlic.methods import all_methods, get_method

    files = fuzz.seeds("sem", models)
    methods = {fmt.unpack(data).method for data in files}
    assert methods == {m.name for m in all_methods() if all(n in models for n in m.models)}
    assert {"dsslic", "edms", "edms_noenh", "smic", "hyperprior", "dsslic_rd", "dsslic_rd_lossy",
            "dsslic_rd_derived"} <= methods
    from semlic.image_codecs import CODECS_BY_ID

    layer_codecs = {CODECS_BY_ID[lay.codec].name for data in files for lay in fmt.unpack(data).layers
                    if lay.codec in CODECS_BY_ID}
    assert "hevc10" in layer_codecs   # the 10-bit residual layer is among the seeds
    for data in files:
        method = get_method(fmt.unpack(data).method)
        assert method.decode(data, models).ndim == 3


def test_repaired_checksums_let_a_mutation_reach_the_method(models):
    data = bytearray(fuzz.seeds("sem", models)[0])
    data[-3] ^= 0xFF                                  # inside the last layer's payload
    with pytest.raises(ChecksumError):
        fmt.unpack(bytes(data))
    repaired = fuzz.repair_checksums(bytes(data))
    assert fmt.unpack(repaired).layers[-1].payload[-3] == data[-3]
    assert fuzz.repair_checksums(b"not a sem file") == b"not a sem file"


@pytest.mark.parametrize("name, target, error", [("image-avif-runtimeerror.bin", "image", UnreadableImageError),
                                                  ("manifest-empty-arrowinvalid.bin", "manifest", DatasetError),
                                                  ("manifest-rowgroup-14-billion-rows.bin", "manifest", DatasetError),
                                                  ("manifest-missing-id.bin", "manifest", DatasetError)])
def test_what_the_fuzzer_found_raises_a_semlic_error(name, target, error):
    from semlic.imageio import load_image
    from semlic.segnet.prepared import list_prepared

    data = (FOUND / name).read_bytes()
    run = fuzz.make_target(target)
    run(data)   # the contract: no exception other than a SemlicError escapes
    with pytest.raises(error):
        if target == "image":
            load_image(run.path)
        else:
            run.path.write_bytes(data)
            root = run.path.parent / "prepared"
            (root / "manifest.parquet").write_bytes(data)
            list_prepared(root, "train")
    assert issubclass(error, SemlicError)


def test_a_10_bit_residual_layer_without_an_image_is_a_layer_error():
    """Seeded with DSSLIC-RD's and the 10-bit residual's files, the fuzzer found a HEIF container with no
    image in an hevc10 layer: pillow-heif raised IndexError from its size; now a LayerError."""
    run = fuzz.make_target("sem")
    run((FOUND / "sem-hevc10-no-image-indexerror.bin").read_bytes())   # no exception but a SemlicError escapes


def test_a_file_declaring_more_pixels_than_the_limit_is_refused_before_decoding(models):
    """The fuzzer found a DSSLIC-RD file declaring 15177x13873 pixels whose compact layer (9.9 million
    symbols) was entropy-decoded before its map layer's size was found wrong: 720 MiB for a 177-byte
    input. A file above the pixel limit (SEMLIC_MAX_PIXELS, 100 million) is refused when it is opened."""
    from semlic.errors import DeclaredSizeError
    from semlic.methods import get_method

    data = fuzz.repair_checksums((FOUND / "sem-dsslic-rd-210-megapixels-oom.bin").read_bytes())
    method = get_method(fmt.unpack(data).method)
    with pytest.raises(DeclaredSizeError, match="above the limit"):   # from the header: nothing decoded
        method.decode(data, {name: models[name] for name in method.models})
    small = fuzz.sem_seeds(models)[0]
    small_method = get_method(fmt.unpack(small).method)
    needed = {name: models[name] for name in small_method.models}
    assert small_method.decode(small, needed).ndim == 3
    with pytest.raises(DeclaredSizeError, match="SEMLIC_MAX_PIXELS"):
        small_method.decode(small, needed, max_pixels=100)


def test_a_damaged_entropy_coded_string_no_longer_crashes_the_process():
    """CompressAI's rANS decoder read past the end of a damaged hyperprior string (a segfault under the
    fuzzer): the string is now bounded and padded, and the hyper-latent's declared size is checked."""
    out = subprocess.run([sys.executable, "-m", "semlic.fuzz", "sem", "--replay",
                          str(FOUND / "sem-hyperprior-rans-overread.bin")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_hyperprior_strings_are_bounded_and_the_latent_size_checked(models):
    from semlic.errors import DeclaredSizeError, LayerError
    from semlic.methods.latent_seg.codec import Section
    from semlic.entropy import bounded_string

    assert bounded_string(b"ab", 3) == b"ab" + bytes(16 * 2 + 8 * 3 + 64)
    with pytest.raises(LayerError, match="damaged"):
        bounded_string(bytes(64 * 3 + 65), 3)
    data = next(d for d in fuzz.seeds("sem", models) if fmt.unpack(d).method == "hyperprior")
    sem = fmt.unpack(data)
    section = Section.unpack(sem.section)
    wrong = Section(section.quality, (section.z_shape[0] + 40, section.z_shape[1]), section.latent_channels,
                    section.selected)
    bad = fmt.pack(fmt.SemFile(sem.method, sem.width, sem.height, sem.fingerprint, wrong.pack(), sem.layers))
    from semlic.methods import get_method

    with pytest.raises(DeclaredSizeError, match="hyper-latent"):
        get_method("hyperprior").decode(bad, models)


def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semlic.segnet.prepared import list_prepared

    (tmp_path / "train" / "images").mkdir(parents=True)
    for bad in ("../../etc/passwd", "a/b", "nul\0byte", ".."):
        pq.write_table(pa.table({"id": [bad], "split": ["train"]}), tmp_path / "manifest.parquet")
        with pytest.raises(DatasetError, match="not a plain file name"):
            list_prepared(tmp_path, "train")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("target, runs", [("sem", 20000), ("image", 20000), ("labels", 20000), ("manifest", 20000)])
def test_short_fuzz_finds_nothing(target, runs, tmp_path):
    out = subprocess.run([sys.executable, "-m", "semlic.fuzz", target, "--runs", str(runs), "--corpus",
                          str(tmp_path / "corpus"), "--artifacts", str(tmp_path / "found")],
                         capture_output=True, text=True, timeout=850)
    assert out.returncode == 0, out.stderr[-5000:]
    assert f"Done {runs} runs" in out.stderr
    assert not (tmp_path / "found").exists() or not any((tmp_path / "found").iterdir())
