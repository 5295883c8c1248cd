"""Transfer learning (the poster's transfer table): a teacher trained on a source task helps a student of
another architecture learn a target task from few labels, with LwF, Jacobians and attention.

Rows (keys of jkt.paper.TRANSFER_MIT67): ``scratch`` (no transfer), ``finetune`` (the oracle: the
teacher's own architecture and weights, a fresh target head), ``lwf`` (Li & Hoiem: a second, source
head on the student matches the teacher's source outputs on the *target* images), ``lwf+jac`` (plus
Jacobian matching of that head: Proposition 1), ``lwf+att`` (plus attention transfer, Zagoruyko &
Komodakis), ``lwf+att+jac``. The models and the objective are in jkt.lwf.

Two settings. ``offline``: one dataset split by classes (Fashion-MNIST in the cpu profile); the teacher is a
VGG-9 trained on the source classes. ``paper``: an ImageNet-pretrained torchvision ResNet teacher (weights
from the TORCH_HOME cache) and MIT Indoor 67 (``data/mit-indoor-67``), or CIFAR-10, as the target; the
student is a VGG-9. The sizes and schedules of each profile and setting are ``Profile.transfer``.

Like the other experiments: a plan is validated completely when it is made (ValueError naming the
parameter), before any training and before any file is written; each run is one record keyed by its
full config, and finished runs are loaded, not redone.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .. import data as jdata
from ..batching import Batches
from .. import mechanism, models, paper, profiles, store
from ..jacobian import eval_mode
from ..losses import attention_map
from ..lwf import (JACOBIAN_LOSSES, LWF_FORMS, LogitsView, TransferObjective, TransferTargets, build_student,
                   pair_stages, replace_head, stage_sizes, transfer_targets)
from ..profiles import Recipe
from ..report import fmt, mean_std
from ..teachers import get_teacher, teacher_config
from ..train import accuracy, fit, reset_peak_memory, resolve_device, seed_everything
from ..validate import (as_list, check_choice, check_choices, check_per_class, check_positive_int,
                        check_positive_number, check_seeds)
from .common import (check_dataset, check_fits, fingerprint, identity, pending_grid, records_frame, run_metrics,
                     run_pending, used_options)

METHODS = tuple(paper.TRANSFER_MIT67["rows"])  # the poster's row order
METHOD_LABELS = {
    "scratch": "No transfer",
    "finetune": "Fine-tuning oracle",
    "lwf": "LwF",
    "lwf+jac": "LwF + Jacobians",
    "lwf+att": "LwF + attention",
    "lwf+att+jac": "LwF + attention + Jacobians",
}
SETTINGS = ("offline", "paper")
PAPER_DATASETS = ("cifar10", "cifar100")  # besides image folders: the ImageNet teacher needs RGB images

# The supplementary: "all regularization constants are 1".
PRESETS = {
    "scratch": dict(),
    "finetune": dict(),
    "lwf": dict(lwf=1.0),
    "lwf+jac": dict(lwf=1.0, gamma=1.0),
    "lwf+att": dict(lwf=1.0, attention=1.0),
    "lwf+att+jac": dict(lwf=1.0, attention=1.0, gamma=1.0),
}


def method_objective(method: str, lwf_form="squared", temperature=2.0, jacobian_loss="squared", pairs=(),
                     p=2.0, lwf_weight=1.0, jacobian_weight=1.0, attention_weight=1.0) -> TransferObjective:
    """The objective of a row, carrying only the options that row uses."""
    check_choice("method", method, PRESETS)
    return TransferObjective(**used_options(PRESETS[method], {
        "lwf": dict(lwf=lwf_weight, lwf_form=lwf_form, **({"temperature": temperature} if lwf_form == "kl" else {})),
        "gamma": dict(gamma=jacobian_weight, jacobian_loss=jacobian_loss),
        "attention": dict(attention=attention_weight, pairs=tuple(pairs), p=p)}))


def _paper_data(dataset: str, image_size: int, root) -> jdata.Dataset:
    """The paper setting's target data, normalised with ImageNet's statistics (the teacher's): image
    folders are read at image_size (resized, aspect ratio not kept, no crop); CIFAR is resized on the device."""
    if dataset.startswith("imagefolder:"):
        return jdata.load(dataset, root=root, image_size=image_size)
    data = jdata.load(dataset, root=root)
    mean, std = jdata.STATS["imagenet"]
    return jdata.ResizedDataset(data.name, data.train, data.test, list(data.classes), mean, std, size=image_size)


# ---------------------------------------------------------------------------------------------------
# The plan

@dataclass
class TransferPlan:
    """One transfer experiment: one setting, dataset and per_class; the rows (methods) x seeds."""
    profile: profiles.Profile
    setting: str
    recipe: Recipe
    dataset: str
    per_class: object
    methods: list
    seeds: list
    lwf_form: str
    temperature: float
    jacobian_loss: str
    attention_pairs: list
    weights: dict
    teacher_pretrained: bool
    device: torch.device
    data: jdata.Dataset = field(repr=False)               # the target task
    source_data: jdata.Dataset | None = field(repr=False)  # offline: the source task (None: ImageNet)
    results: object = None
    progress: bool = True
    data_root: object = None
    _teacher: tuple | None = field(default=None, repr=False)

    # ---- configs (what makes each result; hashed into its key) -------------------------------------
    @property
    def num_source(self) -> int:
        return self.source_data.num_classes if self.source_data is not None else 1000

    def teacher_config(self) -> dict:
        r = self.recipe
        if self.setting == "offline":
            base = teacher_config(self.dataset, r.teacher_arch, r.teacher_width, r.teacher_epochs,
                                  r.teacher_batch_size, seed=0, lr=r.lr)
            extra = {} if r.image_size is None else {"image_size": r.image_size}
            return dict(base, source_classes=list(r.source_classes), **extra)
        return {"kind": "teacher", "arch": r.teacher_arch, "source": "imagenet",
                "weights": _weights_name(r.teacher_arch) if self.teacher_pretrained else "random init, seed 0"}

    def train_split(self, seed: int) -> jdata.Split:
        return jdata.subset(self.data.train, self.per_class, seed)

    def objective(self, method: str) -> TransferObjective:
        return method_objective(method, self.lwf_form, self.temperature, self.jacobian_loss, self.attention_pairs,
                                lwf_weight=self.weights["lwf"], jacobian_weight=self.weights["jacobian"],
                                attention_weight=self.weights["attention"])

    def run_config(self, method: str, seed: int) -> dict:
        r = self.recipe
        n_train = len(self.data.train) if self.per_class == "full" else self.per_class * self.data.num_classes
        finetune = method == "finetune"
        return {**identity("transfer", self.profile, self.dataset), "setting": self.setting,
                "source_classes": None if r.source_classes is None else list(r.source_classes),
                "target_classes": None if r.target_classes is None else list(r.target_classes),
                "image_size": list(self.data.image_size), "per_class": self.per_class, "method": method,
                "seed": seed, "objective": self.objective(method).to_dict(),
                "model": r.teacher_arch if finetune else r.student_arch,
                "width": r.teacher_width if finetune else r.student_width,
                "heads": "target" if method in ("scratch", "finetune") else "target+source",
                "epochs": r.epochs_for(n_train), "batch_size": r.batch_size,
                "lr": r.finetune_lr if finetune else r.lr, "anneal_at": r.anneal_at,
                "teacher": store.config_hash(self.teacher_config())}

    def pending(self) -> list[tuple[str, int]]:
        return pending_grid(self.run_config, self.methods, self.seeds, self.results)

    def describe(self) -> str:
        r = self.recipe
        teacher = (f"{r.teacher_arch} (width {r.teacher_width:g}) trained on classes {list(r.source_classes)}"
                   if self.setting == "offline" else
                   f"{r.teacher_arch}, {'ImageNet weights' if self.teacher_pretrained else 'random weights (test)'}")
        pairs = ", ".join(f"{s}<-{t}" for s, t in self.attention_pairs) or "none"
        return (f"{self.profile.name} profile, {self.setting} setting: {self.data.name}, {self.data.num_classes} target "
                f"classes, {len(self.data.train)} training / {len(self.data.test)} test images at "
                f"{self.data.image_size[0]}x{self.data.image_size[1]}\n"
                f"teacher: {teacher}; student: {r.student_arch} (width {r.student_width:g}); per_class={self.per_class}\n"
                f"attention pairs (student<-teacher): {pairs}\n"
                f"{len(self.methods)} methods x {len(self.seeds)} seeds on {self.device}; "
                f"{len(self.pending())} runs to do")

    # ---- work ---------------------------------------------------------------------------------------------
    def teacher(self) -> tuple[nn.Module, dict]:
        """``(teacher in eval mode, meta)``. Offline: the VGG teacher of the source classes, trained once and then
        loaded from data/checkpoints. Paper: the ImageNet ResNet (loaded when the plan was made)."""
        if self._teacher is None:
            self._teacher = get_teacher(self.source_data, self.source_data.train, self.teacher_config(), self.device,
                                        root=self.data_root, progress=self.progress)
        return self._teacher

    def prepare_teacher(self) -> dict:
        """Train or load the teacher (the batch does it once before the jobs that share it); its meta."""
        return self.teacher()[1]

    def run(self):
        """Run every pending (method, seed), one record each; returns this plan's records as a DataFrame."""
        todo = self.pending()
        if todo:
            teacher, meta = self.teacher()
            cache = {}
            if any(m not in ("scratch", "finetune") for m, _ in todo):
                m = self.profile.mechanism  # the source head against the teacher; target images have no source label
                cache["mechanism"] = mechanism.reference(LogitsView(teacher), self.data, self.data.test, m["images"],
                                                         m["sigmas"], m["draws"], label=False, device=self.device)
            run_pending(todo, lambda ms: self._run_one(*ms, teacher, meta, cache, todo), self.progress,
                        f"transfer {self.data.name} per_class={self.per_class}", lambda ms: f"{ms[0]}, seed {ms[1]}")
        return self.records()

    def _targets(self, teacher, seed, train, todo, cache) -> TransferTargets:
        if seed not in cache:
            for old in [k for k in cache if k != "mechanism"]:
                del cache[old]
            wanted = [self.objective(m) for m, s in todo if s == seed]
            cache[seed] = transfer_targets(
                teacher, self.data, train, with_gradients=any(o.gamma > 0 for o in wanted),
                stages=sorted({t for o in wanted for _, t in o.pairs}),
                p=next((o.p for o in wanted if o.attention > 0), 2.0), batch_size=self.recipe.batch_size,
                device=self.device)
        return cache[seed]

    def _run_one(self, method, seed, teacher, teacher_meta, cache, todo):
        config, r = self.run_config(method, seed), self.recipe
        objective = self.objective(method)
        start = time.perf_counter()
        reset_peak_memory(self.device)
        train = self.train_split(seed)
        targets = self._targets(teacher, seed, train, todo, cache) if objective.needs_teacher else None
        seed_everything(seed)
        if method == "finetune":
            model = replace_head(copy.deepcopy(teacher), self.data.num_classes)
        elif method == "scratch":
            model = models.build(r.student_arch, self.data.in_channels, self.data.num_classes, r.student_width)
        else:
            model = build_student(r.student_arch, self.data.in_channels, self.data.num_classes, self.num_source,
                                  r.student_width)
        history = fit(model, self.data, train, objective, config["epochs"], r.batch_size, seed=seed, lr=config["lr"],
                      anneal_at=r.anneal_at, device=self.device, teacher_targets=targets, progress=self.progress,
                      desc=f"{method} seed {seed}")
        test_acc = accuracy(model, self.data, self.data.test, batch_size=max(r.batch_size, 256), device=self.device)
        mech = {} if method in ("scratch", "finetune") else mechanism.metrics(LogitsView(model), cache["mechanism"])
        metrics = run_metrics(history, start, len(train), self.device, test_accuracy=test_acc,
                              teacher_source_accuracy=teacher_meta.get("test_accuracy"),
                              subset_fingerprint=fingerprint(train.y, train.x), **mech)
        store.save_record(config, metrics, self.results)
        return metrics

    def records(self):
        """This plan's finished runs as a DataFrame (one row per run)."""
        return records_frame(self.run_config, self.methods, self.seeds, self.results)

    def table(self, records=None):
        """Test accuracy, mean ± std over seeds, in the poster's row order; the poster's number beside it in
        the paper setting (on MIT Indoor 67, at per_class 25, 50 or full)."""
        return transfer_table(self.records() if records is None else records, self.methods, self.setting,
                              self.per_class, self.data.num_classes)


@torch.no_grad()
def attention_examples(plan: TransferPlan, n: int = 4, p: float = 2.0):
    """What attention transfer hands the student: ``(images, maps)`` for the first ``n`` target test images, the
    images as (n, H, W, C) floats in [0, 1] and, per attention pair ``"student<-teacher"``, the teacher's
    attention maps (n, h, w) (``losses.attention_map`` reshaped)."""
    check_positive_int("n", n)
    teacher, _ = plan.teacher()
    split = jdata.Split(plan.data.test.x[:n], plan.data.test.y[:n])
    x, _, _ = next(iter(Batches(split, plan.data, n, plan.device, shuffle=False)))
    with eval_mode(teacher):
        _, features = teacher(x, taps=True)
    maps = {f"{s}<-{t}": attention_map(features[t], p).view(len(x), *features[t].shape[-2:]).cpu()
            for s, t in plan.attention_pairs}
    mean = torch.tensor(plan.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(plan.data.std).view(1, -1, 1, 1)
    images = (x.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    return images, maps


def paired_gains(records, base: str = "scratch"):
    """Each method's accuracy minus ``base``'s, seed by seed (a seed draws the training subset that all rows of
    that seed share, so the paired difference removes the subset's luck): mean, std over seeds, the seed count
    and on how many seeds the method won. Indexed by method in the poster's order, ``base`` left out."""
    import pandas as pd

    acc = records.pivot_table(index="seed", columns="method", values="test_accuracy")
    rows = []
    for m in [m for m in METHODS if m in acc.columns and m != base] if base in acc.columns else []:
        diff = (acc[m] - acc[base]).dropna()
        mean, std, n = mean_std(diff)
        rows.append({"method": m, "gain": mean, "std": std, "seeds": n, "wins": int((diff > 0).sum())})
    return pd.DataFrame(rows, columns=["method", "gain", "std", "seeds", "wins"]).set_index("method")


def poster_number(method: str, per_class) -> float | None:
    """The poster's MIT Indoor 67 accuracy for ``method`` at ``per_class`` (None where it has no cell)."""
    table = paper.TRANSFER_MIT67
    if method not in table["rows"] or per_class not in table["per_class"]:
        return None
    return table["rows"][method][table["per_class"].index(per_class)]


def transfer_table(records, methods, setting: str, per_class, num_classes: int | None = None):
    """One row per method in the poster's order: mean ± std of the test accuracy over seeds and the seed count;
    in the paper setting a ``poster`` column (its number when the target has MIT Indoor's 67 classes)."""
    import pandas as pd

    rows = []
    for m in sorted(methods, key=METHODS.index):
        acc = records.loc[records["method"] == m, "test_accuracy"] if len(records) else []
        row = {"method": m, "description": METHOD_LABELS[m]}
        if len(acc):
            mean, std, n = mean_std(acc)
            row.update({"accuracy": fmt(mean, std, n), "mean": mean, "std": std, "seeds": n})
        else:
            row.update({"accuracy": "not run", "mean": float("nan"), "std": float("nan"), "seeds": 0})
        if setting == "paper":
            row["poster"] = poster_number(m, per_class) if num_classes == 67 else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ---------------------------------------------------------------------------------------------------
# Validation and plan construction

def _as_list(name: str, value):
    """Lists arrive as text from ``papermill -p name '[...]'``: read back a string that looks like a list
    (other strings, such as attention_layers="auto", pass through)."""
    if isinstance(value, str) and value.strip().startswith("["):
        return as_list(name, value, "['a', 'b'] or [0, 1]")
    return value


def _weights_name(arch: str) -> str:
    import torchvision

    return str(torchvision.models.get_model_weights(arch).DEFAULT)


def _check_attention_layers(value, student_sizes, teacher_sizes) -> list[tuple[str, str]]:
    """``"auto"`` (pair_stages) or a list of ``"student_stage:teacher_stage"`` of equal spatial size."""
    def sizes(stages):
        return ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in stages.items())

    where = f"student stages: {sizes(student_sizes)}; teacher stages: {sizes(teacher_sizes)}"
    if value == "auto":
        return pair_stages(student_sizes, teacher_sizes)
    value = _as_list("attention_layers", value)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"attention_layers={value!r} is not allowed; give 'auto' or a non-empty list of "
                         f"'student_stage:teacher_stage' pairs of equal spatial size ({where})")
    pairs = []
    for item in value:
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) != 2 or parts[0] not in student_sizes or parts[1] not in teacher_sizes:
            raise ValueError(f"attention_layers entry {item!r} is not allowed; write 'student_stage:teacher_stage' "
                             f"with stages of the two networks ({where})")
        if student_sizes[parts[0]] != teacher_sizes[parts[1]]:
            raise ValueError(f"attention_layers entry {item!r} pairs maps of different spatial size "
                             f"({student_sizes[parts[0]]} and {teacher_sizes[parts[1]]}); pair equal sizes ({where})")
        pairs.append((parts[0], parts[1]))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"attention_layers={value!r} repeats a pair")
    return pairs


