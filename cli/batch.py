"""`s2v run` and `s2v retry`: a batch flow in this process, on the machine's shared local Prefect API.

Prefect is imported only once a batch starts, after its environment is set, so `s2v --help` and
`s2v generate` stay light. The flow runs in a thread: the main thread keeps the signals, so Ctrl-C or
SIGTERM stops the generation at its next denoising step, records the row as interrupted, and exits
130 within seconds; a second Ctrl-C exits at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter

from s2v.errors import BatchFailed, S2VError
from s2v.settings import Settings

EXIT_INTERRUPTED = 130
_watched_api: dict[str, str] = {}  # the local API this command started or found: watched while the batch runs
STOP_GRACE_S = 8.0  # after the first Ctrl-C: the current step ends and the row is recorded well within this
_PREFECT_DEFAULTS = {
    # Telemetry writes were the source of SQLite "database is locked" tracebacks in runs that succeeded.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def run_batch(manifest: str | None, settings: Settings, lookahead: int, verbose: bool, console,
              flagged: bool = False) -> int:
    """Run `manifest` (None: retry the output's failed rows, or with `flagged` its flagged clips); returns
    the exit status."""
    if settings.checkpoint is None:
        console.print("[yellow]No S2V_CHECKPOINT: using the tiny random-weight test checkpoint; its videos are "
                      "coloured noise (records say tiny_checkpoint: true).[/yellow]")
    from s2v.storage.reachability import check_output_reachable

    check_output_reachable(settings)  # one line naming the output, not a traceback from inside the flow
    if manifest is not None:
        total = _check_manifest(manifest, settings)
    else:
        total = _report_flagged(settings, console) if flagged else _report_retry(settings, console)
        if not total:
            return 0
    _prepare_prefect(settings, verbose, console)
    return _run_flow(manifest, settings, lookahead, total, console, flagged)


def _check_manifest(manifest: str, settings: Settings) -> int:
    """Parsed here first, so a broken manifest fails in a second, before Prefect or the model start."""
    from records.manifest import parse_manifest
    from records.manifest_text import manifest_text

    parsed = parse_manifest(manifest_text(manifest, settings), None, settings)
    return len(parsed.rows) + len(parsed.invalid)


def _report_retry(settings: Settings, console) -> int:
    from records.claims import record_dead_claims
    from records.ledger import load_ledger

    record_dead_claims(settings.output, settings)  # a row whose run was killed mid-row is retried too
    failed = load_ledger(settings.output, settings).retryable()
    by_manifest = Counter(record.manifest or "manifest.csv" for record in failed)
    where = ", ".join(f"{count} from manifest {name}" for name, count in by_manifest.items())
    console.print(f"{len(failed)} failed row(s) to retry in {settings.output}" + (f": {where}" if where else ""))
    return len(failed)


def _report_flagged(settings: Settings, console) -> int:
    from records.ledger import load_ledger

    flagged = load_ledger(settings.output, settings).flagged()
    console.print(f"{len(flagged)} flagged clip(s) to remake with a new seed in {settings.output}")
    return len(flagged)


def _prepare_prefect(settings: Settings, verbose: bool, console) -> None:
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # INFO for the loggers, so the run's logs in the UI say what happened (row made, failed; the summary)
    # whatever the terminal shows.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    if not verbose:
        # The terminal shows the product's own lines (bar, summary, one error line); Prefect's log lines
        # would interleave with them: only the console handlers are quieted, the API handler sends all.
        # --verbose brings them back.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")
    if not os.environ.get("PREFECT_API_URL"):
        from cli.local_api import api_home, ensure_local_api
        from cli.local_api_users import hold_local_api

        hold_local_api(api_home(settings))  # before the API is up: a stop meanwhile is refused too
        os.environ["PREFECT_API_URL"] = _watched_api["url"] = ensure_local_api(settings)
    if "prefect" in sys.modules:  # Prefect reads its settings at import: make it see the ones set here
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    if verbose:
        console.print(f"Prefect API: {os.environ['PREFECT_API_URL']}")


def _run_flow(manifest: str | None, settings: Settings, lookahead: int, total: int, console,
              flagged: bool = False) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cli.api_watch import EXIT_API_LOST, ApiWatch
    from flows.batch import batch, retry_failed
    from flows.execute import row_listeners
    from model_runtime import interrupt
    from records.claims import abandon_held_claims

    outcome: dict = {}
    common = dict(output=settings.output, checkpoint=str(settings.checkpoint or ""),
                  model_server=str(settings.model_server or ""), lookahead=lookahead)

    def run() -> None:
        try:
            if flagged:
                from flows.retry_flagged import retry_flagged

                state = retry_flagged(**common, return_state=True)
            elif manifest is None:
                state = retry_failed(**common, return_state=True)
            else:
                state = batch(manifest=manifest, **common, return_state=True)
            outcome["summary"] = state.result(raise_on_failure=False)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task_id = progress.add_task("rows", total=total)
        listener = lambda record: progress.advance(task_id)  # noqa: E731
        row_listeners.append(listener)
        worker = threading.Thread(target=run, name="s2v-batch", daemon=True)
        stopping = _StopOnSignal(console, interrupt)
        watch = (ApiWatch(_watched_api["url"], interrupt.request_stop, before_exit=abandon_held_claims)
                 if _watched_api else contextlib.nullcontext())
        try:
            with stopping, watch:
                worker.start()
                while worker.is_alive():
                    worker.join(0.2)
        finally:
            row_listeners.remove(listener)
    if getattr(watch, "lost", None):
        # Said in one line already. What Prefect raised, and its exit hooks still trying the lost API, is noise.
        abandon_held_claims(watch.lost)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_API_LOST)
    error = outcome.get("error")
    if isinstance(error, S2VError):
        raise error
    if error is not None:
        raise error
    summary = outcome["summary"]
    if isinstance(summary, BatchFailed):
        summary = summary.summary
    elif isinstance(summary, BaseException):  # the flow itself failed (storage lost mid-start, ...)
        raise summary if isinstance(summary, S2VError) else S2VError(f"the batch stopped: {summary}")
    print_summary(console, summary)
    if stopping.reason:
        console.print(f"[yellow]{stopping.reason}: rows not finished are recorded as interrupted or were not "
                      "started; run the same command again to resume.[/yellow]")
        return EXIT_INTERRUPTED
    return 1 if summary["failed"] or summary["interrupted"] else 0


class _StopOnSignal:
    """First SIGINT/SIGTERM: stop at the next step, exit once the row is recorded (at most STOP_GRACE_S).
    Second: exit at once. The ledger is written per row as rows end, so nothing finished is lost."""

    def __init__(self, console, interrupt):
        self.console, self.interrupt = console, interrupt
        self.reason: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        self.interrupt.clear()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self.interrupt.clear()

    def _on_signal(self, signum, _frame) -> None:
        if self.reason is not None:
            os._exit(EXIT_INTERRUPTED)
        self.reason = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "stopped (SIGTERM)"
        self.interrupt.request_stop(self.reason)
        self.console.print(f"[yellow]{self.reason}: stopping the generation at its next step "
                           "(Ctrl-C again to quit now)[/yellow]")
        threading.Thread(target=self._exit_after_grace, daemon=True).start()

    def _exit_after_grace(self) -> None:
        from records.claims import abandon_held_claims

        time.sleep(STOP_GRACE_S)
        sys.stderr.write("s2v: still busy after the grace time; quitting now (rows recorded so far are kept)\n")
        sys.stderr.flush()
        abandon_held_claims(f"{self.reason} before the row ended")
        os._exit(EXIT_INTERRUPTED)


def print_summary(console, summary: dict) -> None:
    from rich.markup import escape

    from cli.tables import print_table
    from s2v.quality.fields import qc_flag_text

    interrupted = summary.get("interrupted", 0)
    lines = []
    for record in sorted(summary["records"], key=lambda record: record.get("row") or 0):  # manifest order
        detail = (record["url"] or record["error"]) if record["status"] in ("succeeded", "skipped") else record["error"]
        lines.append((str(record["row"]), record["clip_id"], record["status"],
                      f"{record['total_time']:.1f}" if record.get("total_time") else "", escape(detail or ""),
                      escape(qc_flag_text(record))))
    print_table(console, f"{summary['succeeded']} succeeded, {summary['failed']} failed, "
                         + (f"{interrupted} interrupted, " if interrupted else "") + f"{summary['skipped']} skipped",
                ("row", "clip", "status", "seconds", "url or error", "flagged"), lines)
    console.print(f"output: {summary['output']} (ledger: results.jsonl, results.csv; estimated GPU cost "
                  f"${summary['estimated_cost_usd']:.4f})")
    if summary.get("tiny_checkpoint"):
        console.print("[yellow]made with the tiny random-weight test checkpoint: the videos are noise[/yellow]")
