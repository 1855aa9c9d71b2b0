"""The ``allstudy`` command line: ``data scan``, ``data split``, ``synth``, ``train``, ``run``, ``predict``,
``serve`` and ``export``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import time
from collections import Counter
from pathlib import Path

from allstudy.core.atomic import read_json
from allstudy.core.version import __version__
from allstudy.data.segment import INPUT_MODES
from allstudy.data.split import DEFAULT_FRACTIONS, SPLIT_PROTOCOLS
from allstudy.models.profiles import ARCHITECTURES, PROFILES, STRATEGIES
from allstudy.models.views import DIHEDRAL_VIEWS
from allstudy.serving import EXPORT_FORMATS
from allstudy.study.console import LOG_NAME, StudyConsole
from allstudy.study.study_data import SYNTHETIC_DATASETS

# Each command imports what it needs when it runs: TensorFlow alone takes seconds to import (15 s on this
# project's loaded 2-core machine), which `data scan` or `--help` must not pay.


#: How ``data scan`` names the parts of a release with an official split.
PART_NAMES = {"train": "training folds", "test": "preliminary test (labels from its CSV)"}


def _scan(args: argparse.Namespace) -> int:
    from allstudy.data.prepare import scan

    result = scan(args.dir, progress=not args.quiet)
    report = result.report()
    if args.out:
        from allstudy.core.atomic import write_csv, write_json

        out = Path(args.out)
        write_csv(result.manifest.table, out / "manifest.csv")
        write_csv(result.links, out / "duplicates.csv")
        write_json(out / "scan.json", report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    sizes = Counter(len(g) for g in report["near_duplicate_groups"])
    print(f"Scanned {report['images']} files in {report['root']} ({report['layout']}) in {report['seconds']} s")
    print("  usable per class: " + ", ".join(f"{k} {v}" for k, v in report["classes"].items()))
    for part, classes in report["parts"].items():
        print(f"    {PART_NAMES.get(part, part)}: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    if report["unlabelled"]:
        print(f"  unlabelled (scored by allstudy predict, never trained on): {len(report['unlabelled'])}")
    if report["subjects"]:
        print(
            f"  subjects: {len(report['subjects'])} ({', '.join(report['subjects'][:8])}"
            f"{', ...' if len(report['subjects']) > 8 else ''})"
        )
    print(f"  problems: {len(report['problems'])}")
    for problem in report["problems"]:
        print(f"    {problem['path']}: {problem['reason']}")
    if report["notes"]:
        print(
            f"  converted on reading: {len(report['notes'])} "
            f"(e.g. {report['notes'][0]['path']}: {report['notes'][0]['note']})"
        )
    print(f"  exact duplicate groups: {len(report['exact_duplicate_groups'])}")
    print(
        f"  near-duplicate / overlapping-field groups: {len(report['near_duplicate_groups'])}"
        + (f" (sizes: {', '.join(f'{n} of {s}' for s, n in sorted(sizes.items()))})" if sizes else "")
    )
    print("  (--json for every group and path)")
    return 0


def _split(args: argparse.Namespace) -> int:
    from allstudy.data.prepare import prepare

    prepared = prepare(args.dir, args.out, seed=args.seed, fractions=tuple(args.fractions), progress=not args.quiet)
    print(prepared.counts().to_string())
    print(f"wrote {Path(args.out) / 'splits.csv'}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    if args.dataset == "cnmc":
        if args.leukocytes:
            raise ValueError("--leukocytes is for the Taleqani fields; a C-NMC image holds one cell")
        from allstudy.data.synthetic_cnmc import generate_cnmc_dataset

        out = generate_cnmc_dataset(args.out, n_per_class=args.n_per_class, seed=args.seed, progress=not args.quiet)
    else:
        from allstudy.data.synthetic import generate_dataset

        out = generate_dataset(
            args.out,
            n_per_class=args.n_per_class,
            seed=args.seed,
            progress=not args.quiet,
            leukocytes=tuple(args.leukocytes) if args.leukocytes else None,
        )
    print(f"synthetic dataset in {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from allstudy.study.runner import train_architecture

    result = train_architecture(
        args.data,
        args.out,
        args.profile,
        args.arch,
        dataset=args.dataset,
        weights_dir=args.weights_dir,
        weights=args.weights,
        epochs=args.epochs,
        input_size=args.input_size,
        strategy=args.strategy,
        batch_size=args.batch_size,
        input_mode=args.input_mode,
        tta_views=args.tta_views,
        run_name=args.run_name,
        split=args.split,
    )
    accuracy = result.metrics.get("accuracy", {})
    print(
        f"{args.arch}: validation accuracy {accuracy.get('val', float('nan')):.2%}, test accuracy "
        f"{accuracy.get('test', float('nan')):.2%}, {result.params['train_seconds']:.0f} s; run in {result.run_dir}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    log = None if args.verbose else out / LOG_NAME
    started = time.perf_counter()
    with StudyConsole(log) as console:
        if log is not None:
            console.say(f"allstudy run: profile {args.profile}, into {out}; the steps' own output goes to {log}")
        from allstudy.study.runner import run

        results = run(
            args.data,
            profile=args.profile,
            out=args.out,
            dataset=args.dataset,
            force=args.force,
            weights_dir=args.weights_dir,
            architectures=args.arch,
            strategy=args.strategy,
            jobs=args.jobs,
            console=console,
        )
    print(
        f"\nThe study is done in {time.perf_counter() - started:.0f} s. The report: {out / 'report.html'} "
        "(open it in a browser)\n"
        f"{_chosen_line(out)}\n"
        f"Figures: {out / 'summary.json'}, {out / 'comparison.csv'}; "
        f"each step: {out / 'notebooks'}/ ({len(results)} notebooks, .ipynb and .html)\n"
        f"The app on the chosen model: python app.py --model {out / 'models' / 'chosen'} "
        "(then open the address it prints)"
    )
    return 0


def _chosen_line(out: Path) -> str:
    """The chosen model in one line, from summary.json: test accuracy, malignant images called benign, referrals."""
    from allstudy.data.datasets import dataset_facts

    summary = read_json(out / "summary.json")
    run = summary["runs"][summary["chosen"]]
    decision = run["decision"]
    many = dataset_facts(summary["data"]["classes"]).images
    return (
        f"Chosen model (validation macro-F1): {summary['chosen']}, test accuracy {run['test']['accuracy']:.1%}; "
        f"under the decision policy {decision['malignant_called_benign']} of {decision['n_malignant']} malignant "
        f"test {many} called benign, {decision['referred']} referred for review; in {out / 'models' / 'chosen'}"
    )


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from allstudy.core.atomic import write_csv
    from allstudy.serving.predictor import Predictor, collect_files, predictions_frame

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
    predictor = Predictor(args.model, batch_size=args.batch_size)
    files = collect_files(args.paths)
    predictions = []
    with tqdm(total=len(files), desc="predicting", unit="img", disable=args.quiet) as bar:
        for start in range(0, len(files), args.batch_size):
            chunk = files[start : start + args.batch_size]
            predictions += predictor.predict_batch(chunk, batch_size=args.batch_size)
            bar.update(len(chunk))
    frame = predictions_frame(predictions, predictor.classes, [str(f) for f in files])
    write_csv(frame, args.out)
    counts = Counter(p.verdict if p.ok else "unreadable" for p in predictions)
    readable = sum(p.ok for p in predictions)
    if not args.quiet and readable:
        print(
            f"wrote {len(frame)} rows to {args.out}: "
            + (", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "no files"),
            file=sys.stderr,
        )
    if readable == 0:
        first = next((f"; e.g. {p.source}: {p.error}" for p in predictions), "")
        print(
            f"allstudy: error: none of the {len(files)} files given could be read as an image{first}", file=sys.stderr
        )
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    from allstudy.serving.export import export_model

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, not {args.limit}")
    report = export_model(
        args.model,
        args.format,
        args.out,
        split_csv=args.split_csv,
        data=args.data,
        batch_size=args.batch_size,
        limit=args.limit,
        quiet=args.quiet,
    )
    out = Path(args.out)
    for row in report["variants"]:
        print(
            f"{out / row['file']}: {row['file_bytes'] / 1e6:.2f} MB; on {row['n_images']} test images argmax "
            f"agreement {row['argmax_agreement']:.4f}, max |dp| {row['max_abs_diff']:.2e}, accuracy "
            f"{row['test_accuracy']:.2%} (Keras {row['keras_test_accuracy']:.2%}, {row['accuracy_change_pp']:+.2f} pp)"
        )
    print(f"wrote {out / 'parity.json'} ({report['seconds']['total']:.0f} s)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from allstudy.serving.app import launch

    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}")
    try:
        launch(args.model, port=args.port, share=args.share)  # blocks until Ctrl-C
    except OSError as err:
        if "port" not in str(err):
            raise
        where = f"port {args.port}" if args.port else "Gradio's default ports (7860 and up)"
        raise ValueError(f"cannot listen on 127.0.0.1 at {where}: it is in use; pass a free --port") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m allstudy``."""
    parser = argparse.ArgumentParser(
        prog="allstudy", description="A reproducible study of ALL detection from peripheral-blood-smear images."
    )
    parser.add_argument("--version", action="version", version=f"allstudy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="inspect and split a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    scan = data_commands.add_parser("scan", help="list files, problems, exact and near-duplicate groups")
    scan.add_argument("dir", help="dataset folder (class folders, Kaggle Taleqani or C-NMC layout)")
    scan.add_argument("--json", action="store_true", help="print the full report as JSON")
    scan.add_argument("--out", help="also write manifest.csv, duplicates.csv and scan.json here")
    scan.add_argument("--quiet", action="store_true", help="no progress bars")
    scan.set_defaults(func=_scan)
    split = data_commands.add_parser("split", help="scan (cached) and write a grouped, stratified split")
    split.add_argument("dir", help="dataset folder")
    split.add_argument(
        "--out", default="outputs/data", help="folder for manifest.csv, splits.csv, ... (default: %(default)s)"
    )
    split.add_argument("--seed", type=int, default=0)
    split.add_argument(
        "--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS), metavar=("TRAIN", "VAL", "TEST")
    )
    split.add_argument("--quiet", action="store_true", help="no progress bars")
    split.set_defaults(func=_split)

    dataset_help = "the synthetic default: " + "; ".join(f"{k}: {v}" for k, v in SYNTHETIC_DATASETS.items())
    synth = commands.add_parser("synth", help="write a synthetic dataset (blood-smear fields or C-NMC-like cells)")
    synth.add_argument("out", help="folder to write (created; must be empty or an earlier synthetic dataset)")
    synth.add_argument("--dataset", choices=list(SYNTHETIC_DATASETS), default="taleqani", help=dataset_help)
    synth.add_argument("--n-per-class", type=int, default=100)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--leukocytes",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="lymphoid cells per field, drawn from LOW..HIGH (the demo profile: 4 8); default one to three",
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    weights_help = (
        "folder holding ImageNet weight files that load offline (e.g. mobilenet_2_5_224_tf_no_top.h5); "
        "default: $ALLSTUDY_WEIGHTS_DIR; without one, 'imagenet' downloads through Keras"
    )
    train = commands.add_parser("train", help="train one architecture (resumes an interrupted run)")
    train.add_argument("--arch", required=True, help=", ".join(ARCHITECTURES))
    train.add_argument("--data", help="dataset folder; omit for the embedded synthetic default")
    train.add_argument("--dataset", choices=list(SYNTHETIC_DATASETS), default="taleqani", help=dataset_help)
    train.add_argument("--profile", default="quick", choices=list(PROFILES))
    train.add_argument(
        "--out", default="outputs", help="output folder; the run goes to OUT/runs/ARCH (default: %(default)s)"
    )
    train.add_argument("--weights", help="imagenet, none, or a weights file (default: the profile's)")
    train.add_argument("--weights-dir", help=weights_help)
    train.add_argument("--epochs", type=int, help="epochs (transfer models: fine-tuning epochs)")
    train.add_argument("--input-size", type=int, help="input side in pixels")
    train.add_argument("--batch-size", type=int, help="batch size per replica")
    train.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy")
    train.add_argument(
        "--input-mode",
        choices=INPUT_MODES,
        help="train on the fields (original) or a variant: segmented leukocytes, or a control's input",
    )
    train.add_argument(
        "--tta-views", type=int, choices=list(DIHEDRAL_VIEWS), help="dihedral views averaged at prediction"
    )
    train.add_argument("--run-name", help="run folder under OUT/runs (default: the architecture)")
    train.add_argument(
        "--split",
        choices=SPLIT_PROTOCOLS,
        default="grouped",
        help="grouped: the study's split (overlapping fields never cross); image: the published studies' "
        "image-level split, to measure what its leak is worth (run ARCH-image-split)",
    )
    train.set_defaults(func=_train)

    run = commands.add_parser("run", help="run the whole study (notebooks via papermill)")
    run.add_argument("--data", help="dataset folder; omit for the embedded synthetic default")
    run.add_argument("--dataset", choices=list(SYNTHETIC_DATASETS), default="taleqani", help=dataset_help)
    run.add_argument("--profile", default="quick", choices=list(PROFILES))
    run.add_argument("--out", default="outputs", help="output folder (default: %(default)s)")
    run.add_argument("--weights-dir", help=weights_help)
    run.add_argument("--arch", nargs="+", help="only these architectures (default: the profile's)")
    run.add_argument("--force", action="store_true", help="re-execute every step even when unchanged")
    run.add_argument(
        "--strategy", choices=STRATEGIES, help="tf.distribute strategy of every training step (default: one device)"
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks executed at once, each in its own kernel, "
        "with the same results; 2 keeps both cores of a 2-core machine busy (default: %(default)s)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show every step's own output (TensorFlow's logs included) instead of one line per step; "
        "without it, that output goes to OUT/study.log",
    )
    run.set_defaults(func=_run)

    predict = commands.add_parser("predict", help="classify image files with a model folder, into a CSV")
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files or folders (searched recursively; every file is tried, by content)",
    )
    predict.add_argument(
        "--model",
        required=True,
        help="model folder (model.keras, model.json, optional ood.json), e.g. outputs/models/chosen",
    )
    predict.add_argument("--out", default="predictions.csv", help="CSV to write (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    predict.set_defaults(func=_predict)

    export = commands.add_parser("export", help="export a model folder to TFLite or ONNX, checked on its test split")
    export.add_argument(
        "--model", required=True, help="model folder (model.keras, model.json), e.g. outputs/models/chosen"
    )
    export.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="tflite: model.tflite (float) and model_dynamic.tflite (dynamic-range int8); onnx: model.onnx",
    )
    export.add_argument("--out", required=True, help="folder to write the export, model.json and parity.json into")
    export.add_argument(
        "--split-csv",
        help="the splits.csv of the study that trained the model (default: "
        "OUTDIR/data/splits.csv for a model in OUTDIR/models/chosen)",
    )
    export.add_argument(
        "--data",
        help="dataset folder the split's paths are relative to (default: the one recorded in data.json or model.json)",
    )
    export.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    export.add_argument("--limit", type=int, help="check only the first N test fields (a quick look)")
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(func=_export)

    serve = commands.add_parser("serve", help="start the Gradio app on 127.0.0.1 (API: /predict, /predict_batch)")
    serve.add_argument(
        "--model",
        default="outputs/models/chosen",
        help="model folder (default: %(default)s); without one the app starts and says how to make it",
    )
    serve.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    serve.set_defaults(func=_serve)
    return parser


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path = path.resolve()
    except OSError:
        return False
    return path == folder or folder in path.parents


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def os_error_message(err: OSError, out: str | None = None) -> str:
    """One line for an OSError; a full disk or a folder that cannot be written says what to do."""
    path = Path(err.filename) if err.filename else None
    folder = Path(out).resolve() if out else None
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = folder if path is None or (folder is not None and _is_under(path, folder)) else path.parent
        return (
            f"no space left on the disk of {where} ({err.strerror}); free some space or pass an --out folder on "
            "another disk, then run the same command again: finished steps are kept"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and path is not None:
        if (folder is not None and _is_under(path, folder)) or not _exists(path):
            where = path.parent
            return (
                f"cannot write in {where} ({err.strerror}); make it writable (e.g. chmod u+w '{where}') "
                "or pass another --out folder"
            )
        return f"cannot read {path} ({err.strerror}); check its permissions"
    return f"{err.filename or ''} {err.strerror or err}".strip()


@contextlib.contextmanager
def _holding_output(args: argparse.Namespace):
    """``run`` holds its output folder alone and ``train`` beside other ``train`` commands (see
    :func:`allstudy.core.locks.output_lock`); each first removes what writers killed mid-write left there."""
    if args.command not in ("run", "train"):
        yield
        return
    from allstudy.core.atomic import remove_stale_temporaries
    from allstudy.core.locks import output_lock

    with output_lock(args.out, shared=args.command == "train") as out:
        remove_stale_temporaries(out if args.command == "run" else out / "runs" / (args.run_name or args.arch))
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status. Errors are one line naming what to fix."""
    from allstudy.core.locks import FolderBusy
    from allstudy.study.notebooks import StudyError

    args = build_parser().parse_args(argv)
    try:
        with _holding_output(args):
            return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, StudyError, FolderBusy) as err:
        print(f"allstudy: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        models = sys.modules.get(
            "allstudy.models.registry"
        )  # not imported here: it would load TensorFlow for every command
        if models is None or not isinstance(err, models.WeightsUnavailable):
            raise
        print(f"allstudy: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"allstudy: error: {os_error_message(err, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allstudy: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
