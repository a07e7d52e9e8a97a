"""Command line: `python -m tlrepro <command>`; DVC stages call these.

Errors meant for people (UserError) print as one line naming what to fix, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


def _download(args: argparse.Namespace) -> None:
    from tlrepro.download import download_dataset

    download_dataset(args.dataset)


def _prepare(args: argparse.Namespace) -> None:
    from tlrepro.index import prepare_dataset

    prepare_dataset(args.dataset)


def _split(args: argparse.Namespace) -> None:
    from tlrepro.splits import write_study_split

    write_study_split(args.study)


def _run(args: argparse.Namespace) -> None:
    from tlrepro.notebook import run_study

    run_study(args.study, overrides=dict(kv.split("=", 1) for kv in args.set or []))


def _report(args: argparse.Namespace) -> None:
    from tlrepro.report import write_index

    write_index()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlrepro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch a dataset into data/raw/<key> (Kaggle, or $KAGGLE_MIRROR)")
    p.add_argument("dataset")
    p.set_defaults(func=_download)
    p = sub.add_parser("prepare", help="index and validate data/raw/<key> into data/index/<key>.csv")
    p.add_argument("dataset")
    p.set_defaults(func=_prepare)
    p = sub.add_parser("split", help="write data/splits/<study>.csv and its leakage audit")
    p.add_argument("study")
    p.set_defaults(func=_split)
    p = sub.add_parser("run", help="execute notebooks/<study>.ipynb with papermill and render its HTML report")
    p.add_argument("study")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="extra papermill parameter")
    p.set_defaults(func=_run)
    p = sub.add_parser("report", help="write reports/index.html: every study's figures beside the paper's")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ logs would bury our one-line errors
    args = build_parser().parse_args(argv)
    from tlrepro.errors import UserError

    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was half-written; run the command again.", file=sys.stderr)
        return 130
    return 0
