"""LatencyProfile: interpolation, Pareto candidates, the profile file beside the model."""

import json

import pytest

from elastic.serving import LatencyProfile, profile_path
from elastic.serving.profile import device_tag, fingerprint, quantile
from elastic.subnet import Subnet


def table():
    return LatencyProfile.from_table({0: {1: 2.0, 2: 3.0, 4: 5.0}, 1: {1: 4.0, 2: 6.0, 4: 10.0}}, tail=1.5)


def test_lookup_interpolates_and_extrapolates():
    p = table()
    assert p.latency_ms(0, 2, "p50") == 3.0
    assert p.latency_ms(0, 3, "p50") == 4.0
    assert p.latency_ms(0, 8, "p50") == 9.0  # slope of the last segment: 1 ms per sample
    assert p.latency_ms(1, 1) == 6.0  # p99 by default
    with pytest.raises(ValueError):
        p.latency_ms(0, 0)
    with pytest.raises(ValueError):
        p.latency_ms(0, 1, "p90")
    with pytest.raises(KeyError):
        p.latency_ms(7, 1)


def test_candidates_are_the_accuracy_latency_front():
    p = table()
    fast_bad = [Subnet(0, "anchor", "a", 1, 1, 0.6), Subnet(1, "anchor", "b", 2, 1, 0.7)]
    assert p.candidates(fast_bad) == [0, 1]
    slow_bad = [Subnet(0, "anchor", "a", 1, 1, 0.7), Subnet(1, "anchor", "b", 2, 1, 0.6)]
    assert p.candidates(slow_bad) == [0]
    assert p.candidates(slow_bad, value={0: 0.1, 1: 0.9}) == [0, 1]


def test_quantile_interpolates_like_numpy():
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([5.0], 0.99) == 5.0
    assert quantile(list(range(101)), 0.99) == 99


def test_saved_beside_the_model_and_read_back(tmp_path):
    p = table()
    p.fingerprint = "abc"
    file = p.save(tmp_path)
    assert file == profile_path(tmp_path, "synthetic") == tmp_path / "profile-synthetic.json"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    q = LatencyProfile.load(tmp_path, "synthetic")
    assert q.p50_ms == p.p50_ms and q.p99_ms == p.p99_ms and q.batch_sizes == p.batch_sizes
    assert json.loads(file.read_text())["format"] == "elastic-latency-profile/1"


def test_unreadable_profile_is_ignored(tmp_path):
    assert LatencyProfile.load(tmp_path, "cpu") is None
    (tmp_path / "profile-cpu.json").write_text("{not json")
    assert LatencyProfile.load(tmp_path, "cpu") is None
    (tmp_path / "profile-cpu.json").write_text('{"format": "other"}')
    assert LatencyProfile.load(tmp_path, "cpu") is None


def test_fits_says_why_a_profile_cannot_be_reused():
    subs = [Subnet(0, "anchor", "a", 1, 1), Subnet(1, "anchor", "b", 2, 1)]
    p = table()
    p.fingerprint = fingerprint(subs)
    assert p.fits(subs, "synthetic", [1, 2, 4]) is None
    assert "batch sizes" in p.fits(subs, "synthetic", [1, 8])
    assert "measured on" in p.fits(subs, "other cpu", [1])
    assert "subnet table" in p.fits(subs[:1], "synthetic", [1])


def test_device_tags_are_file_name_safe():
    assert device_tag("cpu") == "cpu"
    assert device_tag("cuda:0") == "cuda0"


def test_incomplete_tables_are_refused():
    with pytest.raises(ValueError, match="lacks batch sizes"):
        LatencyProfile("cpu", "cpu", (1, 2), {0: {1: 1.0}}, {0: {1: 1.0, 2: 2.0}})
