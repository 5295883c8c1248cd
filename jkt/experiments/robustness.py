"""Noise robustness (Table 3): VGG-9 trained with Proposition 2's Jacobian-norm penalty, tested under input noise.

Three routes to the same robustness, side by side (``routes``):

- ``"penalty"``: the paper's, ``CE + lambda ||grad_x S^y(x)||^2`` on the label's output only (Section 4's heuristic);
- ``"noise"``: the other side of Proposition 2, CE on inputs with Gaussian noise of ``sigma = sqrt(lambda)``;
- ``"projection"``: ``CE + lambda ||J_S(x)||_F^2``, the full Jacobian of Proposition 2, by random projections.

A plan is validated completely when it is made, before any training and before any file is written.
Every trained network is one record (jkt.store) keyed by its training config, with its weights saved
beside it, so asking for other noise levels or more noise draws re-evaluates saved networks instead of
retraining them. Strength 0 is plain CE in every route: one shared network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from .. import data as jdata
from ..batching import Batches
from .. import models, paper, profiles, store
from ..jacobian import eval_mode, input_gradient
from ..losses import Objective
from ..report import fmt
from ..train import (accuracy_under_noise, eval_batch_size, fit, peak_memory_mb, reset_peak_memory, resolve_device,
                     seed_everything)
from ..validate import (as_list, check_choices, check_nonnegative_int, check_numbers, check_per_class,
                        check_positive_int, check_positive_number, check_seeds)
from .common import check_dataset, check_fits, identity, run_metrics, run_pending

ROUTES = ("penalty", "noise", "projection")
ROUTE_LABELS = {
    "penalty": "Jacobian-norm penalty, label's output (the paper)",
    "noise": "Gaussian-noise training at sigma = sqrt(lambda)",
    "projection": "full-Jacobian penalty, random projections",
}
PAPER_SIGMAS = paper.TABLE3_ROBUSTNESS["sigmas"]
ARCH = "vgg9"
JACOBIAN_IMAGES = 256  # test images on which the penalised quantities are measured after training


def noise_sigma(strength: float) -> float:
    """The training-noise sigma that Proposition 2 equates with penalty ``strength``: ``sigma^2 = lambda``.

    Proposition 2 (squared error) gives ``E||y - S(x+xi)||^2 = ||y - S(x)||^2 + sigma^2 ||J_S||_F^2 + O(sigma^4)``,
    so a penalty weight lambda on the squared Jacobian norm is noise of variance lambda. (With cross-entropy,
    Eq. 3 puts sigma^2 on ||grad log-softmax^y||^2 instead, and the exact second-order term is sigma^2 / 2:
    no exact match to a penalty on the logit; notebook 04 says why it keeps sigma = sqrt(lambda).)"""
    return math.sqrt(strength)


def route_objective(route: str, strength: float, projections: int = 1) -> Objective:
    """The training objective of ``route`` at penalty ``strength`` (strength 0: plain CE, the same in every route)."""
    check_choices("route", [route], ROUTES)
    strength = check_numbers("strength", [strength], minimum=0.0)[0]
    if strength == 0:
        return Objective()
    if route == "penalty":
        return Objective(penalty=strength, jacobian_output="target")
    if route == "noise":
        return Objective(input_noise=noise_sigma(strength))
    return Objective(penalty=strength, projections=check_positive_int("projections", projections))


def trained_with(route: str, strength: float, projections: int = 1) -> str:
    """A short human label of how a network was trained."""
    if strength == 0:
        return "plain CE"
    if route == "noise":
        return f"noise σ={noise_sigma(strength):.3g}"
    if route == "projection":
        return f"full-Jacobian λ={strength:g} ({projections} proj.)"
    return f"penalty λ={strength:g}"


def _check_distinct(name: str, values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={values!r} repeats a value; give each one once")
    return values


def _sigma_key(sigma: float) -> str:
    return repr(float(sigma))


class Network(NamedTuple):
    """One trained network of the plan: a route, a penalty strength and a seed."""
    route: str
    strength: float
    seed: int


@dataclass
class RobustnessPlan:
    """The grid of one Table 3 experiment: routes x strengths x seeds, each network tested at every sigma."""
    profile: profiles.Profile
    dataset: str
    strengths: list
    sigmas: list
    noise_draws: int
    seeds: list
    routes: list
    width: float
    epochs: int
    per_class: object
    test_per_class: object
    batch_size: int
    projections: int
    noise_seed: int
    device: torch.device
    data: jdata.Dataset = field(repr=False)
    results: object = None
    progress: bool = True

    # ---- configs (what makes each network; hashed into its key) -----------------------------------------
    def networks(self) -> list[Network]:
        return [Network(r, s, seed) for seed in self.seeds for r in self.routes for s in self.strengths]

    def run_config(self, net: Network) -> dict:
        """Everything that determines the trained weights (not how they are tested): the record's key."""
        p = self.profile
        objective = route_objective(net.route, net.strength, self.projections)
        return {**identity("robustness", p, self.dataset), "arch": ARCH, "width": self.width,
                "per_class": self.per_class, "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": p.lr, "anneal_at": p.anneal_at, "seed": net.seed, "objective": objective.to_dict()}

    def evaluation(self) -> dict:
        """How networks are tested; a record tested otherwise is re-tested (from its saved weights)."""
        return {"test_per_class": self.test_per_class, "noise_seed": self.noise_seed,
                "batch_size": eval_batch_size(self.device)}

    def checkpoint_path(self, config: dict) -> Path:
        return store.results_root(self.results) / "checkpoints" / f"robustness-{store.config_hash(config)}.pt"

    def _evaluated(self, record: dict | None) -> bool:
        """Whether ``record`` holds every requested sigma with enough draws, tested this plan's way."""
        if record is None:
            return False
        metrics = record["metrics"]
        if metrics.get("evaluation") != self.evaluation() or "jacobian" not in metrics:
            return False
        noise = metrics.get("noise", {})
        for sigma in [0.0, *self.sigmas]:
            entry = noise.get(_sigma_key(sigma))
            if entry is None or (sigma > 0 and len(entry["draws"]) < self.noise_draws):
                return False
        return True

    def status(self, net: Network) -> str:
        """``"done"``, ``"evaluate"`` (trained, saved, but not yet tested at every sigma) or ``"train"``."""
        config = self.run_config(net)
        record = store.load_record(config, self.results)
        if self._evaluated(record):
            return "done"
        return "evaluate" if record is not None and self.checkpoint_path(config).exists() else "train"

    def pending(self) -> list[Network]:
        """The networks still to train or to test, each distinct network once (strength 0 is shared by the routes)."""
        seen, todo = set(), []
        for net in self.networks():
            key = store.config_hash(self.run_config(net))
            if key not in seen:
                seen.add(key)
                if self.status(net) != "done":
                    todo.append(net)
        return todo

    # ---- work ---------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> dict:
        """Nothing to prepare: the Table 3 networks learn from labels alone."""
        return {"cached": True}

    def run(self):
        """Train and test every pending network, one record each; returns this plan's records as a DataFrame."""
        run_pending(self.pending(), self._run_one, self.progress, f"robustness {self.dataset}",
                    lambda n: f"{n.route}, λ={n.strength:g}, seed {n.seed}")
        return self.records()

    def _run_one(self, net: Network) -> dict:
        config = self.run_config(net)
        record = store.load_record(config, self.results)
        model = self._load_weights(config) if record is not None else None
        if model is None:
            model, metrics = self._train(net, config)
        else:
            metrics = dict(record["metrics"])
        start = time.perf_counter()
        metrics.update(self._test(model, metrics))
        peak = max(metrics.get("train_peak_memory_mb", 0.0), peak_memory_mb(self.device))
        metrics.update({"eval_seconds": time.perf_counter() - start, "peak_memory_mb": peak,
                        "tested": time.strftime("%Y-%m-%d %H:%M:%S")})
        store.save_record(config, metrics, self.results)
        return metrics

    def _train(self, net: Network, config: dict):
        objective = route_objective(net.route, net.strength, self.projections)
        start = time.perf_counter()
        train = jdata.subset(self.data.train, self.per_class, net.seed)
        seed_everything(net.seed)
        reset_peak_memory(self.device)  # per-network peaks on a GPU (on the CPU: the process's resident peak)
        model = models.build(ARCH, self.data.in_channels, self.data.num_classes, self.width)
        history = fit(model, self.data, train, objective, self.epochs, self.batch_size, seed=net.seed,
                      lr=self.profile.lr, anneal_at=self.profile.anneal_at, device=self.device,
                      progress=self.progress, desc=f"{trained_with(net.route, net.strength, self.projections)}")
        store.save_checkpoint(self.checkpoint_path(config), model.state_dict(), {"config": config})
        metrics = run_metrics(history, start, len(train), self.device)
        metrics["train_peak_memory_mb"] = metrics.pop("peak_memory_mb")
        return model.eval(), metrics

    def _load_weights(self, config: dict):
        """The saved network of ``config``, or None when its weights are missing or corrupt (then it is retrained)."""
        path = self.checkpoint_path(config)
        if not path.exists():
            return None
        try:
            state, _ = store.load_checkpoint(path)
        except store.CorruptCheckpoint:
            return None
        model = models.build(ARCH, self.data.in_channels, self.data.num_classes, self.width)
        model.load_state_dict(state)
        return model.to(self.device).eval()

    def test_split(self) -> jdata.Split:
        return jdata.subset(self.data.test, self.test_per_class, 0)

    def _test(self, model, metrics: dict) -> dict:
        """Accuracy at every sigma not yet measured (mean, std over draws; the same noise draws for every
        network), and the penalised quantities on the first test images."""
        test = self.test_split()
        same = metrics.get("evaluation") == self.evaluation()
        noise = dict(metrics.get("noise", {})) if same else {}
        for sigma in [0.0, *self.sigmas]:
            entry = noise.get(_sigma_key(sigma))
            if entry is None or (sigma > 0 and len(entry["draws"]) < self.noise_draws):
                noise[_sigma_key(sigma)] = accuracy_under_noise(model, self.data, test, sigma, self.noise_draws,
                                                                self.noise_seed, self.evaluation()["batch_size"],
                                                                self.device)
        jacobian = metrics["jacobian"] if same and "jacobian" in metrics else \
            jacobian_norms(model, self.data, test, JACOBIAN_IMAGES, self.device)
        return {"evaluation": self.evaluation(), "noise": noise, "jacobian": jacobian, "n_test": len(test),
                "test_accuracy": noise[_sigma_key(0.0)]["mean"]}

    # ---- results ------------------------------------------------------------------------------------------
    def _records(self) -> list[tuple[Network, dict]]:
        out = []
        for net in self.networks():
            record = store.load_record(self.run_config(net), self.results)
            if self._evaluated(record):
                out.append((net, record))
        return out

    def records(self):
        """One row per (route, strength, seed) that has finished: clean accuracy, the penalised quantities
        measured after training, time and memory. The strength-0 network appears under every route."""
        import pandas as pd

        rows = []
        for net, rec in self._records():
            m = rec["metrics"]
            rows.append({"route": net.route, "strength": net.strength, "seed": net.seed,
                         "trained_with": trained_with(net.route, net.strength, self.projections),
                         "test_accuracy": m["test_accuracy"],
                         "label_jacobian_sq": m["jacobian"]["label_output_sq"],
                         "frobenius_sq": m["jacobian"]["frobenius_sq"],
                         "train_seconds": m["train_seconds"], "eval_seconds": m["eval_seconds"],
                         "peak_memory_mb": m["peak_memory_mb"], "steps": m["steps"], "n_train": m["n_train"],
                         "n_test": m["n_test"], "key": rec["key"]})
        return pd.DataFrame(rows)

    def curves(self):
        """A long DataFrame for plotting: one row per (route, strength, seed, sigma, noise draw)."""
        import pandas as pd

        rows = []
        for net, rec in self._records():
            for sigma in self.sigmas:
                draws = rec["metrics"]["noise"][_sigma_key(sigma)]["draws"]
                for i, acc in enumerate(draws if sigma == 0 else draws[:self.noise_draws]):
                    rows.append({"route": net.route, "strength": net.strength, "seed": net.seed,
                                 "trained_with": trained_with(net.route, net.strength, self.projections),
                                 "sigma": sigma, "draw": i, "accuracy": acc})
        return pd.DataFrame(rows, columns=["route", "strength", "seed", "trained_with", "sigma", "draw", "accuracy"])

    def show_paper(self) -> bool:
        """The paper's numbers stand beside ours only for its own setting: CIFAR-100 in the paper profile."""
        return self.profile.name == "paper" and self.dataset == "cifar100"

    def table(self, numeric: bool = True):
        """Table 3's layout: one row per (route, strength), one ``σ=…`` column per test sigma holding
        "mean ± std" over every noise draw of every seed (a single number at sigma 0 with one seed, as
        in the paper), ``paper σ=…`` beside it for the paper's own setting, then ``mean σ=…``/``std σ=…``
        numbers (``numeric=False`` leaves them out)."""
        import pandas as pd

        curves = self.curves()
        rows = []
        for route in self.routes:
            for strength in self.strengths:
                row = {"route": route, "strength": strength,
                       "trained with": trained_with(route, strength, self.projections)}
                part = curves[(curves["route"] == route) & (curves["strength"] == strength)]
                row["networks"] = part["seed"].nunique()
                numbers = {}
                for sigma in self.sigmas:
                    acc = part.loc[part["sigma"] == sigma, "accuracy"]
                    n = len(acc)
                    mean = float(acc.mean()) if n else float("nan")
                    std = float(acc.std(ddof=1)) if n > 1 else (0.0 if n else float("nan"))
                    row[f"σ={sigma:g}"] = fmt(mean, std, n) if n else "not run"
                    if self.show_paper():
                        row[f"paper σ={sigma:g}"] = paper_cell(route, strength, sigma)
                    numbers[f"mean σ={sigma:g}"], numbers[f"std σ={sigma:g}"] = mean, std
                if numeric:
                    row.update(numbers)
                rows.append(row)
        return pd.DataFrame(rows).set_index(["route", "strength"])

    def describe(self) -> str:
        todo = self.pending()
        train = sum(self.status(n) == "train" for n in todo)
        distinct = len({store.config_hash(self.run_config(n)) for n in self.networks()})
        return (f"{self.profile.name} profile: {self.dataset}, VGG-9 width {self.width:g}, {self.epochs} epochs on "
                f"{'the full set' if self.per_class == 'full' else f'{self.per_class} images per class'}; routes "
                f"{self.routes}, strengths {self.strengths}, {len(self.seeds)} seed(s): {distinct} networks, "
                f"{train} to train, {len(todo) - train} to re-test; tested at sigmas {self.sigmas} x "
                f"{self.noise_draws} draws on {len(self.test_split())} test images, on {self.device}")


