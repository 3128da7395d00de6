"""Distribution shift: ``widenet covariate-weights``, ``label-shift``, ``weighted-fit``
(:mod:`widenet.shift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    SHIFT,
    OverwriteOpt,
    StandardizeOpt,
    fail,
    flag,
    out,
    quantity_table,
    saved,
    topic,
)

app, command = topic(SHIFT)

_SHIFT_DATA_HELP = "A .npy/.csv file (rows = points) or a bundled set: digits, iris, wine, "
_SHIFT_DATA_HELP += "breast_cancer (then --source and --target name the same set, split in two)."
_CLASSIFIERS = ("logistic", "gradient-boosting", "random-forest")


def _shift_classifier(name: str, c: float, seed: int):
    """A probabilistic scikit-learn classifier by name (for the domain or the black box)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if name == "logistic":
        if not c > 0:
            raise ValueError(f"--c must be > 0, got {c}")
        return LogisticRegression(C=c, max_iter=5000)
    if name == "gradient-boosting":
        return HistGradientBoostingClassifier(random_state=seed)
    if name == "random-forest":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=seed)
    raise ValueError(f"--classifier must be one of {', '.join(_CLASSIFIERS)}, got {name!r}")


def _features(option: str, path: str):
    """Features (n, d) float64 from a .npy/.csv file, with the option's name on errors."""
    from widenet import io

    return io.load_inputs(path, standardize=False, option=option).numpy()


def _labels(option: str, path: str, n_rows: int):
    """Integer class labels (n,) from a .npy/.csv file."""
    from widenet import io
    from widenet.shift import class_labels

    y = io.load_targets(path, option, n_rows)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return class_labels(y, option, n_rows)


def _bundled_pair(source: str, target: str) -> bool:
    """True for a bundled set named twice, False for two files; anything else is an error."""
    from widenet.data import SKLEARN_DATASETS

    bundled = [v in SKLEARN_DATASETS and not Path(v).exists() for v in (source, target)]
    if all(bundled):
        if source != target:
            raise ValueError(
                f"--source and --target must name the same bundled set (it is split in two), "
                f"got {source!r} and {target!r}"
            )
        return True
    if any(bundled):
        raise ValueError("--source and --target: give two .npy/.csv files or one bundled set twice")
    return False


def _standardize_pair(xs, xt):
    """Z-score both with the source's statistics (constant features left at 0)."""
    import numpy as np

    mean, sd = xs.mean(axis=0), xs.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (xs - mean) / sd, (xt - mean) / sd


