"""calrec_core.storage on local folders and on gs:// (a local Cloud Storage server): the same
calls give the same files, and Orbax checkpoints reach the bucket through TensorStore."""

from __future__ import annotations

import pytest

from calrec_core import storage

pytestmark = pytest.mark.xdist_group("cloud_storage")


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("cloud_storage").folder("storage")


def _server_objects(cloud_storage, prefix: str) -> list[str]:
    """Object names under ``prefix`` as the server lists them (google-cloud-storage, not the
    layer under test)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="calrec-test", credentials=AnonymousCredentials())
    bucket, _, name = prefix.removeprefix("gs://").partition("/")
    return sorted(blob.name for blob in client.list_blobs(bucket, prefix=name))


def test_write_read_copy_and_remove(root, tmp_path):
    storage.write_atomic(storage.join(root, "a", "one.txt"), "first")
    storage.write_atomic(storage.join(root, "a", "b", "two.bin"), b"\x00\x01")
    storage.write_atomic(storage.join(root, "a", "one.txt"), "replaced")

    files = [storage.path(f) for f in storage.files_under(storage.join(root, "a"))]
    names = [str(f)[len(str(storage.path(root))) + 1:] for f in files]
    assert names == ["a/b/two.bin", "a/one.txt"]
    assert storage.path(storage.join(root, "a", "one.txt")).read_text() == "replaced"
    assert storage.is_remote(root) == root.startswith("gs://")

    # Out to a local folder and back under another name: same bytes, same layout.
    storage.copy_tree(storage.join(root, "a"), tmp_path / "copy")
    assert (tmp_path / "copy" / "b" / "two.bin").read_bytes() == b"\x00\x01"
    storage.copy_tree(tmp_path / "copy", storage.join(root, "again"))
    assert storage.path(storage.join(root, "again", "one.txt")).read_text() == "replaced"

    with storage.local_file(storage.join(root, "a", "b", "two.bin")) as local:
        assert local.read_bytes() == b"\x00\x01"
    with storage.local_dir(storage.join(root, "a")) as local:
        assert (local / "one.txt").read_text() == "replaced"
    with storage.staged_output(storage.join(root, "staged")) as local:
        (local / "made.txt").write_text("by a local-only writer")
    assert storage.path(storage.join(root, "staged", "made.txt")).read_text() == (
        "by a local-only writer")

    storage.remove_tree(storage.join(root, "a"))
    assert not storage.path(storage.join(root, "a", "one.txt")).exists()
    storage.remove_tree(storage.join(root, "never-made"))  # absent: nothing to do


def test_staged_output_keeps_nothing_after_an_error(cloud_storage):
    folder = cloud_storage.folder("failed")
    with pytest.raises(RuntimeError), storage.staged_output(folder) as local:
        (local / "half.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert _server_objects(cloud_storage, folder) == []


def test_empty_location_is_refused():
    with pytest.raises(ValueError, match="empty path"):
        storage.path("")


def test_orbax_checkpoints_go_to_the_bucket(cloud_storage):
    import jax.numpy as jnp
    import numpy as np

    from calrec_core.train.checkpoint import CheckpointStore, abstract_like

    folder = cloud_storage.folder("checkpoints")
    params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
    opt_state = {"count": jnp.array(3)}
    store = CheckpointStore(folder, max_to_keep=2)
    for step in (1, 2, 3):
        store.save(step, jax_scaled(params, step), opt_state, {"step": step, "seed": 0})
    store.close()

    # The server holds the checkpoints (only the newest two are kept).
    names = _server_objects(cloud_storage, folder)
    steps = {name.split("/")[1] for name in names if name.count("/") > 1}
    assert steps == {"2", "3"}, names

    reopened = CheckpointStore(folder, max_to_keep=2)
    assert reopened.latest_step() == 3
    restored, restored_opt, record = reopened.restore(3, abstract_like(params),
                                                      abstract_like(opt_state))
    reopened.close()
    np.testing.assert_array_equal(restored["w"], 3 * params["w"])
    assert int(restored_opt["count"]) == 3 and record == {"step": 3, "seed": 0}


def jax_scaled(params, factor):
    import jax

    return jax.tree.map(lambda leaf: leaf * factor, params)