def paper_cell(route: str, strength: float, sigma: float) -> str:
    """The paper's Table 3 entry as "mean ± std" (a single number at sigma 0), or "" where it has none."""
    if route != "penalty":
        return ""
    for s, row in paper.TABLE3_ROBUSTNESS["rows"].items():
        if math.isclose(s, strength, abs_tol=1e-12):
            for t, (mean, std) in zip(PAPER_SIGMAS, row):
                if math.isclose(t, sigma, abs_tol=1e-12):
                    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return ""


def paper_curves():
    """The paper's Table 3 as a long DataFrame (strength, sigma, mean, std) for plotting."""
    import pandas as pd

    return pd.DataFrame([{"strength": s, "sigma": t, "accuracy": mean, "std": std or 0.0}
                         for s, row in paper.TABLE3_ROBUSTNESS["rows"].items()
                         for t, (mean, std) in zip(PAPER_SIGMAS, row)])


def jacobian_norms(model, dataset: jdata.Dataset, split: jdata.Split, n: int = JACOBIAN_IMAGES,
                   device="auto") -> dict:
    """Means over the first ``n`` images of ``split`` of the two penalised quantities, in eval mode
    (exact per-sample gradients): ``||grad_x S^y||^2`` (the label's output, the paper's penalty) and
    ``||J_S||_F^2 = sum_i ||grad_x S^i||^2`` (all outputs, Proposition 2's regulariser), exactly, one
    backward pass per output."""
    device = resolve_device(device)
    part = jdata.Split(split.x[:n], split.y[:n])
    label = frob = 0.0
    with eval_mode(model.to(device)):
        for x, y, _ in Batches(part, dataset, 128, device, shuffle=False):
            label += float(input_gradient(model, x, y).flatten(1).pow(2).sum())
            for i in range(dataset.num_classes):
                frob += float(input_gradient(model, x, i).flatten(1).pow(2).sum())
    return {"label_output_sq": label / len(part), "frobenius_sq": frob / len(part), "images": len(part)}


