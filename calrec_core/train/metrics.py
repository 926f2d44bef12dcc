"""Training metrics as JSON lines (one record per logged step or evaluation), TensorBoard event
files of the same numbers, and their plot."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

from calrec_core import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl`` and their numbers as TensorBoard scalars
    under ``<run_dir>/tensorboard`` (tag ``<kind>/<name>``, nested names joined by '/').

    A resumed run first drops the records written after its checkpoint, and any repeat of a
    (kind, step) record (two runs once shared a folder), so the file reads as one
    uninterrupted run; its event file starts with a purge at the resume step, which makes
    TensorBoard drop the earlier attempt's later points the same way. On gs:// (no appends)
    the kept records are rewritten as one object at every write.
    """

    def __init__(self, run_dir, resume_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.path = storage.path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.events = None
        self.lines: list[str] = []  # every record's line (what a gs:// rewrite writes)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = {}  # (kind, step) -> the first record of it
        for record in read_metrics(self.path):
            if resume_step and record["step"] <= resume_step:
                kept.setdefault((record.get("kind"), record["step"]), record)
        self.lines = [json.dumps(record) + "\n" for record in kept.values()]
        storage.write_atomic(self.path, "".join(self.lines))
        if tensorboard:
            from tensorboardX import SummaryWriter

            if storage.is_remote(run_dir):
                _write_remote_events_through_storage()
            self.events = SummaryWriter(storage.join(run_dir, TENSORBOARD_DIR),
                                        purge_step=resume_step + 1 if resume_step else None)

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"kind": kind, "step": int(step), **values}) + "\n"
        self.lines.append(line)
        if storage.is_remote(self.path):
            storage.write_atomic(self.path, "".join(self.lines))
        else:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(line)
        if self.events is not None:
            for tag, value in _scalars(kind, values):
                self.events.add_scalar(tag, value, int(step))
            self.events.flush()  # a preempted task keeps every point logged so far

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


class _RemoteEventFile:
    """A TensorBoard event file on gs:// written through calrec_core.storage: the events are
    buffered and the object rewritten whole when there is something new (objects cannot be
    appended to). tensorboardX's own gs:// writer uploads again from ``__del__``, which can
    come after the process's network is gone."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.buffer = io.BytesIO()
        self.flushed = 0

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self.flushed:
            storage.write_atomic(self.path, self.buffer.getvalue())
            self.flushed = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _RemoteEventFiles:
    """tensorboardX's writer factory interface for gs:// event files."""

    def open(self, path: str) -> _RemoteEventFile:
        return _RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        del path  # Cloud Storage has no folders to create


def _write_remote_events_through_storage() -> None:
    from tensorboardX.record_writer import register_writer_factory

    register_writer_factory("gs", _RemoteEventFiles())


def _scalars(prefix: str, values: dict[str, Any]):
    """(tag, value) of every finite number in ``values``; booleans and text are left out."""
    for name, value in values.items():
        tag = f"{prefix}/{name}"
        if isinstance(value, dict):
            yield from _scalars(tag, value)
        elif (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value)):
            yield tag, float(value)


def read_metrics(path) -> list[dict[str, Any]]:
    """All records of a metrics file (a run folder or the file itself); [] when absent."""
    path = storage.path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_losses(run_dirs: Sequence, output, labels: Sequence[str] | None = None) -> storage.Path:
    """L_NIG and L_TT training curves of one or more runs side by side (cf. the paper's Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = list(labels) if labels else [storage.path(run).name for run in run_dirs]
    figure, (nig_axis, tt_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(run_dirs, labels, strict=True):
        records = [r for r in read_metrics(run) if r["kind"] == "train"]
        if not records:
            raise ValueError(f"{run} has no training metrics ({METRICS_FILE})")
        steps = [r["step"] for r in records]
        # Points marked on short runs: a one-step run (a short Stage II) is otherwise no line.
        style = {"label": label, "marker": "o" if len(steps) <= 30 else None, "markersize": 4}
        nig_axis.plot(steps, [r["nig"] for r in records], **style)
        if any(r.get("contrastive", True) for r in records):
            tt_axis.plot(steps, [r["tt"] for r in records], **style)
    nig_axis.set(title="Next-item generation loss $L_{NIG}$", xlabel="step",
                 ylabel="cross-entropy")
    tt_axis.set(title="Target-item contrastive loss $L_{TT}$", xlabel="step", ylabel="InfoNCE")
    for axis in (nig_axis, tt_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        axis.legend()
    figure.tight_layout()
    output = storage.path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as stream:
        figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)
    return output