def plan(profile: str = "cpu", setting: str = "offline", dataset: str | None = None, per_class=None,
         methods=METHODS, seeds=None, temperature: float = 2.0, lwf_form: str = "squared",
         jacobian_loss: str = "squared", attention_layers="auto", image_size=None, device: str = "auto", *,
         source_classes=None, target_classes=None, teacher_arch=None, teacher_pretrained: bool = True,
         lwf_weight: float = 1.0, jacobian_weight: float = 1.0, attention_weight: float = 1.0,
         results=None, data_root=None, progress: bool = True) -> TransferPlan:
    """Validate every parameter (ValueError naming it), find the teacher's weights and the data (FileNotFoundError
    saying where to put them), and return the plan. Nothing is trained or written here.

    The positional arguments are notebook 05's parameters, with its defaults. None means the recipe's value
    (``Profile.transfer_recipe(setting)``): dataset, per_class, seeds,
    image_size, source/target classes (offline), teacher_arch. ``attention_layers``: "auto" (student and
    teacher stages of equal spatial size, by a dry forward pass) or ["student_stage:teacher_stage", ...].
    ``teacher_pretrained=False`` (tests only) gives the paper setting a randomly initialised ResNet.
    """
    # 1. values, before anything is loaded
    p = profiles.get(profile)
    check_choice("setting", setting, SETTINGS)
    r = p.transfer_recipe(setting)
    dataset = r.dataset if dataset is None else dataset
    try:
        check_dataset(dataset, jdata.DATASETS if setting == "offline" else PAPER_DATASETS)
    except ValueError as e:
        why = "" if setting == "offline" else " (the paper setting's ImageNet teacher needs RGB images)"
        raise ValueError(f"{e} in the {setting} setting{why}") from None
    methods = check_choices("methods", _as_list("methods", methods), METHODS)
    methods = sorted(methods, key=METHODS.index)
    seeds = check_seeds("seeds", list(r.seeds) if seeds is None else _as_list("seeds", seeds))
    per_class = check_per_class("per_class", r.per_class if per_class is None else per_class)
    check_positive_number("temperature", temperature)
    check_choice("lwf_form", lwf_form, LWF_FORMS)
    check_choice("jacobian_loss", jacobian_loss, JACOBIAN_LOSSES)
    weights = {"lwf": check_positive_number("lwf_weight", lwf_weight),
               "jacobian": check_positive_number("jacobian_weight", jacobian_weight),
               "attention": check_positive_number("attention_weight", attention_weight)}
    if not (attention_layers == "auto" or isinstance(_as_list("attention_layers", attention_layers), (list, tuple))):
        raise ValueError(f"attention_layers={attention_layers!r} is not allowed; give 'auto' or a list of "
                         f"'student_stage:teacher_stage' pairs, e.g. ['stage1:stage1']")
    if image_size is not None:
        check_positive_int("image_size", image_size)
        if image_size < 8:
            raise ValueError(f"image_size={image_size} is not allowed; it must be an integer >= 8 (the VGGs pool "
                             f"down to 1x1 by then)")
    overrides = {"dataset": dataset, "per_class": per_class, "seeds": tuple(seeds)}
    if image_size is not None:
        overrides["image_size"] = image_size
    if teacher_arch is not None:
        arches = list(models.VGG_CONFIGS) if setting == "offline" else list(models.RESNETS)
        overrides["teacher_arch"] = check_choice("teacher_arch", teacher_arch, arches)
    if setting == "offline":
        for name, value in (("source_classes", source_classes), ("target_classes", target_classes)):
            if value is not None:
                value = _as_list(name, value)
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise ValueError(f"{name}={value!r} must be a list of class labels, e.g. [0, 1, 2, 3, 4]")
                overrides[name] = tuple(value)
    elif source_classes is not None or target_classes is not None:
        raise ValueError("source_classes and target_classes are for the offline setting; in the paper setting the "
                         "source task is ImageNet and every class of the dataset is a target class")
    if not isinstance(teacher_pretrained, bool):
        raise ValueError(f"teacher_pretrained={teacher_pretrained!r} must be True or False")
    r = replace(r, **overrides)
    if setting == "offline" and set(r.source_classes) & set(r.target_classes):
        raise ValueError(f"source_classes={list(r.source_classes)} and target_classes={list(r.target_classes)} "
                         f"overlap; the target task must be new classes")
    device = resolve_device(device)

    # 2. the teacher's weights (paper), then the data
    teacher = None
    if setting == "paper":
        if teacher_pretrained:
            teacher = models.build_resnet(r.teacher_arch, 3, 1000, pretrained=True)  # FileNotFoundError: where to put them
        else:
            seed_everything(0)
            teacher = models.build_resnet(r.teacher_arch, 3, 1000, pretrained=False)
        teacher = teacher.to(device).eval()
        data, source_data = _paper_data(dataset, r.image_size, data_root), None
        if data.in_channels != 3:
            raise ValueError(f"dataset={dataset!r} has {data.in_channels} channel(s); the ImageNet teacher needs RGB")
    else:
        full = jdata.load(dataset, root=data_root)
        if r.image_size is not None and (r.image_size, r.image_size) != full.image_size:
            full = jdata.ResizedDataset(full.name, full.train, full.test, list(full.classes), full.mean, full.std,
                                        size=r.image_size)
        source_data = jdata.restrict_classes(full, r.source_classes, "source_classes")
        data = jdata.restrict_classes(full, r.target_classes, "target_classes")
    check_fits("per_class", per_class, data.train)

    # 3. attention pairs, by a dry forward pass of architecture twins
    student_twin = models.build(r.student_arch, data.in_channels, 2, r.student_width)
    teacher_twin = teacher if teacher is not None else models.build(
        r.teacher_arch, data.in_channels, source_data.num_classes, r.teacher_width)
    s_sizes = stage_sizes(student_twin, data.in_channels, data.image_size)
    t_sizes = stage_sizes(teacher_twin, data.in_channels, data.image_size)
    pairs = _check_attention_layers(attention_layers, s_sizes, t_sizes)
    if not pairs and any(PRESETS[m].get("attention") for m in methods):
        raise ValueError(f"attention_layers='auto' found no student and teacher stages of equal spatial size "
                         f"(student: {dict(s_sizes)}, teacher: {dict(t_sizes)}); give attention_layers explicitly "
                         f"or leave out the attention rows")
    made = TransferPlan(p, setting, r, dataset, per_class, methods, seeds, lwf_form, float(temperature),
                        jacobian_loss, pairs, weights, teacher_pretrained, device, data, source_data, results,
                        progress, data_root)
    if teacher is not None:
        made._teacher = (teacher, {"test_accuracy": None, "cached": True, "arch": r.teacher_arch})
    return made
