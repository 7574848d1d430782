"""harness.paper: suite detection, name matching and the comparison with the paper's numbers."""

import pandas as pd
import pytest

from harness import paper


def test_suite_of():
    assert paper.suite_of("synthetic", ["near_ood", "far_ood"]) == "synthetic"
    assert paper.suite_of("shards", ["inaturalist", "sun", "places365", "dtd"]) == "mos"
    assert paper.suite_of("shards", ["ssb_hard", "NINCO", "iNaturalist", "Textures", "openimage_o"]) == "openood-v1.5"
    assert paper.suite_of("shards", ["inaturalist", "sun"]) == "custom"


def test_canonical_names():
    assert paper.canonical("SSB-hard") == paper.canonical("ssb_hard") == "SSB-hard"
    assert paper.canonical("OpenImage-O") == "OpenImage-O" and paper.canonical("near_ood") is None


def rows(method, score, values):
    return [{"method": method, "score": score, "dataset": d, "fpr95": f, "auroc": a} for d, (f, a) in values.items()]


def test_mos_comparison_per_set_and_average():
    ours = pd.DataFrame(rows("cma", "neglabel", {"inaturalist": (0.02, 0.99), "sun": (0.2, 0.96),
                                                 "places": (0.3, 0.93), "textures": (0.3, 0.9)})
                        + rows("flyp", "mcm", {"inaturalist": (0.25, 0.94)}))
    found = paper.comparison("mos", ours).set_index(["method", "score", "dataset"])
    inat = found.loc[("cma", "neglabel", "iNaturalist")]
    assert inat["paper_fpr95"] == 1.65 and inat["ours_fpr95"] == pytest.approx(2.0)
    assert inat["d_fpr95"] == pytest.approx(0.35) and inat["d_auroc"] == pytest.approx(99.0 - 99.62)
    avg = found.loc[("cma", "neglabel", "avg")]
    assert avg["ours_fpr95"] == pytest.approx(20.5) and avg["d_fpr95"] == pytest.approx(20.5 - 19.93)
    assert ("flyp", "mcm", "iNaturalist") in found.index
    assert ("flyp", "mcm", "avg") not in found.index  # three of the four sets are missing


def test_openood_near_and_far_averages():
    ours = pd.DataFrame(rows("flyp", "neglabel", {"ssb_hard": (0.6, 0.8), "ninco": (0.5, 0.9),
                                                  "inaturalist": (0.1, 0.99), "textures": (0.3, 0.9),
                                                  "openimage_o": (0.2, 0.95)}))
    found = paper.comparison("openood-v1.5", ours).set_index("dataset")
    assert list(found.index) == ["near avg", "far avg"]  # the paper gives FLYP's averages only
    assert found.loc["near avg", "ours_fpr95"] == pytest.approx(55.0)
    assert found.loc["far avg", "d_auroc"] == pytest.approx(100 * (0.99 + 0.9 + 0.95) / 3 - 94.86)


def test_no_comparison_outside_the_papers_suites():
    ours = pd.DataFrame(rows("cma", "neglabel", {"inaturalist": (0.02, 0.99)}))
    assert paper.comparison("synthetic", ours).empty and paper.comparison("custom", ours).empty
