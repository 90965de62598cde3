"""The command-line entry of a trainer (``refcoco-edit train [--model NAME] ...``), shared by
ReferDiffusion and FreeEdit: ``--config`` + ``--key value`` overrides read by the trainer's
``load_config``, ``--help`` from its ``help_parser``, and one exit-code contract."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence


def trainer_main(argv: Optional[Sequence[str]], prog: str, config_help: str,
                 help_parser: Callable[[], argparse.ArgumentParser],
                 load_config: Callable[[Optional[str], Sequence[str]], Any], train: Callable[[Any], Any]) -> int:
    """Parse ``argv``, load the config and train: 0 done; 2 a bad config or unusable data (one
    ``error:`` line); 1 a full disk (one line saying how to resume). Other errors propagate."""
    from refcoco_edit.errors import InputError, disk_error_message, is_disk_error

    class _Help(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: D401 - argparse API
            help_parser().print_help()
            parser.exit()

    ap = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    ap.add_argument("--config", help=config_help)
    ap.add_argument("-h", "--help", action=_Help, nargs=0)
    args, rest = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, rest)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_disk_error(e):
            raise
        rerun = None if cfg.resume else "re-run with --resume latest: it continues from the last checkpoint"
        print(f"error: {disk_error_message(e, *([rerun] if rerun else []))}", file=sys.stderr)  # one line
        return 1
    return 0
