"""Fixed step shapes of packed training with the real Gemma tokenizer on real data: at most
three compiled programs per stage run, little padding, every user of a step in its grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calrec_core.train.batching import ExampleEncoder, padding_fraction
from calrec_core.train.config import TrainConfig
from calrec_core.train.examples import MixtureSampler, load_training_sequences
from calrec_core.train.shapes import StepShape, fallback_shape, pack_users
from calrec_core.train.stream import BatchStream

pytestmark = [pytest.mark.shared_data, pytest.mark.gemma]
STEPS = 200


@pytest.fixture(scope="module")
def office_experiment(shared_data, sample_dir, tmp_path_factory):
    """(experiment config, ingested data) of configs/experiment-office2014.yaml."""
    from calrec_core.data import run_ingest
    from calrec_core.experiment.config import load_experiment
    from calrec_core.experiment.run import link_raw_files

    config = load_experiment(path="configs/experiment-office2014.yaml")
    root = tmp_path_factory.mktemp("office2014")
    link_raw_files([sample_dir, shared_data / "office2014"],
                   [c.name for c in config.roles.categories], root / "raw")
    run_ingest(root / "raw", None, root / "data", config=config.roles)
    return config, root / "data"


@pytest.fixture(scope="module")
def tokenizer():
    from calrec_core.model.loading import load_pretrained_tokenizer

    return load_pretrained_tokenizer()


def _stage_streams(config: TrainConfig, data_dir, tokenizer):
    from calrec_core.data import load_mixture

    weights = {k: float(v) for k, v in load_mixture(data_dir)["weights"].items()}
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    for stage, mixture in (("stage1", weights), ("stage2", {"Office_Products": 1.0})):
        sampler = MixtureSampler(load_training_sequences(data_dir, sorted(mixture)), mixture,
                                 seed=config.seed, stream=stage,
                                 max_drop_last=config.max_drop_last)
        yield stage, BatchStream(sampler, encoder, config)


def _paper_on_one_accelerator() -> TrainConfig:
    """The paper preset with the microbatches it resolves to on one 80 GB accelerator."""
    from calrec_core.model.sharding import make_mesh
    from calrec_core.train.step import resolve_microbatches

    paper = TrainConfig.paper()
    return resolve_microbatches(paper, make_mesh(data=-1), paper.max_sequence_len / 2, 80e9)


@pytest.mark.parametrize("preset", ["office2014", "paper"])
def test_packed_steps_take_at_most_three_shapes_and_pad_little(office_experiment, tokenizer,
                                                              preset):
    experiment, data_dir = office_experiment
    config = experiment.train if preset == "office2014" else _paper_on_one_accelerator()
    assert config.packing
    config = dataclasses.replace(config, microbatches=config.microbatches or 1)
    for stage, stream in _stage_streams(config, data_dir, tokenizer):
        shapes, padding = set(), []
        users = config.batch_size // config.microbatches
        for step in range(STEPS):
            batch = stream.local_batch(step)
            shapes.add(tuple(array.shape for array in batch))
            padding.append(padding_fraction(batch))
            # Every user of the step is in both towers' grids (an in-batch negative of all
            # the others), once, whole.
            assert batch.user_mask.shape == (config.microbatches, users) and batch.user_mask.all()
            for ids in (batch.segment_ids, batch.item_segment_ids):
                for a in range(config.microbatches):
                    assert set(np.unique(ids[a])) - {0} == set(range(1, users + 1))
            real = sum(len(e.prompt_ids) + len(e.target_ids)
                       for e in stream.global_examples(step)[1])
            assert int(batch.input_mask.sum()) == real
        assert len(shapes) <= 3, (preset, stage, shapes)
        assert len(stream.ladder.levels) <= 3
        assert np.mean(padding) <= 0.15, (preset, stage, np.mean(padding))


def test_the_fallback_shape_holds_any_batch():
    """Whatever users are drawn, the last level holds them: here every user at the longest
    prompt and target, which no packed level sized from ordinary users would hold."""
    from calrec_core.template import EncodedExample

    longest = [EncodedExample([2] * 40, [5] * 15 + [1], 1) for _ in range(8)]
    shape = fallback_shape(8, max_sequence_len=56, max_target_len=16, row_multiple=4)
    user_rows, item_rows = pack_users(longest, shape)
    assert len(user_rows) <= shape.rows and len(item_rows) <= shape.item_rows
    assert isinstance(shape, StepShape) and not shape.packed
