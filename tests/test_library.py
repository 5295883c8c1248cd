"""jkt as a library in someone else's training loop: the README's example runs as written, the loss module
matches an independent per-sample computation, and the BatchNorm swap changes nothing but speed."""
import copy
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import jkt

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Jacobian matching in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_own_loop_example_runs_and_trains(capsys):
    torch.manual_seed(0)
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    terms = namespace["terms"]
    assert set(terms) == {"ce", "act", "jac", "loss"} and all(torch.isfinite(v) for v in terms.values())
    assert isinstance(namespace["student"], nn.Module)
    assert any(isinstance(m, jkt.BatchNorm2d) for m in namespace["student"].modules())
    assert "'loss':" in capsys.readouterr().out


def test_the_loss_module_is_the_per_sample_sum_of_the_papers_terms():
    """Against torch.func's per-sample input gradients on BatchNorm-free nets (so batched = per sample), float64."""
    from torch.func import grad, vmap

    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    teacher, student = make(), make()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    terms = jkt.JacobianMatching(teacher, "act+jac+ce")(student, x, y)

    def label_logit(model, xb, onehot):
        return (torch.func.functional_call(model, dict(model.named_parameters()), (xb[None],))[0] * onehot).sum()

    onehots = nn.functional.one_hot(y, 5).double()
    g_t = vmap(grad(label_logit, argnums=1), in_dims=(None, 0, 0))(teacher, x, onehots)
    g_s = vmap(grad(label_logit, argnums=1), in_dims=(None, 0, 0))(student, x, onehots)
    with torch.no_grad():
        t, s = teacher(x), student(x)
    torch.testing.assert_close(terms["jac"], (g_t - g_s).pow(2).flatten(1).sum(1).mean())
    torch.testing.assert_close(terms["act"], (t - s).pow(2).sum(1).mean())
    torch.testing.assert_close(terms["ce"], nn.functional.cross_entropy(s, y))
    torch.testing.assert_close(terms["loss"], terms["ce"] + terms["act"] + terms["jac"])
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is not None for p in student.parameters())


def test_top1_needs_no_labels_and_unsupported_objectives_are_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    loss = jkt.JacobianMatching(net, "jac+ce", jacobian_output="top1", alpha=0.0)
    assert set(loss(copy.deepcopy(net), torch.randn(4, 1, 4, 4), torch.zeros(4, dtype=torch.long))) == {"jac", "loss"}
    with pytest.raises(ValueError, match="full Jacobians"):
        jkt.JacobianMatching(net, "act+jac+ce", jacobian_output="all")


def test_swapping_in_the_fast_batchnorm_keeps_outputs_and_gradients_of_a_torchvision_model():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10).double().train()
    fast = jkt.use_fast_batchnorm(copy.deepcopy(plain))
    assert sum(isinstance(m, jkt.BatchNorm2d) for m in fast.modules()) == 20
    assert not any(type(m) is nn.BatchNorm2d for m in fast.modules())
    assert plain.state_dict().keys() == fast.state_dict().keys()
    teacher = torchvision.models.resnet18(num_classes=10).double().eval()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    losses = [jkt.JacobianMatching(teacher, "act+jac+ce")(m, x, y)["loss"] for m in (plain, fast)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for m, loss in zip((plain, fast), losses):
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)
    for a, b in zip(plain.buffers(), fast.buffers()):
        torch.testing.assert_close(a, b)


def test_the_fast_batchnorm_is_importable_after_import_jkt():
    assert jkt.batchnorm.BatchNorm2d is jkt.BatchNorm2d
    with pytest.raises(AttributeError):
        jkt.no_such_thing


def test_fit_and_the_teacher_cache_take_a_torch_dataset_or_dataloader_and_train_alike(tiny_data):
    """The same images as a jkt Split and as a TensorDataset (already normalised) or DataLoader: the same seed
    gives the same batches, so the same weights (float32, CPU: bit for bit)."""
    from torch.utils.data import DataLoader, TensorDataset

    from jkt import models, teachers, train
    from jkt.losses import preset

    data = tiny_data
    split = data.train
    torch.manual_seed(0)
    teacher = models.build("vgg4", data.in_channels, data.num_classes, 1 / 16).eval()
    mine = TensorDataset(data.normalize(split.x), split.y)
    objective = preset("act+jac+ce")
    weights = []
    for source, jkt_data in ((split, data), (mine, None), (DataLoader(mine, batch_size=16), None)):
        targets = teachers.teacher_targets(teacher, jkt_data, source, device="cpu")
        torch.manual_seed(1)
        student = models.build("vgg4", data.in_channels, data.num_classes, 1 / 16)
        history = train.fit(student, jkt_data, source, objective, epochs=2, batch_size=16, seed=3, device="cpu",
                            teacher_targets=targets, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
        assert history.steps == 2 * ((len(split) + 15) // 16)
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0)
    torch.testing.assert_close(weights[2], weights[0], rtol=0, atol=0)
