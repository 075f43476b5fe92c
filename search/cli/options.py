"""The CLI's shared parts: the error contract every command keeps, and the options several
commands share: data, storage, workers, backend and GPUs.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from search.define import MAX_HOURS
from search.errors import SearchError, first_line
from search.run import (
    ENV_GPUS,
    INTERRUPTED,
    RECYCLE_MB,
    RECYCLE_TRIALS,
    GpuError,
    WorkerRequest,
    parse_list,
)
from search.store import ENV_URL, resolve_url, scrub, storage_fault
from search.train import BACKENDS, DEFAULT_BACKEND, ENV_BACKEND, select


class Group(click.Group):
    """Turns every failure into one sentence and exit code 1; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo(f"\n{INTERRUPTED}", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            urls = storage_arguments(ctx.meta.get(_ARGS))
            fault = storage_fault(e, _failed_storage(urls))
            if fault is not None:  # a full disk or a lost server is no bug: say which
                message = str(fault)
                for url in urls:
                    message = scrub(message, url)
                raise click.ClickException(message) from None
            if not (ctx.obj and ctx.obj.get("debug")):
                first = first_line(e)
                for url in urls:
                    first = scrub(first, url)
                click.echo(
                    f"Error: unexpected {type(e).__name__}: {first} "
                    "(rerun with --debug for the full traceback).",
                    err=True,
                )
            sys.exit(1)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        ctx.meta[_ARGS] = list(args)  # the command's arguments, for invoke's error sentence
        return super().resolve_command(ctx, args)


_ARGS = "search.arguments"


def _failed_storage(urls: list[str | None]) -> str | None:
    """The one storage this command uses, to name it; None for `copy`, which uses two."""
    given = {url for url in urls[1:] if url}
    if len(given) > 1:
        return None
    return given.pop() if given else resolve_url(urls[0])


def storage_arguments(args: list[str] | None = None) -> list[str | None]:
    """The storage URLs this command was given (`args`, else the command line's), first
    $SEARCH_STORAGE's: to scrub their passwords from stray messages."""
    args = sys.argv[1:] if args is None else args
    urls: list[str | None] = [os.environ.get(ENV_URL)]
    for i, arg in enumerate(args):
        for option in ("--storage", "--from", "--to"):
            if arg.startswith(option + "="):
                urls.append(arg.split("=", 1)[1])
            elif arg == option and i + 1 < len(args):
                urls.append(args[i + 1])
    return urls


def data_dir_option(purpose: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--data-dir, shared by every command that reads images."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        help=f"Folder with the four IDX .gz files or Keras's .npz{purpose}.",
    )


def storage_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--storage and --study, for commands that open a study the storage holds."""
    return _storage_options(f, "Study name. Defaults to the storage's only study.")


def new_study_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--storage and --study, for `search start`, which makes the study it names."""
    return _storage_options(f, "Study name. Defaults to the preset's name (the dataset's).")


def _storage_options(f: Callable[..., Any], study_help: str) -> Callable[..., Any]:
    f = click.option("--study", "study_name", metavar="NAME", help=study_help)(f)
    f = click.option(
        "--storage",
        "url",
        metavar="URL",
        envvar=ENV_URL,
        show_envvar=True,
        help="Storage URL, sqlite:///FILE or postgresql+psycopg://USER@HOST/DB. "
        "Defaults to storage/search.db.",
    )(f)
    return f


class Hours(click.ParamType):
    """--hours: a finite positive number of hours, at most a year.

    click's FloatRange takes nan (it compares false with both bounds) and inf.
    """

    name = "hours"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            hours = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number of hours.", param, ctx)
        if not math.isfinite(hours) or not 0 < hours <= MAX_HOURS:
            self.fail(
                f"'{value}' is not a number of hours above 0 and at most {MAX_HOURS:,}.",
                param,
                ctx,
            )
        return hours


class WorkerCount(click.ParamType):
    """`--workers`: a positive number, or `auto`."""

    name = "N|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> str | int:
        if isinstance(value, int) or value == "auto":
            return value
        if str(value).isdigit() and int(value) >= 1:
            return int(value)
        self.fail(f"'{value}' is neither a positive number nor 'auto'.", param, ctx)


def worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--workers, --threads, --gpus and --backend; the command receives the first three as
    one `request` (run.WorkerRequest)."""

    @functools.wraps(command)
    def f(*args: Any, workers: str | int, threads: int | None, gpu_list: Any, **kw: Any) -> Any:
        gpus = None if gpu_list is None else tuple(gpu_list)
        return command(*args, request=WorkerRequest(workers, threads, gpus), **kw)

    f = click.option(
        "--threads",
        type=click.IntRange(min=1),
        envvar="SEARCH_THREADS",
        show_envvar=True,
        help="Threads per worker process (for JAX: the cores it runs on). Defaults to "
        "the cores shared out among the workers.",
    )(f)
    f = click.option(
        "--workers",
        "workers",
        type=WorkerCount(),
        default="1",
        metavar="N|auto",
        envvar="SEARCH_WORKERS",
        show_envvar=True,
        show_default=True,
        help="Worker processes on this machine, or auto: one per core, as memory allows (at "
        "most 64 on SQLite), and as the GPUs' free memory allows. Each is replaced by a fresh "
        f"process after {RECYCLE_TRIALS} trials or past {RECYCLE_MB:,} MB, "
        "between trials, to bound its memory; SEARCH_RECYCLE_TRIALS and SEARCH_RECYCLE_MB (0: "
        "never) change that.",
    )(f)
    return backend_option(gpus_option(f))


def _select_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # At parse time, before the command's body can import Keras.
    select(value)


def backend_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--backend, for every command that trains; it takes effect in worker processes too."""
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        envvar=ENV_BACKEND,
        show_envvar=True,
        expose_value=False,
        callback=_select_backend,
        help=f"Keras backend to train with. Defaults to {DEFAULT_BACKEND}; jax and "
        "torch need their extra installed (README: GPU and backends).",
    )(f)


def _gpu_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    try:
        return None if value is None else parse_list(value)
    except GpuError as e:
        raise click.BadParameter(str(e)) from None


def gpus_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--gpus, for the commands that start worker processes."""
    return click.option(
        "--gpus",
        "gpu_list",
        metavar="N[,N...]",
        envvar=ENV_GPUS,
        show_envvar=True,
        callback=_gpu_list,
        help="GPUs for this machine's workers, numbered as nvidia-smi lists them; each "
        "worker sees one. Defaults to every GPU (or CUDA_VISIBLE_DEVICES' choice).",
    )(f)
