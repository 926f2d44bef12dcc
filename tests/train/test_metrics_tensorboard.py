"""MetricsLog's TensorBoard event files, read back record by record (TFRecord framing)."""

from __future__ import annotations

import struct

from tensorboardX.proto import event_pb2

from calrec_core.train.metrics import TENSORBOARD_DIR, MetricsLog, read_metrics


def _events(run_dir) -> list[event_pb2.Event]:
    events = []
    for path in sorted((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]  # after the length and its CRC
            events.append(event_pb2.Event.FromString(record))
            offset += 12 + length + 4
    return events


def _scalars(events) -> list[tuple[str, int, float]]:
    return [(value.tag, event.step, value.simple_value) for event in events
            if event.HasField("summary") for value in event.summary.value]


def test_metrics_become_scalars_and_a_resume_purges_the_later_points(tmp_path):
    log = MetricsLog(tmp_path)
    log.write("train", 1, loss=2.5, nig=2.0, contrastive=True, seconds=float("nan"))
    log.write("train", 2, loss=2.25, nig=1.75, contrastive=True, seconds=0.5)
    log.write("eval", 2, metric="ndcg@10_pes", value=0.125, categories={"Gift_Cards": 0.125})
    log.write("train", 3, loss=2.0, nig=1.5, contrastive=True, seconds=0.5)
    log.close()
    scalars = _scalars(_events(tmp_path))
    assert ("train/loss", 1, 2.5) in scalars and ("train/nig", 3, 1.5) in scalars
    assert ("eval/value", 2, 0.125) in scalars
    assert ("eval/categories/Gift_Cards", 2, 0.125) in scalars
    # Text, booleans and non-finite numbers stay in metrics.jsonl only.
    tags = {tag for tag, _, _ in scalars}
    assert not tags & {"train/contrastive", "eval/metric"}
    assert ("train/seconds", 1) not in {(tag, step) for tag, step, _ in scalars}

    # Resumed from the step-2 checkpoint: the new file starts with a purge at step 3, so
    # TensorBoard drops the first attempt's step-3 points, as metrics.jsonl does.
    resumed = MetricsLog(tmp_path, resume_step=2)
    resumed.write("train", 3, loss=1.875, nig=1.25, contrastive=True, seconds=0.5)
    resumed.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 2, 3]
    events = _events(tmp_path)
    purges = [event for event in events if event.HasField("session_log")
              and event.session_log.status == event_pb2.SessionLog.START]
    assert [event.step for event in purges] == [3]
    assert ("train/loss", 3, 1.875) in _scalars(events)


def test_a_disabled_log_writes_no_events(tmp_path):
    log = MetricsLog(tmp_path, enabled=False)
    log.write("train", 1, loss=1.0)
    log.close()
    assert not (tmp_path / TENSORBOARD_DIR).exists()
