"""The transfer plan (notebook 05): validation before any file is written, the six rows run and resume, the paper
path on a tiny ResNet and a tiny image folder, the missing-weights and missing-data errors, attention pairing."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from jkt import models, store
from jkt.data import load
from jkt.losses import attention_map
from jkt.data import restrict_classes
from jkt.experiments.transfer import METHODS, method_objective, paired_gains, transfer_table
from jkt.experiments.transfer import plan as plan_transfer
from jkt.lwf import TeacherBatch, attention_pooled, build_student, pair_stages, stage_sizes


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Data (checkpoints), results and TORCH_HOME all under tmp_path."""
    monkeypatch.setenv("JKT_DATA", str(tmp_path / "data"))
    (tmp_path / "torch").mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def write_image_folder(root, classes=("bedroom", "kitchen", "office"), train=5, test=2, seed=0):
    """MIT Indoor 67's layout in miniature: Images/<class>/*.jpg|png and the official split lists (one
    unlisted image per class, which the loader must ignore)."""
    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    for k, c in enumerate(classes):
        (root / "Images" / c).mkdir(parents=True)
        for i in range(train + test + 1):
            pixels = rng.integers(0, 120, (30 + i, 40, 3)).astype(np.uint8)
            pixels[:, :, k % 3] += 120  # a class colour, so there is something to learn
            name = f"{c}_{i}.{'jpg' if i % 2 else 'png'}"
            Image.fromarray(pixels).save(root / "Images" / c / name)
            if i < train + test:
                lines["train" if i < train else "test"].append(f"{c}/{name}")
    (root / "TrainImages.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "TestImages.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


@pytest.mark.parametrize("kwargs, name", [
    (dict(profile="laptop"), "profile"),
    (dict(setting="online"), "setting"),
    (dict(dataset="mnist"), "dataset"),
    (dict(setting="paper", dataset="digits"), "dataset"),
    (dict(methods=["lwf", "magic"]), "methods"),
    (dict(methods='["lwf", "magic"]'), "methods"),  # how papermill -p passes a list
    (dict(methods="lwf"), "methods"),
    (dict(methods=[]), "methods"),
    (dict(methods=["lwf", "lwf"]), "methods"),
    (dict(per_class=0), "per_class"),
    (dict(per_class="ten"), "per_class"),
    (dict(per_class=10_000), "per_class"),
    (dict(seeds=[0, 0]), "seeds"),
    (dict(temperature=0), "temperature"),
    (dict(lwf_form="cosine"), "lwf_form"),
    (dict(jacobian_loss="cosine"), "jacobian_loss"),
    (dict(attention_layers="stage1"), "attention_layers"),
    (dict(attention_layers=["stage9:stage1"]), "attention_layers"),
    (dict(attention_layers=["stage1:stage2"]), "attention_layers"),  # 8x8 against 4x4
    (dict(source_classes=[0, 1, 2, 3, 5]), "source_classes"),      # overlaps the target classes
    (dict(target_classes=[5, 6, 10]), "target_classes"),
    (dict(target_classes=[5]), "target_classes"),
    (dict(image_size=4), "image_size"),
    (dict(teacher_arch="resnet18"), "teacher_arch"),                # offline teachers are VGGs
    (dict(setting="paper", source_classes=[0, 1]), "source_classes"),
    (dict(attention_weight=-1.0), "attention_weight"),
    (dict(device="cuda:7"), "device"),
])
def test_bad_parameters_are_rejected_before_any_file_is_written(sandbox, kwargs, name):
    if kwargs.get("device") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    args = dict(profile="smoke", results=sandbox / "results", progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        plan_transfer(**args)
    assert not (sandbox / "results").exists() and not (sandbox / "data").exists()


def test_restrict_classes_keeps_and_relabels():
    data = load("digits")
    part = restrict_classes(data, [7, 3])
    assert part.classes == ["7", "3"] and part.num_classes == 2
    for split, full in ((part.train, data.train), (part.test, data.test)):
        assert sorted(split.y.unique().tolist()) == [0, 1]
        assert (split.y == 0).sum() == (full.y == 7).sum() and (split.y == 1).sum() == (full.y == 3).sum()
        assert torch.equal(split.x[split.y == 1], full.x[full.y == 3])  # order kept


def test_attention_pairing_picks_equal_spatial_sizes():
    student = {"stage1": (8, 8), "stage2": (4, 4), "stage3": (2, 2), "stage4": (1, 1)}
    teacher = {"stage1": (4, 4), "stage2": (2, 2), "stage3": (1, 1), "stage4": (1, 1)}
    assert pair_stages(student, teacher) == [("stage2", "stage1"), ("stage3", "stage2")]  # 1x1 maps are constant
    # the poster's pair of architectures at a tiny size: VGG-9 student, ResNet-18 teacher on 32x32 images
    s = stage_sizes(models.build("vgg9", 3, 5, 1 / 16), 3, 32)
    t = stage_sizes(models.build_resnet("resnet18", 3, 10), 3, 32)
    pairs = pair_stages(s, t)
    assert pairs == [("stage3", "stage1"), ("stage4", "stage2"), ("stage5", "stage3")]
    assert all(s[a] == t[b] for a, b in pairs)


def test_cached_teacher_maps_have_the_teachers_attention():
    feature = torch.randn(3, 7, 5, 5, dtype=torch.float64)
    assert attention_pooled(feature).shape == (3, 1, 5, 5)
    assert torch.allclose(attention_map(attention_pooled(feature)), attention_map(feature))


def test_matching_yourself_costs_nothing_but_cross_entropy():
    """The objective's wiring: a student matched to its own source outputs, source Jacobians and attention maps
    (eval mode, so per sample) has zero LwF, Jacobian and attention terms."""
    torch.manual_seed(0)
    student = build_student("vgg4", 1, 3, 4, 1 / 8).double().eval()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    xr = x.clone().requires_grad_(True)
    _, source, features = student.heads(xr)
    index = source.argmax(1)
    (grad,) = torch.autograd.grad(source.gather(1, index[:, None]).sum(), xr)
    batch = TeacherBatch(source.detach(), {"stage2": attention_pooled(features["stage2"])})
    objective = method_objective("lwf+att+jac", pairs=[("stage2", "stage2")])
    terms = objective.terms(student, x, y, batch, grad, index)
    assert set(terms) == {"ce", "lwf", "jac", "att"}
    assert terms["ce"] > 0 and max(terms[k].detach().item() for k in ("lwf", "jac", "att")) < 1e-20
    assert method_objective("lwf", temperature=9.0) == method_objective("lwf")  # unused options leave keys alone
    assert method_objective("lwf", lwf_form="kl", temperature=9.0).temperature == 9.0


def test_smoke_plan_runs_all_six_rows_and_resumes(sandbox):
    plan = plan_transfer("smoke", methods=list(reversed(METHODS)), results=sandbox / "r", progress=False)
    assert plan.methods == list(METHODS)  # the poster's order
    assert plan.attention_pairs and all(len(p) == 2 for p in plan.attention_pairs)
    assert plan.pending() == [(m, 0) for m in METHODS]
    df = plan.run()
    assert list(df["method"]) == list(METHODS)
    assert df["test_accuracy"].between(0, 100).all()
    assert (df["seconds"] > 0).all() and (df["peak_memory_mb"] > 0).all() and df["teacher_source_accuracy"].notna().all()
    assert plan.pending() == []
    files = sorted((sandbox / "r").glob("*.json"))
    assert len(files) == 6 and not list((sandbox / "r").glob("*.tmp"))
    before = [f.read_text() for f in files]
    plan.run()  # nothing to do: records untouched, the teacher not retrained
    assert [f.read_text() for f in files] == before
    assert len(list((sandbox / "data" / "checkpoints").glob("*.pt"))) == 1
    record = json.loads(files[0].read_text())
    assert record["key"] == store.config_hash(record["config"]) and record["config"]["kind"] == "transfer"
    table = plan.table()
    assert list(table.index) == list(METHODS) and (table["seeds"] == 1).all() and "poster" not in table
    # another seed is a new run; the finished ones are kept
    assert plan_transfer("smoke", seeds=[0, 1], results=sandbox / "r", progress=False).pending() == \
        [(m, 1) for m in METHODS]


def test_paper_path_runs_on_a_tiny_resnet_and_image_folder(sandbox):
    folder = write_image_folder(sandbox / "indoor")
    plan = plan_transfer("smoke", "paper", dataset=f"imagefolder:{folder}", teacher_arch="resnet18",
                         teacher_pretrained=False, image_size=32, per_class=4, results=sandbox / "r", progress=False)
    assert plan.data.num_classes == 3 and len(plan.data.train) == 15 and len(plan.data.test) == 6
    assert plan.data.image_size == (32, 32) and plan.num_source == 1000
    assert plan.attention_pairs == [("stage3", "stage1"), ("stage4", "stage2"), ("stage5", "stage3")]
    df = plan.run()
    assert list(df["method"]) == list(METHODS) and df["test_accuracy"].between(0, 100).all()
    assert plan.pending() == []
    configs = [json.loads(f.read_text())["config"] for f in (sandbox / "r").glob("*.json")]
    assert {c["model"] for c in configs} == {"resnet18", "vgg9"} and {c["setting"] for c in configs} == {"paper"}
    table = plan.table()
    assert "poster" in table and table["poster"].isna().all()  # 3 classes, 4 per class: not a poster cell
    mit = transfer_table(df, METHODS, "paper", 25, num_classes=67)
    assert mit.loc["lwf+att+jac", "poster"] == 47.31 and mit.loc["scratch", "poster"] == 35.19


def test_missing_imagenet_weights_say_where_to_put_them(sandbox):
    folder = write_image_folder(sandbox / "indoor")
    with pytest.raises(FileNotFoundError) as err:
        plan_transfer("smoke", "paper", dataset=f"imagefolder:{folder}", teacher_arch="resnet18",
                      results=sandbox / "r", progress=False)
    message = str(err.value)
    assert str(sandbox / "torch" / "hub" / "checkpoints") in message and "TORCH_HOME" in message
    assert not (sandbox / "r").exists()


def test_missing_mit_indoor_says_where_to_put_it(sandbox):
    with pytest.raises(FileNotFoundError, match="MIT Indoor 67") as err:
        plan_transfer("smoke", "paper", teacher_pretrained=False, results=sandbox / "r", progress=False)
    assert "TrainImages.txt" in str(err.value) and "mit-indoor-67" in str(err.value)
    assert not (sandbox / "r").exists()


def test_image_size_resizes_on_the_device(sandbox):
    plan = plan_transfer("smoke", image_size=16, methods=["scratch"], results=sandbox / "r", progress=False)
    assert plan.data.image_size == (16, 16) and plan.source_data.image_size == (16, 16)
    assert plan.data.train.x.shape[-2:] == (8, 8)  # stored at the native size
    assert plan.data.normalize(plan.data.train.x[:3]).shape == (3, 1, 16, 16)
    assert plan.teacher_config()["image_size"] == 16  # a different teacher from the 8x8 one


def test_paired_gains_compare_seed_by_seed():
    import pandas as pd

    records = pd.DataFrame({"method": ["scratch", "lwf", "scratch", "lwf", "scratch"], "seed": [0, 0, 1, 1, 2],
                            "test_accuracy": [50.0, 53.0, 70.0, 71.0, 60.0]})
    gains = paired_gains(records)
    assert list(gains.index) == ["lwf"] and gains.loc["lwf", "seeds"] == 2 and gains.loc["lwf", "wins"] == 2
    assert gains.loc["lwf", "gain"] == pytest.approx(2.0) and gains.loc["lwf", "std"] == pytest.approx(2 ** 0.5)
    assert paired_gains(records, "finetune").empty
