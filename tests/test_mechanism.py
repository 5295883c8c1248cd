"""The mechanism metrics against independent computations (torch.func per-sample gradients, a direct Monte
Carlo), and the pairing the report relies on: every method of a seed shares its subset and initial weights."""
import tempfile

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from jkt import mechanism
from jkt.experiments import distill


def label_grads(model, x, index):
    params = dict(model.named_parameters())
    onehot = nn.functional.one_hot(index, 3).double()

    def out(xb, oh):
        return (functional_call(model, params, (xb[None],))[0] * oh).sum()

    return vmap(grad(out))(x, onehot)


def test_mechanism_metrics_against_torch_func_and_a_direct_monte_carlo(tiny_data):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    teacher, student = make(), make()
    data = tiny_data
    data.train.x, data.test.x = data.train.x[:, :1], data.test.x[:, :1]
    data.test.y = data.test.y % 3
    data.mean, data.std = data.mean[:1], data.std[:1]
    ref = mechanism.reference(teacher, data, data.test, images=20, sigmas=(0.2,), draws=3, seed=5, device="cpu")
    assert ref.x.dtype == torch.float64 and len(ref.x) == 20 and ref.z.shape == (3, *ref.x.shape)
    torch.testing.assert_close(ref.grads["top1"], label_grads(teacher, ref.x, teacher(ref.x).argmax(1)))
    m = mechanism.metrics(student, ref)
    g_s, g_t = label_grads(student, ref.x, ref.y), label_grads(teacher, ref.x, ref.y)
    cos = nn.functional.cosine_similarity(g_s.flatten(1), g_t.flatten(1)).mean().detach()
    assert m["mech_grad_cos_label"] == pytest.approx(float(cos), rel=1e-9)
    assert m["mech_grad_rse_label"] == pytest.approx(float((g_s - g_t).pow(2).sum() / g_t.pow(2).sum()), rel=1e-9)
    with torch.no_grad():
        s, t = student(ref.x), teacher(ref.x)
        assert m["mech_top1_agreement"] == pytest.approx(100 * float((s.argmax(1) == t.argmax(1)).double().mean()))
        assert m["mech_act_error"] == pytest.approx(float((s - t).pow(2).sum(1).mean()), rel=1e-9)
        mc = torch.stack([(student(ref.x + 0.2 * z) - teacher(ref.x + 0.2 * z)).pow(2).sum(1) for z in ref.z]).mean()
    assert m["mech_noisy_error_0.2"] == pytest.approx(float(mc), rel=1e-9)
    assert mechanism.metrics(teacher, ref)["mech_grad_cos_top1"] == pytest.approx(1.0)  # the teacher vs itself


def test_the_methods_of_a_seed_share_its_subset_and_initial_weights():
    plan = distill.plan("smoke", methods=["ce", "act+jac"], seeds=[0, 1], results=tempfile.mkdtemp(), progress=False)
    records = plan.run()
    for column in ("subset_fingerprint", "init_fingerprint"):
        per_seed = records.groupby("seed")[column].nunique()
        assert (per_seed == 1).all(), column  # the same within a seed
        assert records.groupby("method")[column].nunique().eq(2).all(), column  # and different across seeds