def plan(profile: str = "cpu", dataset: str | None = None, strengths=None, sigmas=PAPER_SIGMAS,
         noise_draws=None, seeds=None, routes=ROUTES, device: str = "auto", *, results=None, progress: bool = True,
         width=None, epochs=None, per_class=None, test_per_class=None, batch_size=None, projections: int = 1,
         noise_seed: int = 0, data_root=None) -> RobustnessPlan:
    """Validate every parameter (ValueError naming it and what is allowed), load the dataset, return the plan.

    The positional arguments are notebook 04's parameters, with its defaults. None means the profile's value:
    dataset, strengths, noise_draws, width/epochs/per_class (robust_*), batch_size, test_per_class
    (robust_test_per_class);
    seeds None means one network per strength (seed 0), as in the paper. Lists may arrive as text (papermill's
    ``-p``). Nothing is trained or written here.
    """
    p = profiles.get(profile)
    dataset = check_dataset(p.dataset if dataset is None else dataset)
    strengths = _check_distinct("strengths", check_numbers(
        "strengths", as_list("strengths", p.robust_strengths if strengths is None else strengths,
                             "[0, 0.01, 0.1, 0.5, 1.0]"), minimum=0.0))
    sigmas = _check_distinct("sigmas", check_numbers(
        "sigmas", as_list("sigmas", sigmas, "[0, 0.1, 0.2, 0.3, 0.4]"), minimum=0.0))
    noise_draws = check_positive_int("noise_draws", p.noise_draws if noise_draws is None else noise_draws)
    seeds = check_seeds("seeds", [0] if seeds is None else as_list("seeds", seeds, "[0, 1, 2]"))
    routes = check_choices("routes", as_list("routes", routes, str(list(ROUTES)), words=True), ROUTES)
    width = check_positive_number("width", p.robust_width if width is None else width)
    epochs = check_positive_int("epochs", p.robust_epochs if epochs is None else epochs)
    batch_size = check_positive_int("batch_size", p.batch_size if batch_size is None else batch_size)
    projections = check_positive_int("projections", projections)
    noise_seed = check_nonnegative_int("noise_seed", noise_seed)
    per_class = check_per_class("per_class", p.robust_per_class if per_class is None else per_class)
    test_per_class = check_per_class("test_per_class",
                                     p.robust_test_per_class if test_per_class is None else test_per_class)
    try:
        device = resolve_device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N' ({e})") from None
    data = jdata.load(dataset, root=data_root)
    check_fits("per_class", per_class, data.train)
    check_fits("test_per_class", test_per_class, data.test)
    return RobustnessPlan(p, dataset, strengths, sigmas, noise_draws, seeds, list(routes), width, epochs, per_class,
                          test_per_class, batch_size, projections, noise_seed, device, data, results, progress)
