"""Low-data distillation (Tables 1-2): plan, validate, run (resumably), tabulate.

A plan is validated completely when it is made, before any training and before any file is written.
Every student run is one record (jkt.store), keyed by its full config; finished runs are loaded, not redone.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from .. import data as jdata
from .. import mechanism, models, paper, profiles, store
from ..losses import METHOD_LABELS, PAPER_METHODS, PRESETS, preset
from ..report import fmt, mean_std
from ..teachers import get_teacher, profile_teacher_config, teacher_targets
from ..train import NonFiniteLoss, accuracy, fit, reset_peak_memory, resolve_device, seed_everything
from ..validate import (as_list, check_choice, check_choices, check_per_class, check_positive_int,
                        check_positive_number, check_seeds, check_sigma)
from .common import (check_dataset, check_fits, fingerprint, identity, pending_grid, records_frame, run_metrics,
                     run_pending, used_options)

METHODS = tuple(PRESETS)


def method_objective(method: str, jacobian_output="target", jacobian_loss="squared", sigma=0.1, samples=1,
                     temperature=4.0):
    """The objective of ``method`` with only the options that method uses; an option its preset fixes (the loss of
    act+jacn, the temperature of soft+softjac) is not overridden."""
    base = preset(method)
    options = used_options(
        {"jacobian": base.gamma > 0, "noisy": base.noisy > 0, "hinton": base.hinton > 0},
        {"jacobian": dict(jacobian_output=jacobian_output, jacobian_loss=jacobian_loss),
         "noisy": dict(sigma=sigma, samples=samples), "hinton": dict(temperature=temperature)})
    return preset(method, **{k: v for k, v in options.items() if k not in PRESETS[method]})


@dataclass
class DistillPlan:
    """The grid of one distillation experiment: one dataset and per_class, methods x seeds."""
    profile: profiles.Profile
    dataset: str
    per_class: object
    methods: list
    seeds: list
    epochs: int | None
    steps: int | None
    batch_size: int
    jacobian_output: str
    jacobian_loss: str
    sigma: float
    samples: int
    temperature: float
    device: torch.device
    data: jdata.Dataset = field(repr=False)
    results: object = None
    progress: bool = True

    # ---- configs (what makes each result; hashed into its key) -------------------------------------
    def teacher_config(self) -> dict:
        return profile_teacher_config(self.profile, self.dataset)

    def train_split(self, seed: int) -> jdata.Split:
        """The seed's training subset, drawn outside the profile's validation pool."""
        return jdata.subset(self.data.train, self.per_class, seed, holdout=self.profile.validation_per_class)

    def validation_split(self) -> jdata.Split | None:
        """The validation pool (training images no subset uses), or None when the profile has none."""
        n = self.profile.validation_per_class
        return jdata.holdout(self.data.train, n) if n else None

    def objective(self, method: str):
        return method_objective(method, self.jacobian_output, self.jacobian_loss, self.sigma, self.samples,
                                self.temperature)

    def run_config(self, method: str, seed: int) -> dict:
        p = self.profile
        n_train = (len(self.data.train) - p.validation_per_class * self.data.num_classes if self.per_class == "full"
                   else self.per_class * self.data.num_classes)
        epochs = self.epochs if self.epochs is not None else p.student_epochs_for(
            n_train, self.batch_size, self.per_class, self.steps, self.objective(method).first_order)
        return {**identity("distill", p, self.dataset), "per_class": self.per_class, "method": method, "seed": seed,
                "objective": self.objective(method).to_dict(), "student": p.student_arch,
                "student_width": p.student_width, "epochs": epochs, "batch_size": self.batch_size,
                "lr": p.lr, "anneal_at": p.anneal_at, "teacher": store.config_hash(self.teacher_config())}

    def pending(self) -> list[tuple[str, int]]:
        return pending_grid(self.run_config, self.methods, self.seeds, self.results)

    def describe(self) -> str:
        return (f"{self.profile.name} profile: {self.dataset}, per_class={self.per_class}, {len(self.methods)} methods "
                f"x {len(self.seeds)} seeds on {self.device}; jacobian_loss={self.jacobian_loss}; "
                f"{len(self.pending())} runs to do")

    # ---- work ---------------------------------------------------------------------------------------------
    def teacher(self):
        """The VGG-9 teacher of this plan: trained once per profile, then loaded from data/checkpoints."""
        return get_teacher(self.data, self.data.train, self.teacher_config(), self.device, progress=self.progress)

    def prepare_teacher(self) -> dict:
        """Train or load the teacher (the batch does it once before the jobs that share it); its meta."""
        return self.teacher()[1]

    def run(self):
        """Run every pending (method, seed), one record each; returns this plan's records as a DataFrame."""
        todo = self.pending()
        if todo:
            teacher, teacher_meta = self.teacher()
            m = self.profile.mechanism
            cache = {"mechanism": mechanism.reference(teacher, self.data, self.data.test, m["images"], m["sigmas"],
                                                      m["draws"], device=self.device),
                     "validation": self.validation_split()}
            run_pending(todo, lambda ms: self._run_one(*ms, teacher, teacher_meta, cache), self.progress,
                        f"distill {self.dataset} per_class={self.per_class}", lambda ms: f"{ms[0]}, seed {ms[1]}")
        return self.records()

    def _run_one(self, method, seed, teacher, teacher_meta, cache):
        config = self.run_config(method, seed)
        objective = self.objective(method)
        start = time.perf_counter()
        reset_peak_memory(self.device)
        train = self.train_split(seed)
        targets = None
        if objective.needs_teacher:
            softmax = objective.jacobian_loss == "ce"
            key = (seed, objective.jacobian_output, objective.gamma > 0, softmax)
            if key not in cache:
                for old in [k for k in cache if k not in ("mechanism", "validation")]:
                    del cache[old]
                cache[key] = teacher_targets(teacher, self.data, train, objective.jacobian_output,
                                             with_gradients=objective.gamma > 0, device=self.device,
                                             softmax=softmax)
            targets = cache[key]
        seed_everything(seed)
        student = models.build(self.profile.student_arch, self.data.in_channels, self.data.num_classes,
                               self.profile.student_width)
        pairing = {"subset_fingerprint": fingerprint(train.y, train.x),
                   "init_fingerprint": fingerprint(*student.state_dict().values())}
        try:
            history, diverged = fit(student, self.data, train, objective, config["epochs"], self.batch_size,
                                    seed=seed, lr=self.profile.lr, anneal_at=self.profile.anneal_at,
                                    device=self.device, teacher_targets=targets,
                                    teacher=teacher if objective.noisy > 0 else None, progress=self.progress,
                                    desc=f"{method} seed {seed}"), None
        except NonFiniteLoss as e:  # a method that diverges is a result (Eq. 2's form can): recorded and counted
            if e.history is None:
                raise  # not from fit's loop: no run to record
            history, diverged = e.history, e.history.steps
            warnings.warn(f"{method} seed {seed} diverged at step {diverged} ({e}); its record says so and holds "
                          f"the accuracy of the network it left", stacklevel=2)
        test_acc = accuracy(student, self.data, self.data.test, device=self.device)
        val = cache["validation"]
        val_acc = None if val is None else accuracy(student, self.data, val, device=self.device)
        mech_start = time.perf_counter()
        mech = mechanism.metrics(student, cache["mechanism"])
        metrics = run_metrics(history, start, len(train), self.device, test_accuracy=test_acc,
                              validation_accuracy=val_acc, diverged_at_step=diverged,
                              teacher_test_accuracy=teacher_meta["test_accuracy"], **pairing, **mech,
                              mech_seconds=time.perf_counter() - mech_start)
        store.save_record(config, metrics, self.results)
        return metrics

    # ---- results ------------------------------------------------------------------------------------------
    def records(self):
        """This plan's finished runs as a DataFrame (one row per run)."""
        return records_frame(self.run_config, self.methods, self.seeds, self.results)

    def table(self, records=None):
        """One row per method in the plan's (the paper's) order: mean ± std of test accuracy over seeds, the seed
        count, and the paper's number where dataset and profile are the paper's."""
        import pandas as pd

        records = self.records() if records is None else records
        rows = []
        for m in self.methods:
            acc = records.loc[records["method"] == m, "test_accuracy"] if len(records) else []
            row = {"method": m, "description": METHOD_LABELS.get(m, m)}
            if len(acc):
                mean, std, n = mean_std(acc)
                row.update({"accuracy": fmt(mean, std, n), "mean": mean, "std": std, "seeds": n})
            else:
                row.update({"accuracy": "not run", "mean": float("nan"), "std": float("nan"), "seeds": 0})
            if self.profile.name == "paper":
                row["paper"] = paper.distillation_number(self.dataset, m, self.per_class)
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")


