"""The commands that read a search: retrain-best, dashboard and report."""

from __future__ import annotations

from pathlib import Path

import click

from search.cli.commands import cli
from search.cli.options import (
    backend_option,
    data_dir_option,
    storage_options,
)
from search.final import MEMBERS, retrain_ensemble, retrain_trial
from search.report import report_dir, write_report
from search.run import (
    sigterm_as_interrupt,
)
from search.store import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Opened,
    describe_url,
    home,
    open_dashboard,
    open_existing,
    resolve,
)


@cli.command("retrain-best")
@click.option(
    "--trial",
    "number",
    type=click.IntRange(min=0),
    help="Retrain this trial instead of the best one.",
)
@click.option(
    "--ensemble",
    "members",
    type=click.IntRange(min=2, max=20),
    help="Retrain the K best distinct trials (or, with --members best, the best trial K times) "
    "and save one model that averages their softmax outputs; each member's test accuracy and "
    "the ensemble's are recorded. The members' parameters fit the preset's max_params "
    "together: a trial that would take the total over it is passed over for the next best. "
    "A member that retrain-best already saved is loaded, not trained again.",
)
@click.option(
    "--members",
    "members_of",
    type=click.Choice(MEMBERS),
    help="With --ensemble: 'distinct' (the default) takes the K best distinct trials; 'best' "
    "trains the best trial K times, with its own seed and the next K-1, for a study whose "
    "best network is far ahead of the rest. K copies must fit max_params together.",
)
@data_dir_option()
@backend_option
@storage_options
def retrain_best(
    number: int | None,
    members: int | None,
    members_of: str | None,
    data_dir: Path | None,
    url: str | None,
    study_name: str | None,
) -> None:
    """Retrain the best trial on all training images, test it once, and save the model.

    The best trial has the lowest val_loss; in a size-aware (val_loss+params) study that
    trial is on the Pareto front, and --trial N picks any other.

    The final model trains for the preset's multiple (final_epochs) of the trial's best epoch
    count, on the preset's schedule (final_schedule). By default that is the lab's protocol
    (1 times, the trial's schedule); the fashion_mnist preset trains 3.5 times, on a cosine.
    A preset's final_augment and final_ema add augmentation and an average of the weights to
    the final run alone.

    \b
    Example:
      search retrain-best --study fashion_mnist
      search retrain-best --study fashion_mnist --ensemble 3
      search retrain-best --study fashion_mnist --ensemble 2 --members best
    """
    if members_of and not members:
        raise click.UsageError("--members goes with --ensemble K.")
    opened = open_existing(url, study_name)
    if members:
        if number is not None:
            raise click.UsageError("Pass --trial or --ensemble, not both.")
        _retrain_ensemble(opened, members, members_of or "distinct", data_dir)
        return
    retrain_trial(
        opened.study,
        opened.preset,
        out_dir=home(),
        number=number,
        data_dir=data_dir,
        log=click.echo,
        url=opened.url,
    )


def _retrain_ensemble(opened: Opened, k: int, members_of: str, data_dir: Path | None) -> None:
    result = retrain_ensemble(
        opened.study,
        opened.preset,
        k,
        out_dir=home(),
        data_dir=data_dir,
        log=click.echo,
        members_of=members_of,
        url=opened.url,
    )
    for m in result.members:
        click.echo(
            f"  member #{m.trial} {m.architecture}, seed {m.seed}: test accuracy "
            f"{m.test_accuracy:.2%}"
        )
    click.echo(
        f"Ensemble of {k} ({result.params:,} params): test accuracy {result.test_accuracy:.2%} "
        f"(loss {result.test_loss:.4f})."
    )
    click.echo(f"Model saved to {result.model_path}")


@cli.command()
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. The dashboard has no authentication: any other "
    "address lets whoever reaches it read and delete studies.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@storage_options
def dashboard(host: str, port: int, url: str | None, study_name: str | None) -> None:
    """Browse the studies in optuna-dashboard, served on the search's storage.

    \b
    Example:
      search dashboard --study fashion_mnist
      search dashboard --port 8081
    """
    rdb, url, study_name = resolve(url, study_name, required=False)
    board = open_dashboard(rdb, host, port, study_name)
    if board.exposed:
        click.echo(
            f"Warning: listening on {host}, beyond this machine. optuna-dashboard has no "
            "authentication: anyone who can reach this port can read and delete studies.",
            err=True,
        )
    click.echo(f"Storage: {describe_url(url)}")
    click.echo(f"optuna-dashboard: {board.url}", nl=False)
    click.echo(" (and this machine's other addresses)" if host in ("0.0.0.0", "::") else "")
    click.echo("Ctrl-C stops it.")
    try:
        with sigterm_as_interrupt():
            board.serve()
    except KeyboardInterrupt:
        click.echo("Dashboard stopped.")


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for REPORT.md and the figures. Defaults to storage/reports/STUDY/.",
)
@data_dir_option(" (for the test figures)")
@storage_options
def report(
    out_dir: Path | None, data_dir: Path | None, url: str | None, study_name: str | None
) -> None:
    """Write figures and REPORT.md: the search against the lab's runs, and the final model.

    \b
    Example:
      search report --study fashion_mnist
      search report --study demo --out reports/demo
    """
    opened = open_existing(url, study_name)
    folder = (out_dir or report_dir(opened.study.study_name)).resolve()
    click.echo(
        f"Report on study '{opened.study.study_name}' ({describe_url(opened.url)}) in {folder}"
    )
    written = write_report(
        opened.study,
        opened.preset,
        folder,
        data_dir=data_dir,
        log=click.echo,
    )
    click.echo(
        f"Wrote {written.markdown} and {len(written.figures)} figures"
        + (f"; {len(written.skipped)} not drawn (see REPORT.md)." if written.skipped else ".")
    )
