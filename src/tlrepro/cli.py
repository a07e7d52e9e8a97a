"""Command line: `tlrepro <command>` (or `python -m tlrepro`); the DVC stages call these.

Every command first validates params.yaml against its schema. Errors meant for people (UserError) print
as one line naming what to fix, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys


def _download(args: argparse.Namespace) -> None:
    from tlrepro.data.download import download_dataset

    download_dataset(args.dataset)


def _prepare(args: argparse.Namespace) -> None:
    from tlrepro.data.index import prepare_dataset

    prepare_dataset(args.dataset)


def _derive(args: argparse.Namespace) -> None:
    from tlrepro.data.derive import derive_dataset

    derive_dataset(args.dataset)


def _overlap(args: argparse.Namespace) -> None:
    from tlrepro.data.overlap import write_overlap

    write_overlap()


def _split(args: argparse.Namespace) -> None:
    from tlrepro.data.splits import write_study_split

    write_study_split(args.study)


def _pretrain(args: argparse.Namespace) -> None:
    from tlrepro.studies.transfer import pretrain

    pretrain(args.key)


def _run(args: argparse.Namespace) -> None:
    from tlrepro.reports.runner import parse_overrides, run_study

    run_study(args.study, overrides=parse_overrides(args.set))


def _report(args: argparse.Namespace) -> None:
    from tlrepro.reports.index import write_index

    print(f"wrote {write_index()}")


def _predict(args: argparse.Namespace) -> None:
    from tlrepro.modeling.predict import predict_cli

    predict_cli(args.model, args.folder, out=args.out, batch_size=args.batch_size, explain=args.explain)


def _serve(args: argparse.Namespace) -> None:
    from tlrepro.serve.server import serve

    serve(models_dir=args.models, host=args.host, port=args.port, default=args.default,
          allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin))


def _export(args: argparse.Namespace) -> None:
    from tlrepro.modeling.export import export_cli

    export_cli(args.model, fmt=args.format, quantize=args.quantize, out=args.out, images=args.images)


def _offline_flags(args: argparse.Namespace) -> None:
    from tlrepro.modeling.offline import offline_flags

    print(offline_flags())


def _metrics(args: argparse.Namespace) -> None:
    from tlrepro.core.config import load_params
    from tlrepro.reports.console import metrics_text

    studies = list(load_params().studies)
    if args.study and args.study not in studies:
        load_params().study(args.study)  # names the known studies
    print(metrics_text([args.study] if args.study else studies))


def _profile(args: argparse.Namespace) -> None:
    from tlrepro.modeling.profiles import profile_flags

    print(profile_flags(args.name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlrepro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    command("download", _download, "fetch a dataset into data/raw/<key> (Kaggle, or $KAGGLE_MIRROR)").add_argument("dataset")
    command("prepare", _prepare, "index and validate data/raw/<key> into data/index/<key>.csv").add_argument("dataset")
    command("derive", _derive, "make a derived dataset (e.g. stain-normalized) from its source").add_argument("dataset")
    command("overlap", _overlap, "compare every pair of prepared datasets (exact and perceptual hashes)")
    command("split", _split, "write data/splits/<study>.csv and its leakage audit").add_argument("study")
    command("pretrain", _pretrain, "train a `pretraining` entry into models/pretrained/<key>.keras").add_argument("key")
    p = command("run", _run, "execute notebooks/<study>.ipynb with papermill and render its HTML report")
    p.add_argument("study")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="extra papermill parameter")
    command("report", _report, "write reports/index.html: every study's figures beside the paper's")
    p = command("predict", _predict, "label every image of a folder with a saved model (CSV of predictions)")
    p.add_argument("model", help="a saved .keras file with its card, or a name such as sarker2025/MobileNetV2")
    p.add_argument("folder", help="searched recursively for every image format prepare accepts")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--explain", action="store_true", help="also write a Grad-CAM overlay PNG per image")
    p = command("serve", _serve, "serve the saved models: a REST API and a web page (FastAPI + uvicorn)")
    p.add_argument("--models", default=None, help="folder of saved models with cards (default: models/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--default", default=None, help="the model answering requests that name none (default: "
                                                   "serve.default_model, else the ImageNet-initialised model with "
                                                   "the best validation accuracy)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name (repeatable; loopback names always): needed when others "
                        "reach the server under a name, e.g. with --host 0.0.0.0")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let the web page at ORIGIN (scheme://host[:port]) POST to the API, with CORS (repeatable)")
    p = command("export", _export, "export a saved model for TensorFlow Serving (SavedModel) or phones (TFLite), "
                                   "its card beside it")
    p.add_argument("model", help="a saved .keras file with its card, or a name such as sarker2025/MobileNetV2")
    p.add_argument("--format", choices=("saved_model", "tflite"), required=True)
    p.add_argument("--quantize", choices=("dynamic", "float16"), default=None,
                   help="TFLite only: dynamic-range (int8 weights) or float16 weights (default: none, float32)")
    p.add_argument("--out", default=None, help="where to write (default: exports/<study>/<row> for a SavedModel "
                                               "folder, exports/<study>/<row>[.<quantize>].tflite for TFLite)")
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="with --quantize: measure the export against the Keras model on these images (default: "
                        "the card's validation images); max |ΔP| and flipped labels are printed and go in the card")
    command("metrics", _metrics, "every study's headline figures, one line per row and figure (readable where "
                                 "`dvc metrics show` is not)").add_argument("study", nargs="?")
    command("profile", _profile, "print the -S flags of a hardware profile: `gpu` lifts every CPU cap "
                                 "(epoch caps, partial fine-tuning, scale caps)").add_argument("name", choices=["gpu"])
    command("offline-flags", _offline_flags, "print the -S flags that set random weights where no "
                                             "ImageNet weights are reachable offline")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ logs would bury our one-line errors
    args = build_parser().parse_args(argv)
    target = getattr(args, "dataset", None) or getattr(args, "study", None) or getattr(args, "key", None)
    # the DVC stage this command is (a study's notebook kernel inherits it): see tlrepro.core.params_reads
    os.environ["TLREPRO_STAGE"] = {"run": "study"}.get(args.command, args.command) + (f"@{target}" if target else "")
    from tlrepro.core.config import load_params
    from tlrepro.core.errors import UserError

    try:
        if args.command not in ("predict", "serve", "export"):
            load_params()  # every setting checked before any work starts
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system failure no step anticipated: still one line naming the path
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot access{where} ({exc.strerror or exc}): check that it exists and is readable "
              f"(and its folder writable), then run again.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was half-written; run the command again.", file=sys.stderr)
        return 130
    return 0
