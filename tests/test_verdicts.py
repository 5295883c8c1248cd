"""What the decisive verdicts rest on: a validation pool no subset uses, the learning curves that say whether the
students stopped improving, Eq. 2's cross-entropy form of Jacobian matching, the named methods of the grid, the
paired robustness claim, the practitioner's table, and the grid the batch builds from the profile."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from jkt import curves, data, grid, profiles, report
from jkt.experiments.distill import method_objective
from jkt.jacobian import softmax_output_and_input_gradient
from jkt.losses import jacobian_matching_ce, preset


# ---- the validation pool ----------------------------------------------------------------------------------

def test_no_subset_of_any_seed_or_size_draws_from_the_validation_pool():
    train = data.load("digits").train
    pool = set(data.holdout_indices(train, 20).tolist())
    assert len(pool) == 20 * 10 and set(data.holdout(train, 20).y.tolist()) == set(range(10))
    assert data.holdout_indices(train, 20).tolist() == data.holdout_indices(train, 20).tolist()  # fixed
    for seed in range(5):
        for per_class in (1, 5, 50):
            chosen = set(data.subset_indices(train, per_class, seed, holdout=20).tolist())
            assert not chosen & pool and len(chosen) == 10 * per_class
        assert set(data.subset_indices(train, 5, seed, holdout=20).tolist()) <= \
            set(data.subset_indices(train, 50, seed, holdout=20).tolist())  # still nested
    full = data.subset(train, "full", 0, holdout=20)
    assert len(full) == len(train) - 200
    # without a pool the draw is the one every earlier record used
    assert torch.equal(data.subset_indices(train, 5, 3), data.subset_indices(train, 5, 3, holdout=0))
    with pytest.raises(ValueError, match="validation pool of 20"):
        data.subset_indices(train, 110, 0, holdout=20)  # the smallest class has 116 images


# ---- Eq. 2: the cross-entropy form ------------------------------------------------------------------------

def test_eq2_jacobian_term_is_minus_the_dot_of_softmax_gradients_over_the_students_probability():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 4)).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])

    def prob_grad(model, b):  # torch.func: the gradient of one softmax probability, one sample at a time
        f = lambda xb: torch.softmax(model(xb[None]), 1)[0, y[b]]
        return f(x[b]), torch.func.grad(f)(x[b])

    expected = 0.0
    for b in range(5):
        s_p, s_g = prob_grad(student, b)
        _, t_g = prob_grad(teacher, b)
        expected += -(s_g @ t_g) / s_p / 5
    _, t_prob, t_grad, _ = softmax_output_and_input_gradient(teacher, x, y)
    _, s_prob, s_grad, _ = softmax_output_and_input_gradient(student, x, y, create_graph=True)
    assert torch.allclose(jacobian_matching_ce(s_grad, t_grad, s_prob), expected, rtol=1e-10)
    terms = preset("soft+softjac").terms(student, x, y, teacher(x).detach(), t_grad, y)
    assert torch.allclose(terms["jac"], expected, rtol=1e-10) and set(terms) == {"jac", "hinton"}
    with pytest.raises(ValueError, match="penalty"):
        preset("soft+softjac", penalty=0.1)


def test_the_options_a_method_fixes_are_not_overridden_by_the_notebooks():
    assert method_objective("act+jacn", jacobian_loss="squared").jacobian_loss == "normalized"
    assert method_objective("act+jac", jacobian_loss="normalized").jacobian_loss == "normalized"
    soft = method_objective("soft+softjac", temperature=4.0, jacobian_loss="squared")
    assert (soft.temperature, soft.jacobian_loss, soft.alpha) == (1.0, "ce", 0.0)
    assert method_objective("hinton", temperature=2.0).temperature == 2.0 and preset("hinton").alpha == 0


# ---- the learning curves ----------------------------------------------------------------------------------

def _curve_records(gain_after: float):
    """Validation accuracy that rises 3 points per doubling up to 200 steps, then ``gain_after`` per doubling."""
    rows = []
    for pc in (1, 10):
        for method in ("ce", "act+jac"):
            for seed in (0, 1):
                for steps in (50, 100, 200, 400):
                    acc = 60 + 3 * math.log2(min(steps, 200) / 50) + gain_after * math.log2(max(steps, 200) / 200)
                    rows.append({"dataset": "d", "per_class": pc, "method": method, "seed": seed, "steps": steps,
                                 "validation_accuracy": acc + 0.1 * seed})
    return pd.DataFrame(rows)


def test_a_method_has_levelled_off_when_the_next_doubling_gains_under_the_threshold():
    flat = _curve_records(0.2)
    grid = flat[flat["steps"] == 200]
    table = curves.levelled(flat, grid, threshold=0.5)
    assert list(table["status"]) == ["levelled off"] * 4 and set(table["next_steps"]) == {400}
    assert list(table["family"]) == ["zeroth-order", "first-order"] * 2
    assert np.allclose(table["gain_per_doubling"], 0.2) and np.allclose(table["gain_before"], 3.0)
    assert set(table["curves_pick"]) == {200} and curves.still_improving(table) == set()
    rising = _curve_records(1.5)
    table = curves.levelled(rising, rising[rising["steps"] == 200], threshold=0.5)
    assert list(table["status"]) == ["still improving"] * 4 and table["curves_pick"].isna().all()
    assert curves.still_improving(table) == {("d", pc, f) for pc in (1, 10) for f in ("zeroth-order", "first-order")}
    fig = curves.plot(rising, table, "t")
    assert len(fig.axes) == 2


@pytest.mark.parametrize("jacobian_gain, plain, improving", [(-5, "contradicted", "not resolved"),
                                                               (+5, "supported", "supported"),
                                                               (0.0, "equivalent", "not resolved")])
def test_a_still_improving_student_keeps_only_a_verdict_in_its_favour(jacobian_gain, plain, improving):
    rows = [{"dataset": "d", "per_class": 1, "method": m, "seed": s, "n_train": 10,
             "test_accuracy": 50 + s + 0.01 * s * s + {"act+jac": jacobian_gain, "act+ce": 5}.get(m, 0)}
            for m in ("act", "act+jac", "ce", "act+ce") for s in range(5)]
    _, cells = report.claims(pd.DataFrame(rows))
    verdicts = cells.set_index("comparison")["verdict"]
    assert verdicts["act+jac - act"] == plain and verdicts["act+ce - ce"] == "supported"
    claims, cells = report.claims(pd.DataFrame(rows), improving={("d", 1, "first-order")})
    verdicts = cells.set_index("comparison")["verdict"]
    assert verdicts["act+jac - act"] == improving and verdicts["act+ce - ce"] == "supported"
    assert "act+jac still improving" in claims.set_index("claim").loc[report.CLAIMS[1][1], "evidence"]
    _, cells = report.claims(pd.DataFrame(rows), improving={("d", 1, "zeroth-order")})  # now the baseline rises
    verdicts = cells.set_index("comparison")["verdict"]
    assert verdicts["act+jac - act"] == ("contradicted" if plain == "contradicted" else "not resolved")


# ---- the new claim rows and tables ------------------------------------------------------------------------

def test_the_jacobian_loss_squared_vs_ce_and_practitioner_rows_compare_within_seeds():
    methods = {"act+jac": 70, "act+jacn": 72, "act+jac+ce": 71, "act+jacn+ce": 71, "soft+softjac": 60,
               "noisy": 65, "hinton": 70}
    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "per_class": pc, "method": m, "seed": s, "n_train": 10 * pc, "train_seconds": 1.0 + len(m),
             "test_accuracy": a + 3 * s + rng.normal(0, 0.1),
             "diverged_at_step": 70 if m == "soft+softjac" and pc == 5 and s < 2 else None}
            for pc in (5, 100) for m, a in methods.items() for s in range(4)]
    claims, cells = report.claims(pd.DataFrame(rows))
    verdict = claims.set_index("claim")["verdict"]
    keys = {key: text for key, text, _ in report.CLAIMS}
    assert verdict[keys["jacobian-loss"]] == "partly supported"  # +2 with act, equal with act+ce
    assert verdict[keys["squared-vs-ce"]] == "supported"
    evidence = claims.set_index("claim").loc[keys["squared-vs-ce"], "evidence"].split("; ")
    assert evidence[0].startswith("d, per_class 5") and evidence[0].endswith("(soft+softjac: 2 of 4 runs diverged)")
    assert "diverged" not in evidence[1]  # per_class 100: none did
    claims, cells = report.claims(pd.DataFrame(rows), improving={("d", 5, "first-order")})
    verdicts = cells.set_index(["where", "comparison"])["verdict"]
    assert verdicts["d, per_class 5", "act+jac - soft+softjac"] == "supported"  # half of soft+softjac's runs stopped
    assert verdicts["d, per_class 5", "act+jacn - act+jac"] == "not resolved"  # both first-order, still improving
    assert verdict[keys["practitioner"]] == "partly supported"  # beats noisy, ties hinton
    practitioner = cells[cells["claim"] == "practitioner"]
    assert set(practitioner["where"]) == {"d, per_class 5"}  # low data only
    table = report.practitioner_table(pd.DataFrame(rows))
    assert list(table["method"]) == ["act+jac", "noisy", "hinton"]  # low data only, like the claim
    row = table.set_index(["per_class", "method"]).loc[(5, "noisy")]
    assert row["time / act+jac"] == round(6.0 / 8.0, 2) and row["paired difference from act+jac"].startswith("-5.")


def test_the_penalty_claim_pairs_every_strength_with_none_within_seeds():
    rng = np.random.default_rng(1)  # each network its own luck besides the seed's
    rows = [{"dataset": "d", "route": "penalty", "strength": lam, "seed": s, "sigma": sigma, "draw": 0,
             "accuracy": 70 + 2 * s - 30 * sigma + 20 * lam * sigma - 0.1 * lam + rng.normal(0, 0.05)}
            for lam in (0.0, 0.1, 1.0) for s in range(5) for sigma in (0.0, 0.2)]
    claims, cells = report.claims(robustness=pd.DataFrame(rows))
    noise = cells[cells["claim"] == "penalty-noise"]
    assert list(noise["comparison"]) == ["strength 0.1 - strength 0", "strength 1 - strength 0"]
    assert np.allclose(noise["diff"], [0.4 - 0.01, 4.0 - 0.1], atol=0.1) and (noise["sd"] > 0.01).all()
    assert (noise["n"] == 5).all() and (noise["verdict"] == "supported").all()
    texts = [text for key, text, _ in report.CLAIMS if key in ("penalty-noise", "penalty-clean")]
    assert list(claims.set_index("claim").loc[texts, "verdict"]) == ["supported", "supported"]


# ---- the profile and the grid ------------------------------------------------------------------------------

def test_steps_seeds_and_methods_per_per_class():
    p = profiles.get("cpu", student_steps={1: 100, 10: 400, 100: 800}, jacobian_steps={1: 200, 10: 1600},
                     grid_seeds={1: 6}, extra_methods={10: ("noisy",)})
    assert [p.steps_for(pc) for pc in (1, 2, 5, 10, 30, 100, "full")] == [100, 100, 400, 400, 400, 800, 800]
    assert [p.steps_for(pc, first_order=True) for pc in (1, 10, "full")] == [200, 1600, 1600]
    assert p.student_epochs_for(100, 128, per_class=10) == 400 and p.student_epochs_for(1000, 128, 100) == 100
    assert p.seeds_for(1) == tuple(range(6)) and p.seeds_for(5) == p.seeds
    assert p.methods_for(10)[-1] == "noisy" and "noisy" not in p.methods_for(50)


def test_a_method_with_a_jacobian_or_noise_term_gets_the_first_order_steps(tmp_path, monkeypatch):
    from jkt.experiments import distill

    p = profiles.get("smoke", student_steps=10, jacobian_steps=30)
    monkeypatch.setitem(profiles.PROFILES, "smoke", p)
    plan = distill.plan("smoke", methods=["ce", "act", "act+jac", "noisy", "hinton"], results=tmp_path)
    n_batches = math.ceil(5 * 10 / p.batch_size)
    assert [plan.run_config(m, 0)["epochs"] * n_batches for m in plan.methods] == [10, 10, 30, 30, 10]
    assert plan.run_config("act+jac", 0) != distill.plan("smoke", steps=10, results=tmp_path).run_config("act+jac", 0)


def test_the_batch_runs_each_cells_seeds_and_methods_and_the_learning_curves(tmp_path, monkeypatch):
    p = profiles.get("cpu", student_steps={1: 100, 100: 800}, jacobian_steps={1: 400, 100: 800},
                     per_class_grid={"fashion-mnist": (1, 100)},
                     grid_seeds={1: 5}, seeds_per_job={1: 2}, extra_methods={1: ("noisy",)},
                     curves={"methods": ("act", "act+jac"), "factors": (0.5, 1, 2), "seeds": (0, 1)})
    monkeypatch.setitem(profiles.PROFILES, "cpu", p)
    jobs = grid.plan("cpu", only=["distill", "curves"], out=tmp_path)
    cells = [(j.parameters["per_class"], j.parameters["seeds"], "noisy" in j.parameters["methods"])
             for j in jobs if "steps" not in j.parameters]
    assert cells == [(100, [s], False) for s in range(3)] + [(1, [0, 1], True), (1, [2, 3], True), (1, [4], True)]
    assert [j.name for j in jobs][3:6] == ["fashion-mnist-per_class1-seed0-1", "fashion-mnist-per_class1-seed2-3",
                                           "fashion-mnist-per_class1-seed4"]  # the longest cells first
    extra = [(j.parameters["per_class"], j.parameters["steps"], j.parameters["seeds"], j.parameters["methods"])
             for j in jobs if "steps" in j.parameters]
    assert extra == [(100, 1600, [0, 1], ["act", "act+jac"]), (100, 400, [0, 1], ["act", "act+jac"]),
                     (1, 800, [0, 1], ["act+jac"]), (1, 200, [0, 1], ["act", "act+jac"]), (1, 50, [0, 1], ["act"])]
    assert len(grid.plan("cpu", only=["distill"], seeds=2, out=tmp_path)) == 1 + 2  # per_class 1: one job of 2 seeds


def test_a_student_that_diverges_is_recorded_as_such_and_the_grid_goes_on(tmp_path, monkeypatch):
    from jkt.experiments import distill
    from jkt.train import History, NonFiniteLoss

    real_fit = distill.fit

    def fit(student, *args, **kwargs):
        if kwargs["desc"].startswith("act+jac "):
            history = History()
            history.steps, history.seconds = 7, 0.1
            raise NonFiniteLoss("non-finite loss nan at epoch 7, step 0", float("nan"), {"jac": float("nan")}, history)
        return real_fit(student, *args, **kwargs)

    monkeypatch.setattr(distill, "fit", fit)
    plan = distill.plan("smoke", methods=["act", "act+jac", "ce"], results=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="act\\+jac seed 0 diverged at step 7"):
        records = plan.run().set_index("method")
    assert len(records) == 3 and records.loc["act+jac", "diverged_at_step"] == 7
    assert records["diverged_at_step"].drop("act+jac").isna().all()
    assert 0 <= records.loc["act+jac", "test_accuracy"] <= 100  # measured on the network it left
    table = report.distillation_table(records.reset_index().assign(dataset="digits", per_class=5), "digits")
    assert table[(5, "ours")]["act+jac"].endswith("(1 diverged)") and "diverged" not in table[(5, "ours")]["ce"]