@command("covariate-weights")
def covariate_weights(
    out_: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Weights at the source points: .npy, or .npz (weights, "
            "raw_weights, target_probability[, true_weights]); a summary goes to OUT with .json.",
        ),
    ],
    source: Annotated[str, typer.Option("--source", help="Source inputs. " + _SHIFT_DATA_HELP)],
    target: Annotated[str, typer.Option("--target", help="Unlabelled target inputs.")],
    classifier: Annotated[
        str, typer.Option("--classifier", help="Domain classifier: " + ", ".join(_CLASSIFIERS))
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    clip: Annotated[
        float | None, typer.Option("--clip", help="Upper bound on the raw weights (reported).")
    ] = None,
    normalize: Annotated[
        bool, flag("--normalize/--no-normalize", help="Rescale the weights to mean 1.")
    ] = True,
    folds: Annotated[
        int | None, typer.Option("--folds", help="Cross-fitting folds (default: in-sample).")
    ] = None,
    beta: Annotated[
        float,
        typer.Option("--beta", help="Bundled set: strength of the induced selection on --feature."),
    ] = 1.0,
    feature: Annotated[
        str, typer.Option("--feature", help="Bundled set: 'pc1' or a column index.")
    ] = "pc1",
    standardize: StandardizeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, classifier and split.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Importance weights w(x) = p_target(x)/p_source(x) from a domain classifier, and the ESS.

    With one bundled set named twice, a covariate shift is induced (selection by sigmoid(-+beta
    z) of a feature z, wn.shift.feature_shift) and the true weights are saved and compared.
    """
    import numpy as np
    import torch

    from widenet import io, shift
    from widenet.data import load_dataset

    try:
        io.check_suffix(out_, (".npy", ".npz"))
        true = None
        if _bundled_pair(source, target):
            x, _ = load_dataset(source, standardize=standardize is not False, dtype=torch.float64)
            feat = int(feature) if feature.isdigit() else feature
            src, tgt, true = shift.feature_shift(x, beta, feature=feat, seed=seed)
            xs, xt = x.numpy()[src], x.numpy()[tgt]
            what = f"{source}: induced shift beta={beta:g} on {feature}"
        else:
            xs, xt = _features("--source", source), _features("--target", target)
            if xs.shape[1] != xt.shape[1]:
                raise ValueError(
                    f"--source has {xs.shape[1]} features but --target has {xt.shape[1]}"
                )
            if standardize:
                xs, xt = _standardize_pair(xs, xt)
            what = f"{source} -> {target}"
        cw = shift.covariate_shift_weights(
            xs,
            xt,
            _shift_classifier(classifier, c, seed),
            clip=clip,
            normalize=normalize,
            folds=folds,
            seed=seed,
        )
        summary = {"data": what, "classifier": classifier, **cw.summary()}
        arrays = {
            "weights": cw.weights,
            "raw_weights": cw.raw_weights,
            "target_probability": cw.target_probability,
        }
        if true is not None:
            true = true / true.mean() if normalize else true
            arrays["true_weights"] = true
            summary["relative_error"] = float(
                np.linalg.norm(cw.weights - true) / np.linalg.norm(true)
            )
        io.check_new_outputs([out_, out_.with_suffix(".json")], overwrite)  # both before either
        io.save_arrays(out_, arrays, "weights", overwrite=overwrite)
        io.write_json(out_.with_suffix(".json"), summary, overwrite=overwrite)
    except (ValueError, TypeError, OSError) as error:
        raise fail(str(error)) from None
    out().print(f"covariate-shift weights, {what}", soft_wrap=True)
    out().print(quantity_table([(k, v) for k, v in summary.items() if k != "data"]))
    saved(out_, out_.with_suffix(".json"))


def _parse_induce(tweak_one: str | None, dirichlet: float | None, k: int, seed: int):
    """The target prior of an induced label shift, or None."""
    from widenet import shift

    if tweak_one is not None and dirichlet is not None:
        raise ValueError("give at most one of --tweak-one and --dirichlet")
    if tweak_one is not None:
        try:
            cls, rho = tweak_one.split(":")
            return shift.tweak_one_prior(k, int(cls), float(rho))
        except ValueError as err:
            raise ValueError(f"--tweak-one must be CLASS:RHO (e.g. 3:0.5): {err}") from None
    if dirichlet is not None:
        return shift.dirichlet_prior(k, dirichlet, seed=seed)
    return None


@command("label-shift")
def label_shift(
    out_: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output .json: weights, q(y), confusion, test."),
    ],
    source: Annotated[
        str | None, typer.Option("--source", help="Source inputs. " + _SHIFT_DATA_HELP)
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target inputs.")] = None,
    source_labels: Annotated[
        str | None, typer.Option("--source-labels", help="Source labels .npy/.csv (files).")
    ] = None,
    source_pred: Annotated[
        str | None,
        typer.Option(
            "--source-pred",
            help="Black-box mode: your model's predictions on held-out labelled source data, "
            "(n,) labels or (n, k) probabilities (.npy/.csv); with --source-labels.",
        ),
    ] = None,
    target_pred: Annotated[
        str | None, typer.Option("--target-pred", help="Black-box mode: predictions on target.")
    ] = None,
    holdout: Annotated[
        float, typer.Option("--holdout", help="Fraction of the source held out for C_hat.")
    ] = 0.4,
    classifier: Annotated[
        str, typer.Option("--classifier", help="Black box fitted on the source: logistic, ...")
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    soft: Annotated[
        bool, flag("--soft/--hard", help="BBSE on probabilities or predicted labels.")
    ] = False,
    regularization: Annotated[
        float, typer.Option("--regularization", help="Ridge of the solve (0 = exact).")
    ] = 0.0,
    test: Annotated[
        str, typer.Option("--test", help="Two-sample test: chi2, g or permutation.")
    ] = "chi2",
    tweak_one: Annotated[
        str | None,
        typer.Option("--tweak-one", help="Bundled set: target prior tweak-one CLASS:RHO."),
    ] = None,
    dirichlet: Annotated[
        float | None,
        typer.Option("--dirichlet", help="Bundled set: target prior ~ Dirichlet(ALPHA)."),
    ] = None,
    n_target: Annotated[
        int, typer.Option("--n-target", help="Bundled set: target points drawn.")
    ] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Seed of splits and draws.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Black-box shift estimation (Lipton et al. 2018): w = q(y)/p(y), q(y), and a shift test.

    Give either your model's predictions (--source-pred, --source-labels, --target-pred), or
    inputs (--source, --source-labels, --target: a classifier is fitted on part of the source),
    or one bundled set twice (optionally with an induced --tweak-one or --dirichlet shift).
    """
    import numpy as np
    import torch

    from widenet import io, shift
    from widenet.data import load_dataset

    try:
        io.check_suffix(out_, (".json",))
        if not 0 < holdout < 1:
            raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
        rng = np.random.default_rng(seed)
        true_prior = None
        if source_pred is not None or target_pred is not None:
            if source_pred is None or target_pred is None or source_labels is None:
                raise ValueError(
                    "black-box mode needs --source-pred, --source-labels and --target-pred"
                )
            if source is not None or target is not None:
                raise ValueError("give either predictions (--source-pred ...) or --source/--target")
            ps = _features("--source-pred", source_pred)
            pt = _features("--target-pred", target_pred)
            ps, pt = (ps[:, 0], pt[:, 0]) if ps.shape[1] == 1 == pt.shape[1] else (ps, pt)
            ys = _labels("--source-labels", source_labels, len(ps))
            classes = None if ps.ndim == 1 else np.arange(ps.shape[1])
            what = f"predictions {source_pred} -> {target_pred}"
            analysis = shift.analyze_label_shift(
                ps, ys, pt, classes=classes, regularization=regularization, test=test, seed=seed
            )
        else:
            if source is None or target is None:
                raise ValueError("give --source and --target (or the black-box predictions)")
            if _bundled_pair(source, target):
                x, y = load_dataset(source, dtype=torch.float64)
                x, y = x.numpy(), y.numpy()
                k = int(y.max()) + 1
                perm = rng.permutation(len(x))
                half = len(x) // 2
                pool_s, pool_t = perm[:half], perm[half:]
                q = _parse_induce(tweak_one, dirichlet, k, seed)
                if q is not None:
                    true_prior = (q, np.bincount(y[pool_s], minlength=k) / half)
                    pool_t = pool_t[shift.sample_with_prior(y[pool_t], q, n_target, seed=seed)]
                xs, ys, xt = x[pool_s], y[pool_s], x[pool_t]
                what = f"{source}: {len(xs)} source / {len(xt)} target points"
            else:
                if tweak_one is not None or dirichlet is not None:
                    raise ValueError("--tweak-one/--dirichlet induce a shift on bundled sets only")
                if source_labels is None:
                    raise ValueError("--source is a file: give its labels with --source-labels")
                xs, xt = _features("--source", source), _features("--target", target)
                if xs.shape[1] != xt.shape[1]:
                    raise ValueError(
                        f"--source has {xs.shape[1]} features but --target has {xt.shape[1]}"
                    )
                ys = _labels("--source-labels", source_labels, len(xs))
                what = f"{source} -> {target}"
            analysis = shift.label_shift_from_classifier(
                _shift_classifier(classifier, c, seed),
                xs,
                ys,
                xt,
                holdout=holdout,
                soft=soft,
                regularization=regularization,
                test=test,
                seed=seed,
                rng=rng,
            )
        est, result = analysis.estimate, analysis.test
        payload = {"data": what, **analysis.summary()}
        if true_prior is not None:
            q, p = true_prior
            payload["true_weights"] = (q / p).tolist()
            payload["weight_mse"] = float(np.mean((est.weights - q / p) ** 2))
        io.write_json(out_, payload, overwrite=overwrite)
    except (ValueError, TypeError, OSError, np.linalg.LinAlgError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(f"BBSE, {what}; cond(C_hat) = {est.condition_number:.3g}", soft_wrap=True)
    table = Table("class", "p(y) source", "w_hat", "q_hat(y)", box=None, pad_edge=False)
    for i, cls in enumerate(est.classes):
        table.add_row(
            str(cls),
            f"{est.source_prior[i]:.3f}",
            f"{est.weights[i]:.3f}",
            f"{est.target_prior[i]:.3f}",
        )
    console.print(table)
    if est.negative:
        console.print(f"negative w_hat (set to 0 in q_hat) for classes {est.negative}")
    if "weight_mse" in payload:
        console.print(f"induced shift: mean squared error of w_hat {payload['weight_mse']:.4g}")
    console.print(
        f"{result.method} test of p(y_hat) = q(y_hat): statistic {result.statistic:.4g}, "
        f"dof {result.dof}, p-value {result.p_value:.3g}",
        soft_wrap=True,
    )
    saved(out_)


@command("weighted-fit")
def weighted_fit(
    out_: Annotated[
        Path, typer.Option("--out", "-o", help="Predicted labels on --predict: .npy (or .npz).")
    ],
    train: Annotated[str, typer.Option("--train", help="Training inputs .npy/.csv.")],
    labels: Annotated[str, typer.Option("--labels", help="Training labels .npy/.csv.")],
    predict: Annotated[str, typer.Option("--predict", help="Inputs to predict .npy/.csv.")],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Per-example weights .npy/.csv (e.g. from "
            "covariate-weights; an .npz: its 'weights'); default: all 1.",
        ),
    ] = None,
    label_weights: Annotated[
        str | None,
        typer.Option(
            "--label-weights", help="A label-shift .json: weights max(w_hat(y_i), 0) per label."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="logistic (scikit-learn) or mlp (torch).")
    ] = "logistic",
    c: Annotated[float, typer.Option("--c", help="Inverse ridge strength C (logistic).")] = 1.0,
    width: Annotated[int, typer.Option("--width", help="mlp: hidden width.")] = 128,
    steps: Annotated[int, typer.Option("--steps", help="mlp: Adam steps (full batch).")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="mlp: Adam learning rate.")] = 0.01,
    test_labels: Annotated[
        str | None, typer.Option("--test-labels", help="Labels of --predict: report accuracy.")
    ] = None,
    standardize: StandardizeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the network.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Weighted empirical risk minimisation: fit with per-example weights, predict new inputs."""
    import numpy as np
    import torch

    import widenet as wn
    from widenet import io, shift

    try:
        io.check_suffix(out_, (".npy", ".npz"))
        if weights is not None and label_weights is not None:
            raise ValueError("give at most one of --weights and --label-weights")
        xs, xp = _features("--train", train), _features("--predict", predict)
        if xs.shape[1] != xp.shape[1]:
            raise ValueError(f"--train has {xs.shape[1]} features but --predict {xp.shape[1]}")
        if standardize:
            xs, xp = _standardize_pair(xs, xp)
        ys = _labels("--labels", labels, len(xs))
        if weights is not None:
            w = io.load_weights(weights, "--weights", len(xs))
        elif label_weights is not None:
            payload = io.load_json(label_weights, "--label-weights")
            table = dict(zip(payload["classes"], payload["weights"], strict=True))
            missing = sorted(set(np.unique(ys).tolist()) - set(table))
            if missing:
                raise ValueError(f"--label-weights has no weight for labels {missing}")
            w = np.array([max(table[v], 0.0) for v in ys.tolist()])
        else:
            w = np.ones(len(xs))
        ess = shift.effective_sample_size(np.asarray(w, dtype=np.float64).reshape(-1))
        if model == "logistic":
            fitted = shift.fit_weighted_sklearn(_shift_classifier("logistic", c, seed), xs, ys, w)
            classes, proba = fitted.classes_, fitted.predict_proba(xp)
        elif model == "mlp":
            classes = np.unique(ys)
            idx = np.searchsorted(classes, ys)
            net = wn.mlp(depth=1, activation="relu", out_dim=len(classes)).network(
                xs.shape[1], width, seed, dtype=torch.float64
            )
            shift.fit_weighted(net, xs, idx, w, steps=steps, lr=lr, seed=seed)
            with torch.no_grad():
                proba = torch.softmax(net(torch.as_tensor(xp)), 1).numpy()
        else:
            raise ValueError(f"--model must be logistic or mlp, got {model!r}")
        pred = classes[proba.argmax(1)]
        arrays = {"predictions": pred, "probabilities": proba, "classes": classes}
        io.save_arrays(out_, arrays, "predictions", overwrite=overwrite)
        accuracy = None
        if test_labels is not None:
            accuracy = float(np.mean(pred == _labels("--test-labels", test_labels, len(xp))))
    except (ValueError, TypeError, OSError, KeyError, FloatingPointError) as error:
        raise fail(str(error)) from None
    rows = [("model", model), ("n_train", len(xs)), ("ESS of the weights", ess)]
    if accuracy is not None:
        rows.append(("accuracy on --predict", accuracy))
    out().print(quantity_table(rows))
    saved(out_)
