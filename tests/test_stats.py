"""The report's paired statistics against independent computations: scipy's paired t-test, Holm's procedure by
hand, the power behind the minimum detectable difference by Monte Carlo, and the claims built on them."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from jkt import report, stats


def series(values, seeds=None):
    return pd.Series(values, index=seeds if seeds is not None else range(len(values)), dtype=float)


def test_a_paired_comparison_is_scipys_paired_t_test_on_the_shared_seeds():
    a = series([61.0, 58.5, 64.2, 60.1, 59.9], [0, 1, 2, 3, 4])
    b = series([60.2, 57.9, 62.8, 59.0, 59.5, 99.0], [0, 1, 2, 3, 4, 5])  # seed 5 has no partner: left out
    r = stats.paired(a, b, "greater")
    ref = scipy_stats.ttest_rel(a[[0, 1, 2, 3, 4]], b[[0, 1, 2, 3, 4]])
    assert r["n"] == 5 and r["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    # the seeds' shared luck cancels: unpaired, the same numbers are not significant
    assert scipy_stats.ttest_ind(a[:5], b[:5], equal_var=False).pvalue > 0.05 > r["p"]


def test_holm_matches_the_step_down_procedure_by_hand():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), running maximum
    assert stats.holm(p)[[4, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert np.isnan(stats.holm(p)[3])


def test_the_minimum_detectable_difference_has_the_stated_power():
    """A true paired difference of mdd (at the sample's sd) is found by the two-sided test at alpha 0.05 about
    80% of the time: 20,000 simulated experiments of 6 seeds."""
    rng = np.random.default_rng(0)
    n, sd = 6, 1.7
    z = rng.normal(size=n)
    d = (z - z.mean()) / z.std(ddof=1) * sd  # a sample whose sd is exactly sd
    mdd = stats.paired(series(d), series(np.zeros(n)))["mdd"]
    sims = rng.normal(mdd, sd, size=(20_000, n))
    power = (scipy_stats.ttest_1samp(sims, 0, axis=1).pvalue < 0.05).mean()
    assert 0.74 < power < 0.84, power


def test_verdicts_decide_both_ways_and_say_equivalent_or_not_resolved():
    def verdict(a, b, kind="greater", margin=1.0):
        cell = pd.DataFrame([stats.paired(series(a), series(b), kind, 0.05, margin)])
        return stats.holm_verdicts(cell)["verdict"].iloc[0]

    assert verdict([50, 51, 52, 53], [48, 49.2, 49.8, 51.1]) == "supported"
    assert verdict([48, 49.2, 49.8, 51.1], [50, 51, 52, 53]) == "contradicted"
    assert verdict([50.0, 51.0, 52.0, 53.0, 54.0], [50.1, 50.9, 52.05, 52.95, 54.0]) == "equivalent"
    assert verdict([50, 45, 55], [49, 44, 57]) == "not resolved"
    assert verdict([50], [40]) == "not resolved"  # one seed: nothing to test
    assert verdict([50.1, 50.3, 49.9, 50.0], [50.0, 50.2, 50.1, 50.0], "no_gain") == "supported"
    assert verdict([55, 56, 57, 58], [50, 51, 52, 53.2], "no_gain") == "contradicted"
    assert verdict([60.0, 60.2, 59.9], [60.1, 60.3, 60.0], "close", 2.0) == "supported"
    assert verdict([50, 51, 52], [60, 61.2, 62], "close", 2.0) == "contradicted"


def test_holm_is_applied_across_the_cells_of_a_claim():
    rng = np.random.default_rng(1)
    rows = [{"dataset": "d", "per_class": pc, "method": m, "seed": s, "n_train": 10 * pc,
             "test_accuracy": 60 + s + rng.normal(0, 0.5) + (1.2 if (m == "act+jac" and pc == 1) else 0)}
            for pc in (1, 5, 10) for m in ("ce", "act", "act+jac", "act+ce", "act+jac+ce") for s in range(4)]
    _, cells = report.claims(pd.DataFrame(rows))
    jac = cells[cells["claim"] == "jacobian-low"]
    assert len(jac) == 6 and (jac["p_holm"] >= jac["p"]).all()
    assert jac["p_holm"].max() <= 1.0 and set(jac["verdict"]) <= set(stats.VERDICTS)


def test_combine():
    assert [stats.combine(v) for v in (["supported"] * 2, ["supported", "not resolved"], ["supported", "contradicted"],
                                       ["contradicted", "not resolved"], ["not resolved"], [], ["equivalent"] * 3)] == \
        ["supported", "partly supported", "mixed", "contradicted", "not resolved", "no data", "equivalent"]


def test_records_that_do_not_share_a_seeds_subset_or_weights_are_refused():
    rows = [{"dataset": "d", "per_class": 1, "method": m, "seed": 0, "n_train": 10, "test_accuracy": 50.0,
             "init_fingerprint": f, "subset_fingerprint": "s"} for m, f in (("ce", "a"), ("act+ce", "b"))]
    with pytest.raises(ValueError, match="init_fingerprint"):
        report.claims(pd.DataFrame(rows))


def test_seeds_needed_is_the_fewest_whose_detectable_difference_reaches_the_target():
    from scipy import stats as st

    def mdd(n, sd):
        return (st.t.ppf(0.975, n - 1) + st.t.ppf(0.8, n - 1)) * sd / np.sqrt(n)

    n = stats.seeds_needed(2.0, 1.0)
    assert mdd(n, 2.0) <= 1.0 < mdd(n - 1, 2.0)
    assert stats.seeds_needed(0.1, 1.0) == 2 and np.isnan(stats.seeds_needed(np.nan, 1.0))
    r = stats.paired(series([50.0, 52.0, 51.0, 55.0]), series([49.0, 50.5, 51.2, 53.0]), margin=1.0)
    assert r["seeds_for_margin"] == stats.seeds_needed(r["sd"], 1.0)
