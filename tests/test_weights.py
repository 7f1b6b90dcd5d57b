"""semlic.weights: the weights folder the `weights` stage makes (kept, converted, left out offline)."""

from __future__ import annotations

import json

import pytest

from semlic import errors, weights
from semlic.cli import main


@pytest.fixture
def fake(monkeypatch):
    """A weights entry whose converter writes a small file (or fails like an unreachable index)."""
    calls = {"convert": 0, "fail": False}

    def convert(out):
        calls["convert"] += 1
        if calls["fail"]:
            raise errors.DownloadError("pip could not download fake==1 (no network)")
        out.write_bytes(b"good weights")
        return out

    def check(path):
        if path.read_bytes() != b"good weights":
            raise errors.CheckpointError(f"{path} is not the fake weights")

    spec = weights.Weights(name="fake", filename="fake.bin", description="fake", convert=convert, check=check,
                           how="semlic convert-fake")
    monkeypatch.setitem(weights.WEIGHTS, "fake", lambda: spec)
    return calls


def test_missing_files_are_converted_then_kept(fake, tmp_path):
    manifest = weights.fetch_weights(["fake"], tmp_path / "w")
    assert fake["convert"] == 1 and (tmp_path / "w" / "fake.bin").read_bytes() == b"good weights"
    assert set(manifest["fake"]) == {"file", "description", "sha256"}
    assert json.loads((tmp_path / "w" / weights.MANIFEST).read_text()) == manifest
    assert weights.fetch_weights(["fake"], tmp_path / "w") == manifest and fake["convert"] == 1   # kept
    staged = weights.fetch_weights(["fake"], tmp_path / "staging", keep_from=tmp_path / "w")    # as the stage does
    assert staged == manifest and fake["convert"] == 1 and (tmp_path / "staging" / "fake.bin").is_file()


def test_a_registered_file_not_asked_for_is_kept_when_it_loads(fake, monkeypatch, tmp_path):
    """The stage lists fewer files than `make weights` fetched: the others stay (never converted)."""
    weights.fetch_weights(["fake"], tmp_path / "w")

    def check(path):
        if path.read_bytes() != b"ok":
            raise errors.CheckpointError(f"{path} is not the other weights")

    other = weights.Weights(name="other", filename="other.bin", description="other", convert=None, check=check,
                            how="semlic convert-other")
    monkeypatch.setitem(weights.WEIGHTS, "other", lambda: other)
    (tmp_path / "w" / "other.bin").write_bytes(b"ok")
    for name in set(weights.WEIGHTS) - {"fake", "other"}:
        monkeypatch.delitem(weights.WEIGHTS, name)
    staged = weights.fetch_weights(["fake"], tmp_path / "staging", keep_from=tmp_path / "w")
    assert staged["other"]["listed"] is False and (tmp_path / "staging" / "other.bin").read_bytes() == b"ok"
    (tmp_path / "w" / "other.bin").write_bytes(b"truncated")                  # one that does not load: left out
    staged = weights.fetch_weights(["fake"], tmp_path / "again", keep_from=tmp_path / "w")
    assert "other" not in staged and not (tmp_path / "again" / "other.bin").exists() and fake["convert"] == 1


def test_a_file_that_does_not_load_is_converted_again(fake, tmp_path):
    (tmp_path / "fake.bin").write_bytes(b"truncated")
    weights.fetch_weights(["fake"], tmp_path)
    assert fake["convert"] == 1 and (tmp_path / "fake.bin").read_bytes() == b"good weights"


def test_offline_the_folder_is_written_without_the_file_and_says_how_to_get_it(fake, tmp_path, capsys):
    fake["fail"] = True
    manifest = weights.fetch_weights(["fake"], tmp_path)
    assert manifest == {"fake": {"file": "fake.bin", "description": "fake", "missing": "get it with: semlic convert-fake"}}
    assert not (tmp_path / "fake.bin").exists() and (tmp_path / weights.MANIFEST).is_file()
    assert "could not get fake.bin" in capsys.readouterr().err
    assert main(["weights", "fake", "--out", str(tmp_path)]) == 0
    assert main(["weights", "fake", "--out", str(tmp_path), "--strict"]) == 1


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(errors.ConfigError, match="lpips_alex"):
        weights.fetch_weights(["nope"], tmp_path)
    assert set(weights.WEIGHTS) >= {"lpips_alex", "lpips_vgg"}
