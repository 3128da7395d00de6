"""Predictors: ``widenet fit-predict`` (infinite-width NTK/NNGP estimators,
:mod:`widenet.estimators`) and ``random-features`` (double descent over the feature count,
:mod:`widenet.random_features`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from widenet.cli._common import (
    B_STD,
    PREDICTORS,
    W_STD,
    ActivationOpt,
    ArchOpt,
    BStdOpt,
    DataSeedOpt,
    InShapeOpt,
    NTestOpt,
    NTrainOpt,
    OverwriteOpt,
    StandardizeOpt,
    TestOpt,
    TestTargetsOpt,
    TrainOpt,
    TrainTargetsOpt,
    WStdOpt,
    architecture,
    fail,
    flag,
    out,
    parse_times,
    saved,
    topic,
)

app, command = topic(PREDICTORS)


def _estimator_for(model: str, params: dict):
    from widenet.estimators import NTKSVC, NTKClassifier, NTKRegressor

    if model == "svc":
        params.pop("ridge"), params.pop("t")
        return NTKSVC(**params)
    params.pop("C")
    return (NTKClassifier if model == "classifier" else NTKRegressor)(**params)


@command("fit-predict")
def fit_predict(
    ctx: typer.Context,
    out_: Annotated[
        Path, typer.Option("--out", "-o", help="Output .npz (test predictions); metrics in .json.")
    ],
    train: TrainOpt = "digits",
    test: TestOpt = "digits",
    n_train: NTrainOpt = None,
    n_test: NTestOpt = None,
    train_targets: TrainTargetsOpt = None,
    test_targets: TestTargetsOpt = None,
    model: Annotated[
        str,
        typer.Option("--model", help="classifier (NTKClassifier), regressor or svc (NTKSVC)."),
    ] = "classifier",
    kernel_name: Annotated[str, typer.Option("--kernel", help="ntk or nngp.")] = "ntk",
    depth: Annotated[
        list[int] | None, typer.Option("--depth", help="Hidden layers; repeat to grid-search.")
    ] = None,
    ridge: Annotated[
        list[float] | None,
        typer.Option("--ridge", help="Ridge, relative to mean diag K; repeat to grid-search."),
    ] = None,
    c: Annotated[
        list[float] | None, typer.Option("--C", help="SVC's C (svc only); repeat to grid-search.")
    ] = None,
    time_: Annotated[
        str, typer.Option("--time", "-t", help="Training time of the flow; 'inf' = converged.")
    ] = "inf",
    cv: Annotated[int, typer.Option("--cv", help="Folds of the grid search.", min=2)] = 3,
    activation: ActivationOpt = "relu",
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    arch: ArchOpt = None,
    in_shape: InShapeOpt = None,
    proba: Annotated[
        bool,
        flag(
            "--proba",
            help="Also save class probabilities (classifier: softmax with a temperature fitted "
            "out of fold, NTKClassifier(probability=True)).",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit an infinite-width NTK/NNGP estimator (widenet.estimators) and predict the test set.

    Classification predicts class indices (positions in the sorted labels); with several
    --depth/--ridge/--C values the hyper-parameters are chosen by GridSearchCV (--cv folds).
    --arch (a preset such as cnn or myrtle5, or a YAML file of layers) replaces the MLP, with
    --in-shape 1,8,8 for flat inputs (--train digits-images / mnist1d come in their own shape).
    """
    import numpy as np
    import torch
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    from widenet import io

    try:
        io.check_suffix(out_, (".npz",))
        if model not in ("classifier", "regressor", "svc"):
            raise ValueError(f"--model must be classifier, regressor or svc, got {model!r}")
        (t,) = parse_times([time_])
        split = (train, test, n_train, n_test, "onehot", train_targets, test_targets, standardize)
        x_train, y_train, x_test, y_test, what = io.load_train_test(*split, data_seed)
        classify = model != "regressor"
        if classify:
            y_train = io.decode_labels(y_train)
            y_test = None if y_test is None else io.decode_labels(y_test)
        elif y_train.shape[1] == 1:
            y_train, y_test = y_train[:, 0], None if y_test is None else y_test[:, 0]
        grid = {"depth": depth or [3], "ridge": ridge or [1e-6], "C": c or [1.0]}
        params = dict(activation=activation, w_std=w_std, b_std=b_std, kernel=kernel_name, t=t)
        if arch is not None:
            # --arch describes the whole network: the MLP options keep the estimator's defaults
            mlp = dict(depth=depth, activation=activation, w_std=w_std, b_std=b_std)
            arch_, _ = architecture(ctx, arch, **mlp)
            shape = in_shape or io.natural_shape(train)
            params = dict(kernel=kernel_name, t=t, architecture=arch_)
            params["in_shape"] = None if shape is None else tuple(map(int, shape.split(",")))
        elif in_shape is not None:
            raise ValueError("--in-shape goes with --arch (an MLP takes flat inputs)")
        if proba:
            if model != "classifier":
                raise ValueError("--proba needs --model classifier")
            params["probability"] = True
        est = _estimator_for(model, {**params, **{k: v[0] for k, v in grid.items()}})
        search = {k: v for k, v in grid.items() if len(v) > 1 and k in est.get_params()}
        t0 = time.perf_counter()
        if search:
            split = StratifiedKFold if classify else KFold
            folds = split(cv, shuffle=True, random_state=data_seed)
            est = GridSearchCV(est, search, cv=folds).fit(x_train, y_train)
        else:
            est.fit(x_train, y_train)
        pred = est.predict(x_test)
        seconds = time.perf_counter() - t0
        metrics = {"model": model, "kernel": kernel_name, "data": what, "seconds": seconds}
        metrics["params"] = {
            k: (v if isinstance(v, (int, float, str)) else repr(v))
            for k, v in (est.best_estimator_ if search else est).get_params().items()
        }
        metrics["params"]["t"] = "inf" if np.isinf(t) else t
        if search:
            metrics["cv_score"] = float(est.best_score_)
        metrics["train_score"] = float(est.score(x_train, y_train))
        if y_test is not None:
            metrics["test_score"] = float(est.score(x_test, y_test))
            metrics["test_mse" if not classify else "test_accuracy"] = (
                float(np.mean((pred - y_test) ** 2)) if not classify else metrics["test_score"]
            )
        arrays = {"predictions": np.asarray(pred)}
        if proba:
            arrays["probabilities"] = np.asarray(est.predict_proba(x_test))
        if y_test is not None:
            arrays["test_targets"] = np.asarray(y_test)
        io.check_new_outputs([out_, out_.with_suffix(".json")], overwrite)  # both before either
        io.save_arrays(out_, arrays, overwrite=overwrite)
        io.write_json(out_.with_suffix(".json"), metrics, overwrite=overwrite)
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as error:
        raise fail(str(error)) from None
    score = "accuracy" if classify else "R^2"
    line = f"{model} ({kernel_name}) on {what} in {seconds:.2f} s: train {score} "
    line += f"{metrics['train_score']:.4f}"
    if "cv_score" in metrics:
        chosen = {k: metrics["params"][k] for k in search}
        line += f", CV {metrics['cv_score']:.4f} with {chosen}"
    if "test_score" in metrics:
        line += f", test {score} {metrics['test_score']:.4f}"
    out().print(line, soft_wrap=True)
    saved(out_, out_.with_suffix(".json"))


