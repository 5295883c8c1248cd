"""The fast paths give the plain paths' results: jkt.batchnorm's double backward (gradcheck in float64, whole
training steps against PyTorch's BatchNorm), the parameters-only backward, full-Jacobian matching (loop,
batched, random projections against torch.func), the cached teacher (never called after the cache is
built), and the benchmark's output. No timing is asserted anywhere: timings are the benchmark's job."""
import copy
import json

import pytest
import torch
from torch import nn

from jkt import bench, models
from jkt.__main__ import main
from jkt.batchnorm import BatchNorm2d, _BatchNormBackward
from jkt.jacobian import full_jacobian, full_jacobian_matching
from jkt.losses import Objective, preset
from jkt.teachers import teacher_targets
from jkt.train import fit, training_step


def batch(n=6, size=8, channels=1, classes=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, channels, size, size, generator=g, dtype=dtype),
            torch.randint(0, classes, (n,), generator=g))


# ---------------------------------------------------------------- the BatchNorm double backward

def _stats(x, eps):
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), (x.var(dims, unbiased=False) + eps).rsqrt()


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_second_backward_passes_gradcheck(affine):
    """The closed-form second backward against finite differences of the first backward (PyTorch's kernel),
    with the batch statistics recomputed from the perturbed input: every path (gy, x, w) is covered."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def first_backward(gy, x, *weight):
        mean, rstd = _stats(x.detach(), 1e-5)
        return _BatchNormBackward.apply(gy, x, weight[0] if weight else None, mean, rstd, 1e-5)

    args = (gy, x, w) if affine else (gy, x)
    assert torch.autograd.gradcheck(first_backward, args)


def _double_backward_step(model, x, y, target):
    """CE + Jacobian matching through ``model`` in train mode: the loss, its parameter gradients, the
    updated running statistics."""
    from jkt.jacobian import output_and_input_gradient
    from jkt.losses import cross_entropy, jacobian_matching

    logits, g, _ = output_and_input_gradient(model, x, y, create_graph=True)
    loss = cross_entropy(logits, y) + jacobian_matching(g, target)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    stats = [b.clone() for b in model.buffers()]
    return loss.detach(), [torch.zeros(()) if t is None else t for t in grads], stats


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_fast_batchnorm_vgg_matches_pytorch_batchnorm(dtype, tol):
    """A VGG with jkt's BatchNorm and one with PyTorch's, same weights: the same logits, the same
    Jacobian-matching loss, the same gradients (float tolerance), the same running statistics."""
    torch.manual_seed(0)
    fast = models.build("vgg4", 1, 4, 0.125).to(dtype).train()
    plain = models.build("vgg4", 1, 4, 0.125, fast_batchnorm=False).to(dtype).train()
    plain.load_state_dict(fast.state_dict())
    assert any(isinstance(m, BatchNorm2d) for m in fast.modules())
    assert not any(isinstance(m, BatchNorm2d) for m in plain.modules())
    x, y = batch(8, 12, dtype=dtype)
    target = 0.1 * torch.randn_like(x)
    loss_f, grads_f, stats_f = _double_backward_step(fast, x, y, target)
    loss_p, grads_p, stats_p = _double_backward_step(plain, x, y, target)
    assert torch.allclose(loss_f, loss_p, rtol=tol, atol=0)
    for a, b in zip(grads_f, grads_p):
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())
    for a, b in zip(stats_f, stats_p):
        assert torch.equal(a, b)
    fast.eval(), plain.eval()
    assert torch.equal(fast(x), plain(x))


def test_fast_batchnorm_without_affine_and_without_bias():
    for kwargs in [dict(affine=False), dict(affine=True)]:
        ref, bn = nn.BatchNorm2d(3, **kwargs).double(), BatchNorm2d(3, **kwargs).double()
        if kwargs["affine"]:
            ref.bias = bn.bias = None
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        res = []
        for m in (ref, bn):
            xx = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad((m(xx) ** 3).sum(), xx, create_graph=True)
            res.append(torch.autograd.grad(g.pow(2).sum(), [xx] + list(m.parameters())))
        for a, b in zip(*res):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_fast_batchnorm_under_is_grads_batched_and_torch_func():
    """Under vmap the layer takes the composite path: batched gradients equal the loop over outputs, and a
    torch.func ensemble (functional_call under vmap) runs."""
    torch.manual_seed(0)
    student = models.build("vgg4", 1, 4, 0.125).double().train()
    x, _ = batch(6, 8)
    teacher_jac = 0.01 * torch.randn(6, 4, 1, 8, 8, dtype=torch.float64)
    grads = {}
    for method in ("loop", "batched"):
        _, d = full_jacobian_matching(student, x, teacher_jac, method)
        grads[method] = torch.autograd.grad(d.mean(), list(student.parameters())[:-1])
    for a, b in zip(grads["loop"], grads["batched"]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    from torch.func import functional_call, stack_module_state, vmap

    copies = [models.build("vgg4", 1, 4, 0.125).double() for _ in range(2)]
    params, buffers = stack_module_state(copies)
    out = vmap(lambda p, b: functional_call(copies[0], (p, b), (x,)))(params, buffers)
    for i, m in enumerate(copies):
        assert torch.allclose(out[i], m(x), rtol=1e-10, atol=1e-12)


def test_state_dict_is_pytorch_batchnorm_s():
    fast, plain = models.build("vgg4", 1, 4, 0.125), models.build("vgg4", 1, 4, 0.125, fast_batchnorm=False)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fast.state_dict())


# ---------------------------------------------------------------- the parameters-only backward

def test_training_step_with_params_equals_plain_backward():
    """training_step(params=...) (the input gets no gradient) moves the weights exactly as loss.backward()."""
    torch.manual_seed(0)
    a = models.build("vgg4", 1, 4, 0.125).double()
    b = copy.deepcopy(a)
    x, y = batch(8, 8)
    targets = (torch.randn(8, 4, dtype=torch.float64), 0.1 * torch.randn_like(x), y)
    objective = preset("act+jac+ce")
    out = []
    for model, params in ((a, list(a.parameters())), (b, None)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss, terms = training_step(model, opt, objective, x, y, targets, params=params)
        out.append((loss, [p.grad.clone() if p.grad is not None else None for p in model.parameters()]))
    assert torch.equal(out[0][0], out[1][0])
    for ga, gb in zip(out[0][1], out[1][1]):
        assert (ga is None and gb is None) or torch.allclose(ga, gb, rtol=1e-12, atol=0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- full-Jacobian matching

def test_full_jacobian_matching_exact_methods_against_torch_func(make_vgg):
    """In eval mode the loop and the batched pass equal the distance computed from torch.func Jacobians."""
    student, teacher = make_vgg(seed=0), make_vgg(seed=1, name="vgg9", width=0.03)
    x, _ = batch(5, 8)
    teacher_jac = full_jacobian(teacher, x)
    exact = (full_jacobian(student, x) - teacher_jac).flatten(1).pow(2).sum(1)
    for method in ("loop", "batched"):
        logits, d = full_jacobian_matching(student, x, teacher_jac, method)
        assert torch.allclose(d, exact, rtol=1e-10, atol=0)
        assert torch.allclose(logits, student(x))


def test_projection_estimator_is_unbiased_value_and_gradient(make_mlp):
    """The mean over many Gaussian projections converges to the exact distance and to its parameter
    gradient (a smooth MLP: per-sample in any mode). 4000 projections: relative MC error ~2%."""
    student, teacher = make_mlp(seed=0), make_mlp(seed=1)
    x, _ = batch(3, 8)
    teacher_jac = full_jacobian(teacher, x)
    _, exact = full_jacobian_matching(student, x, teacher_jac, "loop")
    weights = list(student.parameters())[:-1]  # the last bias does not change the Jacobian
    g_exact = torch.autograd.grad(exact.sum(), weights)
    gen = torch.Generator().manual_seed(0)
    _, est = full_jacobian_matching(student, x, teacher_jac, "projection", projections=4000, generator=gen)
    g_est = torch.autograd.grad(est.sum(), weights)
    assert torch.allclose(est, exact, rtol=0.08)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    assert (flat(g_est) - flat(g_exact)).norm() < 0.1 * flat(g_exact).norm()
    # and one projection is not the exact value (it is an estimate)
    _, one = full_jacobian_matching(student, x, teacher_jac, "projection", 1, gen)
    assert not torch.allclose(one, exact, rtol=0.01)


def test_full_jacobian_matching_checks_shapes():
    student = models.build("mlp", 1, 4, image_size=(8, 8)).double()
    x, _ = batch(3, 8)
    with pytest.raises(ValueError, match="expected"):
        full_jacobian_matching(student, x, torch.zeros(3, 4, 1, 8, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        full_jacobian_matching(student, x, torch.zeros(3, 4, 1, 8, 8, dtype=torch.float64), "exact")


def test_objective_all_outputs():
    with pytest.raises(ValueError, match="squared"):
        Objective(gamma=1.0, jacobian_output="all", jacobian_loss="normalized")
    with pytest.raises(ValueError, match="projections >= 1"):
        Objective(penalty=1.0, jacobian_output="all")
    student = models.build("mlp", 1, 4, image_size=(8, 8)).double()
    x, y = batch(3, 8)
    jac = torch.zeros(3, 4, 1, 8, 8, dtype=torch.float64)
    terms = Objective(gamma=1.0, jacobian_output="all", projections=0).terms(
        student, x, y, torch.zeros(3, 4, dtype=torch.float64), jac, y)
    _, exact = full_jacobian_matching(student, x, jac, "loop")
    assert torch.allclose(terms["jac"], exact.mean())


def test_teacher_targets_all_outputs_are_full_jacobians(tiny_data, make_vgg):
    teacher = make_vgg(seed=3)
    targets = teacher_targets(teacher.float(), tiny_data, tiny_data.train, "all", device="cpu")
    x = tiny_data.normalize(tiny_data.train.x[:5])
    assert targets.grad.shape == (len(tiny_data.train), 4, 1, 8, 8)
    assert torch.allclose(targets.grad[:5], full_jacobian(teacher, x), atol=1e-5)


# ---------------------------------------------------------------- the cached teacher costs nothing per epoch

def test_cached_teacher_is_never_called_during_training(tiny_data, make_vgg):
    """teacher_targets runs the teacher once per batch of the subset; fit then never calls it, whatever
    the number of epochs."""
    teacher = make_vgg(seed=3).float()
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    targets = teacher_targets(teacher, tiny_data, tiny_data.train, batch_size=16, device="cpu")
    assert len(calls) == 3  # 48 images in batches of 16
    student = models.build("vgg4", 1, 4, 0.125)
    fit(student, tiny_data, tiny_data.train, preset("act+jac+ce"), epochs=3, batch_size=16, device="cpu",
        teacher_targets=targets)
    assert len(calls) == 3


# ---------------------------------------------------------------- the benchmark

def test_bench_runs_every_case_and_reports_multiples(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--widths", "cpu", "--batch-size", "4", "--image-size", "8", "--channels", "1",
               "--repeats", "1", "--warmup", "0", "--threads", "1", "--seeds", "2", "--quiet", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["host"]["torch_threads"] == 1 and result["device"] == "cpu"
    rows = {r["case"]: r for r in result["widths"][0]["rows"]}
    assert list(rows) == list(bench.CASES)
    assert rows["ce"]["x_ce"] == 1.0
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["ms"] > 0 and len(row["ms_all"]) == 1
        assert row["x_ce"] == pytest.approx(row["ms"] / rows["ce"]["ms"])
    stacking = result["widths"][0]["seed_stacking"]
    for name in ("ce", "jac"):
        r = stacking[name]
        assert r["speedup"] == pytest.approx(r["sequential_ms"] / r["stacked_ms"])
    text = capsys.readouterr().out
    assert "x CE" in text and "jac/cached" in text and "speed-up" in text and str(out) in text


def test_bench_json_to_stdout_and_case_validation(capsys):
    rc = main(["bench", "--widths", "cpu", "--cases", "jac/cached", "--batch-size", "2", "--image-size", "8",
               "--channels", "1", "--repeats", "1", "--warmup", "0", "--seeds", "0", "--quiet"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [r["case"] for r in result["widths"][0]["rows"]] == ["ce", "jac/cached"]
    assert "seed_stacking" not in result["widths"][0]
    assert "jac/cached" in captured.err
    assert rc == 0
    assert main(["bench", "--cases", "nope", "--quiet"]) == 2


@pytest.mark.parametrize("projections", [0, 2])
def test_fit_matches_full_jacobians_from_the_cache(tiny_data, make_vgg, projections):
    """Full-Jacobian matching trains end to end from cached teacher Jacobians (exact loop or projections),
    and the term goes down."""
    teacher = make_vgg(seed=3).float()
    targets = teacher_targets(teacher, tiny_data, tiny_data.train, "all", device="cpu")
    torch.manual_seed(0)
    student = models.build("vgg4", 1, 4, 0.125)
    objective = Objective(alpha=1.0, gamma=1.0, jacobian_output="all", projections=projections)
    history = fit(student, tiny_data, tiny_data.train, objective, epochs=6, batch_size=16, device="cpu",
                  teacher_targets=targets, lr=1e-2)
    assert history.terms[-1]["jac"] < history.terms[0]["jac"]


def test_bench_load_and_figure(tmp_path, monkeypatch, capsys):
    """--load shows an earlier run without timing anything; --figure plots it under $JKT_FIGURES."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--widths", "cpu", "--cases", "act", "--batch-size", "2", "--image-size", "8",
                 "--channels", "1", "--repeats", "1", "--warmup", "0", "--seeds", "0", "--quiet",
                 "--out", str(out)]) == 0
    monkeypatch.setenv("JKT_FIGURES", str(tmp_path / "figs"))
    capsys.readouterr()
    assert main(["bench", "--load", str(out), "--figure", str(tmp_path / "figs" / "bench_test.png")]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "figs" / "bench_test.png").stat().st_size > 0
    assert json.loads(captured.out) == json.loads(out.read_text())
    assert "act" in captured.err