def plan(profile: str = "cpu", dataset: str | None = None, per_class=None, methods=PAPER_METHODS, seeds=None,
         epochs=None, steps=None, batch_size=None, jacobian_output: str = "target", jacobian_loss=None,
         sigma: float = 0.1, samples: int = 1, temperature: float = 4.0, device: str = "auto", *, results=None,
         data_root=None, progress: bool = True) -> DistillPlan:
    """Validate every parameter (ValueError naming it), load the dataset, and return the plan.

    The arguments are notebook 03's parameters, with its defaults. None means the profile's value (dataset,
    per_class, seeds, epochs or steps, batch_size) or the paper's (jacobian_loss: normalised on CIFAR-10, squared
    elsewhere). Lists may arrive as text (papermill's ``-p``). Nothing is trained or written here.
    """
    p = profiles.get(profile)
    dataset = check_dataset(p.dataset if dataset is None else dataset)
    methods = check_choices("methods", as_list("methods", methods, '["ce", "act+jac+ce"]', words=True), METHODS)
    seeds = check_seeds("seeds", list(p.seeds) if seeds is None else as_list("seeds", seeds, "[0, 1, 2]"))
    if epochs is not None:
        check_positive_int("epochs", epochs)
    if steps is not None:
        check_positive_int("steps", steps)
        if epochs is not None:
            raise ValueError(f"epochs={epochs!r} and steps={steps!r}: give one of them (None: the profile's)")
    batch_size = check_positive_int("batch_size", p.batch_size if batch_size is None else batch_size)
    check_choice("jacobian_output", jacobian_output, ["target", "top1", "all"])
    jacobian_loss = profiles.default_jacobian_loss(dataset) if jacobian_loss is None else jacobian_loss
    check_choice("jacobian_loss", jacobian_loss, ["squared", "normalized"])
    check_sigma("sigma", sigma)
    check_positive_int("samples", samples)
    check_positive_number("temperature", temperature)
    per_class = check_per_class("per_class", p.per_class if per_class is None else per_class)
    device = resolve_device(device)
    data = jdata.load(dataset, root=data_root)
    check_fits("per_class", per_class, data.train)
    return DistillPlan(p, dataset, per_class, list(methods), seeds, epochs, steps, batch_size, jacobian_output,
                       jacobian_loss, float(sigma), int(samples), float(temperature), device, data, results, progress)