@command("random-features")
def random_features_cmd(
    out_: Annotated[Path, typer.Option("--out", "-o", help="Output .json with the curves over N.")],
    train: TrainOpt = "digits",
    test: TestOpt = "digits",
    n_train: Annotated[
        int | None,
        typer.Option(
            "--n-train",
            "--n",
            help="Training points (--n: the same; default: 200, or all rows of a smaller file).",
        ),
    ] = None,
    n_test: NTestOpt = None,
    train_targets: TrainTargetsOpt = None,
    test_targets: TestTargetsOpt = None,
    features: Annotated[str, typer.Option("--features", help="fourier or relu.")] = "fourier",
    n_features: Annotated[
        list[int] | None,
        typer.Option(
            "--n-features", "-N", help="Feature counts, repeatable (default: n/20 ... 20n)."
        ),
    ] = None,
    bandwidth: Annotated[
        float, typer.Option("--bandwidth", help="Gaussian-kernel bandwidth (fourier).")
    ] = 10.0,
    w_std: WStdOpt = W_STD,
    b_std: BStdOpt = B_STD,
    penalty: Annotated[
        float, typer.Option("--ridge", help="Ridge penalty; 0 = min-norm least squares.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random features.")] = 0,
    standardize: StandardizeOpt = None,
    data_seed: DataSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Random-features regression over N: train/test zero-one and squared loss, ||beta||.

    N counts real features (Fourier: N/2 cos/sin pairs, so N even); the interpolation
    threshold is N = n. Targets: one-hot labels (+-1 for two classes) or the given files.
    """
    import numpy as np
    import torch

    from widenet import io
    from widenet.random_features import feature_counts, sweep

    try:
        io.check_suffix(out_, (".json",))
        if n_train is None:  # 200 points, or a file's rows when it has fewer
            rows = 200 if io.is_bundled(train) else len(io.load_inputs(train, option="--train"))
            n_train = min(200, rows)
        split = (train, test, n_train, n_test, "onehot", train_targets, test_targets, standardize)
        x_train, y_train, x_test, y_test, what = io.load_train_test(*split, data_seed)
        if y_test is None:
            raise ValueError("the test set needs targets (--test-targets) to measure the error")
        n = len(x_train)
        counts = n_features or feature_counts(n, 0.05, 20.0, 25, features == "fourier")
        t0 = time.perf_counter()
        res = sweep(
            torch.as_tensor(x_train),
            torch.as_tensor(y_train),
            torch.as_tensor(x_test),
            torch.as_tensor(y_test),
            counts,
            kind=features,
            penalty=penalty,
            seed=seed,
            bandwidth=bandwidth,
            w_std=w_std,
            b_std=b_std,
        )
        seconds = time.perf_counter() - t0
        result = {"data": what, "features": features, "ridge": penalty, **res.as_dict()}
        io.write_json(out_, result, overwrite=overwrite)
    except (ValueError, TypeError, OSError, torch.linalg.LinAlgError) as error:
        raise fail(str(error)) from None
    console = out()
    console.print(
        f"random {features} features, {'ridge ' + format(penalty, 'g') if penalty else 'min-norm'}"
        f" least squares; {what}; threshold N = n = {n}; {seconds:.2f} s",
        soft_wrap=True,
    )
    table = Table("N", "train err", "test err", "train MSE", "test MSE", "||beta||", box=None)
    peak = int(np.argmax(res.test_mse))
    for i, c in enumerate(res.n_features):
        mark = " <- N = n" if c == n else (" <- peak" if i == peak else "")
        table.add_row(
            f"{c}{mark}",
            f"{res.train_error[i]:.3f}",
            f"{res.test_error[i]:.3f}",
            f"{res.train_mse[i]:.3g}",
            f"{res.test_mse[i]:.3g}",
            f"{res.coef_norm[i]:.3g}",
        )
    console.print(table)
    saved(out_)
