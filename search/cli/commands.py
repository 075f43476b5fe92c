"""The `search` group and the commands that run a search: start, worker, status, presets, copy.

Each parses its options, calls the library, and prints.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import optuna

from search.cli.options import (
    Group,
    Hours,
    data_dir_option,
    new_study_options,
    storage_options,
    worker_options,
)
from search.define import DATASETS, OBJECTIVES, lines, load_preset
from search.errors import ENV_DEBUG
from search.run import (
    Ending,
    WorkerRequest,
    best_line,
    run_study,
    status_lines,
)
from search.store import (
    ENV_URL,
    MAX_TOTAL,
    Opened,
    Prepared,
    counts,
    describe_url,
    finished,
    open_existing,
    prepare,
    recover,
    stored_total,
    transfer_study,
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="search")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Hyperparameter search for small Keras convnets on MNIST-like data.

    \b
    Example:
      search start --dataset fashion_mnist --trials 50
      search status
      search retrain-best
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ[ENV_DEBUG] = "1"
    # Progress lines are ours: Optuna's per-trial log would repeat them, and for a failed trial
    # it prints the traceback that the progress line sums up in one reason.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)


@cli.command()
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), help="Dataset to search on.")
@click.option(
    "--preset",
    metavar="NAME|FILE",
    help="A preset by name (./studies/NAME.toml, else a shipped one: see 'search "
    "presets') or a .toml file. Defaults to the dataset's.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1, max=100_000),
    help="The study's total of trained trials: each trained at least one epoch. Networks "
    "rejected before training (impossible, over budget) are recorded but not counted. "
    "Default: the preset's, or as many as fit with --hours alone.",
)
@click.option(
    "--hours",
    type=Hours(),
    help="Wall-clock budget from now: no new trial starts after it, in any worker; running "
    "trials finish. Rerun to resume for as long again; a start that joins workers still "
    "running keeps their deadline. Default: the preset's hours, if any.",
)
@data_dir_option()
@click.option(
    "--max-params",
    type=click.IntRange(min=1),
    help="Parameter budget: larger networks end untrained, as pruned. Overrides the "
    "preset's max_params; pruning on val_loss is kept.",
)
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    help="val_loss (default), or val_loss+params: a multi-objective search for the "
    "Pareto front of val_loss against size. Optuna cannot prune multi-objective "
    "studies, so trials then run to early stopping; the cost guard still applies.",
)
@worker_options
@new_study_options
def start(
    dataset: str | None,
    preset: str | None,
    trials: int | None,
    data_dir: Path | None,
    max_params: int | None,
    objective: str | None,
    hours: float | None,
    request: WorkerRequest,
    url: str | None,
    study_name: str | None,
) -> None:
    """Start or resume a search; rerunning the same command resumes to the same total.

    Several copies, on this machine or on others sharing the storage, work on one study.

    \b
    Example:
      search start --dataset fashion_mnist --trials 50
      search start --dataset fashion_mnist --trials 200 --workers auto
      search start --preset demo --backend jax
      search start --dataset fashion_mnist --hours 1.5 --workers auto
      search start --dataset mnist --trials 30 --study digits --data-dir ~/mnist
    """
    if dataset is None and preset is None:
        raise click.UsageError("Pass --dataset or --preset.")
    chosen = load_preset(preset or dataset)  # type: ignore[arg-type]
    if dataset and chosen.dataset != dataset:
        raise click.UsageError(f"Preset '{chosen.name}' is for {chosen.dataset}, not {dataset}.")
    run = prepare(
        chosen,
        url=url,
        name=study_name,
        trials=trials,
        max_params=max_params,
        objective=objective,
        hours=hours,
    )
    _echo_prepared(run)
    _run(run, run.total, request, fresh=run.created, data_dir=data_dir)
    click.echo("Next: 'search status' for the table, 'search retrain-best' to test the winner.")


def _echo_prepared(run: Prepared) -> None:
    """Where the study lives, whether it is new, its total, and how it prunes and ends."""
    done = finished(run.study)
    click.echo(f"Storage: {describe_url(run.url)}")
    click.echo(
        f"Study '{run.study.study_name}' "
        f"({'new' if run.created else f'resuming, {done} finished'}): "
        + ("as many trials as fit" if run.total >= MAX_TOTAL else f"{run.total} trials")
        + f", preset {run.preset.name}, "
        + (
            "objectives val_loss and params, no pruning."
            if run.preset.multi_objective
            else f"pruner {run.preset.pruner}."
        )
        + _deadline(run)
    )
    if run.changed:
        click.echo(
            f"The preset changed since the study's last start: {'; '.join(run.changed)}. "
            "This run and the workers that join it use the new settings."
        )
    _echo_lost(run.lost)
    for name in run.requeued:
        click.echo(f"'{name}' was stopped before it finished; it is queued to run again.")


def _deadline(run: Prepared) -> str:
    """When the search stops starting trials: the hours set now, or the running workers'."""
    deadline = run.study.user_attrs.get("deadline")
    if not run.joined:
        return f" No new trial starts after {run.preset.hours:g} h." if run.preset.hours else ""
    if deadline is None:
        return " It joins workers that run it with no time limit."
    left = (deadline - time.time()) / 60
    when = f"in {left:.0f} min" if left > 0 else f"passed {-left:.0f} min ago"
    return f" It joins workers that run it and keeps their deadline ({when})."


