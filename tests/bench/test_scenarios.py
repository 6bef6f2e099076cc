"""The load suite's scenarios: the DeiT id check against SN-Net's table, and front thinning."""

import pytest

from elastic.bench.scenarios import check_published_ids, thin_front
from elastic.builders.published import snnet_deit_published


def test_thin_front_keeps_both_ends_and_spreads_in_macs():
    published = snnet_deit_published()
    picked = thin_front(published, 6)
    assert len(picked) == len(set(picked)) == 6
    macs = [published[s].macs for s in picked]
    assert macs == sorted(macs)
    assert picked[0] == 0  # deit_tiny: the cheapest point of the front
    assert published[picked[-1]].top1 == max(r.top1 for r in published.values())  # the most accurate
    assert thin_front(published, 1000) == thin_front(published, 10_000)  # the whole front


def test_a_model_whose_subnets_are_not_snnets_official_table_is_refused(tiny_stitched):
    with pytest.raises(ValueError, match="ids cannot match"):
        check_published_ids(tiny_stitched, snnet_deit_published(), 32)
