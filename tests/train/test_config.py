"""TrainConfig presets, overrides and the clear failures of bad configuration."""

from __future__ import annotations

import pytest

from calrec_core.model.export import check_same_architecture
from calrec_core.train.config import TrainConfig


def test_presets_keep_the_paper_settings():
    paper = TrainConfig.preset("paper")
    assert (paper.batch_size, paper.learning_rate, paper.stage1_steps) == (512, 1e-4, 150_000)
    assert (paper.max_input_len, paper.max_target_len) == (1024, 80)
    assert (paper.alpha, paper.beta, paper.contrastive_temperature) == (0.125, -0.025, 0.5)
    assert paper.max_drop_last == 4 and paper.selection_metric == "ndcg@10_pes"
    assert TrainConfig.preset("tiny").model == "tiny"
    assert TrainConfig.preset("demo").model == "gemma3_270m"
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset("huge")


def test_overrides_convert_types_and_ablations():
    config = TrainConfig.tiny().with_overrides(["alpha=0", "beta=0", "remat=true", "seed=7"])
    assert (config.alpha, config.beta, config.remat, config.seed) == (0.0, 0.0, True, 7)
    assert not config.contrastive and TrainConfig.tiny().contrastive
    assert TrainConfig.from_dict(config.to_dict()) == config
    # The sectioned spelling every command shares means the same.
    assert TrainConfig.tiny().with_overrides(["train.alpha=0", "train.beta=0", "remat=1",
                                              "train.seed=7"]) == config
    with pytest.raises(ValueError, match="unknown field 'nonsense'"):
        TrainConfig.tiny().with_overrides(["nonsense=1"])
    with pytest.raises(ValueError, match="section must be one of"):
        TrainConfig.tiny().with_overrides(["eval.n_gen=1"])
    with pytest.raises(ValueError, match="expected true or false"):
        TrainConfig.tiny().with_overrides(["remat=maybe"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 10, "microbatches": 4}, "not divisible by microbatches"),
        ({"model": "gpt"}, "model must be"),
        ({"nig_reduction": "max"}, "nig_reduction"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
    ],
)
def test_bad_configuration_fails_at_construction(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.tiny().replace(**changes)


def test_checkpoint_of_another_architecture_is_refused():
    import dataclasses

    from calrec_core.model import Gemma3Config

    tiny = dataclasses.asdict(Gemma3Config.tiny())
    check_same_architecture(tiny, dict(tiny), "here")
    with pytest.raises(ValueError, match=r"another architecture .*embed_dim"):
        check_same_architecture(tiny, {**tiny, "embed_dim": 128}, "here")
