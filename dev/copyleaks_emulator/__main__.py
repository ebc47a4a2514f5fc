"""``python -m copyleaks_emulator --port 8099 [--host H] [--credits N] [--p-429 0.1] ...``

Every setting of :class:`~copyleaks_emulator.EmulatorSettings` is a flag (underscores as dashes);
``--account EMAIL:KEY`` (repeatable) replaces the default demo account.
"""

from __future__ import annotations

import argparse
import gc
import sys

import uvicorn

from copyleaks_emulator import EmulatorSettings, create_app


def _account(value: str) -> tuple[str, str]:
    email, sep, key = value.partition(":")
    if not (sep and email and key):
        raise argparse.ArgumentTypeError("expected EMAIL:KEY")
    return email, key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copyleaks_emulator", description="Copyleaks AI Image Detector emulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--account", type=_account, action="append", help="EMAIL:KEY (repeatable)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    for name, field in EmulatorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        elif field.annotation in (int, float):
            parser.add_argument(flag, type=field.annotation, default=None, help=field.description)
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    given = {
        name: getattr(args, name)
        for name in EmulatorSettings.model_fields
        if getattr(args, name, None) is not None
    }
    if args.account:
        given["accounts"] = dict(args.account)
    return EmulatorSettings(**given)


def main(argv: list[str] | None = None) -> None:
    # The account limits time each request's arrival; threads decoding images must not hold the
    # event loop off the GIL for Python's default 5 ms at a time (arrivals would bunch up).
    sys.setswitchinterval(0.0005)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    print(f"Copyleaks emulator on http://{args.host}:{args.port} (accounts: {', '.join(settings.accounts)})")
    app = create_app(settings)
    # The limits' clock is the event loop: a full collection over the libraries' objects would hold the
    # requests arriving meanwhile and stamp them as one burst. Frozen, they are left out of every
    # collection; only what the run itself creates is walked.
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level=args.log_level)


if __name__ == "__main__":
    main()