def test_bench_times_several_batch_sizes(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--widths", "cpu", "--cases", "jac/cached", "--batch-size", "2", "3", "--image-size", "8",
                 "--channels", "1", "--repeats", "1", "--warmup", "0", "--seeds", "0", "--quiet",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [w["setup"]["batch_size"] for w in result["widths"]] == [2, 3]
    assert all(r["x_ce"] > 0 for w in result["widths"] for r in w["rows"])


def test_a_whole_run_is_timed_in_parts_in_its_own_process(tmp_path, capsys):
    """One cpu-profile run at per_class 1 (10 images, 200 steps, the 10,000 test images) of this tree; its JSON
    shown again and plotted by ``bench --load ... --figure``."""
    from jkt import bench_run
    from jkt.data import require

    try:
        require("fashion-mnist")
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not on this machine (make setup installs it): {e}")

    result = bench_run.compare(per_class=(1,), repeats=1)
    row = result["sides"]["this"]["1"]
    assert set(bench_run.PARTS) <= set(row) and all(row[p] > 0 for p in bench_run.PARTS)
    assert abs(row["total"] - sum(row[p] for p in bench_run.PARTS)) < 1e-9
    assert 0 <= row["test_accuracy"] <= 100 and row["runs_per_hour"] == pytest.approx(3600 / row["total"])
    assert "per_class" in bench_run.table(result) and "200 steps" in bench_run.table(result)
    assert result["steps"] == bench_run.BASELINE_STEPS == 200 and result["host"]["torch"]
    saved, figure = tmp_path / "runs.json", tmp_path / "runs.png"
    saved.write_text(json.dumps(result))
    capsys.readouterr()
    assert main(["bench", "--load", str(saved), "--figure", str(figure)]) == 0
    assert figure.stat().st_size > 10_000 and "runs/h" in capsys.readouterr().out
    kept = tmp_path / "kept.json"  # a figure path that fails does not lose the measurement
    assert main(["bench", "--load", str(saved), "--figure", str(tmp_path / "no-suffix"), "--out", str(kept)]) != 0
    assert json.loads(kept.read_text()) == result


@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 5, 7, 7), (1, 3, 6, 9), (2, 2, 1, 4)])
def test_the_no_grad_max_pool_gives_pytorchs_values_bit_for_bit(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    expected = torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
    with torch.no_grad():
        assert torch.equal(models.max_pool_2x2(x), expected)
        assert torch.equal(models.max_pool_2x2(x.contiguous(memory_format=torch.channels_last)), expected)
    x.requires_grad_(True)  # with autograd: PyTorch's own (its backward)
    assert models.max_pool_2x2(x).grad_fn.name().startswith("MaxPool2DWithIndices")


def test_a_vgg_evaluates_to_the_same_logits_with_either_pooling():
    torch.manual_seed(0)
    net = models.build("vgg9", 1, 10, 1 / 8).eval()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        fast = net(x)
    slow = net(x.requires_grad_(True)).detach()  # the autograd path pools with max_pool2d
    assert torch.equal(fast, slow)


def test_channels_last_training_gives_the_same_step_within_float_rounding_and_fit_restores_the_layout():
    """fit trains in channels-last memory format (faster convolutions); one Jacobian-matching step agrees with the
    default layout to float32 rounding, and the trained weights come back in the default layout."""
    from jkt.jacobian import output_and_input_gradient
    from jkt.losses import preset
    from jkt.train import training_step

    torch.manual_seed(0)
    student = models.build("vgg4", 1, 10, 1 / 4).train()
    teacher = models.build("vgg9", 1, 10, 1 / 8).eval()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    targets = output_and_input_gradient(teacher, x, y)
    losses, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        net = copy.deepcopy(student).to(memory_format=layout)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        loss, _ = training_step(net, opt, preset("act+jac+ce"), x.contiguous(memory_format=layout), y, targets,
                                params=list(net.parameters()))
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