@cli.command("presets")
def list_presets() -> None:
    """List the presets that --preset NAME finds, where each comes from, and what it is.

    A preset in ./studies/ of the current directory comes before a shipped one of the
    same name.

    \b
    Example:
      search presets
    """
    for line in lines():
        click.echo(line)


@cli.command()
@data_dir_option()
@worker_options
@storage_options
def worker(
    data_dir: Path | None,
    request: WorkerRequest,
    url: str | None,
    study_name: str | None,
) -> None:
    """Join a study under way from any machine that reaches its storage, and help finish it.

    Runs trials until the study reaches the total its 'search start' set.

    \b
    Example:
      export SEARCH_STORAGE=postgresql+psycopg://search@db-host/search
      search worker --study fashion_mnist --workers auto
      search worker --study fashion_mnist --backend jax --gpus 0,1 --workers auto
    """
    run = open_existing(url, study_name)
    total = stored_total(run.study)
    lost = recover(run.study)
    running = counts(run.study)["RUNNING"]
    click.echo(f"Storage: {describe_url(run.url)}")
    click.echo(
        f"Joining study '{run.study.study_name}': {finished(run.study)} of "
        f"{total} trials finished, {running} running."
    )
    _echo_lost(tuple(lost))
    _run(run, total, request, fresh=False, data_dir=data_dir)


def _run(
    run: Opened,
    total: int,
    request: WorkerRequest,
    *,
    fresh: bool,
    data_dir: Path | None,
) -> None:
    """Run the study's trials here and print how the run ended (run.ending decides)."""
    outcome = run_study(
        run.study,
        run.preset,
        total,
        url=run.url,
        request=request,
        fresh=fresh,
        data_dir=data_dir,
        log=click.echo,
    )
    if outcome.ending is Ending.INTERRUPTED:
        click.echo(f"\n{outcome.message}", err=True)
        sys.exit(outcome.exit_code)
    if outcome.ending in (Ending.REACHED, Ending.TIME_UP, Ending.FAILURES):
        click.echo(best_line(run.study))
    if not outcome.ok:
        raise click.ClickException(outcome.message)
    if outcome.message:
        click.echo(outcome.message)


def _echo_lost(numbers: tuple[int, ...]) -> None:
    if numbers:
        click.echo(
            f"Trial(s) {', '.join(f'#{n}' for n in numbers)} had lost their worker: "
            "failed, and queued again."
        )


@cli.command()
@storage_options
def status(url: str | None, study_name: str | None) -> None:
    """Show a study's trials, counts by state, and the best trial.

    While trials run, also the time since the first one started and an estimate of the rest.

    \b
    Example:
      search status --study fashion_mnist
    """
    opened = open_existing(url, study_name)
    click.echo(
        f"Study '{opened.study.study_name}' on {opened.preset.dataset} (preset "
        f"{opened.preset.name}), {describe_url(opened.url)}"
    )
    for line in status_lines(opened.study):
        click.echo(line)


@cli.command("copy")
@click.option(
    "--from",
    "source",
    metavar="URL",
    envvar=ENV_URL,
    show_envvar=True,
    help="Storage to copy from; it must exist. Defaults to storage/search.db.",
)
@click.option(
    "--to",
    "target",
    metavar="URL",
    required=True,
    help="Storage to copy into, sqlite:///FILE or postgresql+psycopg://USER@HOST/DB; "
    "created if missing.",
)
@click.option(
    "--study",
    metavar="NAME",
    help="The study to copy; needed when the source holds several.",
)
@click.option(
    "--as",
    "name",
    metavar="NAME",
    help="Name of the copy. Defaults to the study's own; an existing study is never replaced.",
)
def copy_study(source: str | None, target: str, study: str | None, name: str | None) -> None:
    """Copy a study with all its trials and attributes to another storage, to go on there.

    Trials that were running in the source are failed in the copy and queued again.

    \b
    Example:
      search copy --to postgresql+psycopg://search@db-host/search --study fashion_mnist
      search copy --from postgresql+psycopg://search@db-host/search --to sqlite:///backup.db
    """
    transfer_study(source, target, study, new_name=name, log=click.echo)
