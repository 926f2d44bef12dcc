"""JAX's persistent compilation cache: runs of one shape (retries, resumed runs, every Stage II
run of an experiment) compile each program once, on the CPU and on accelerators alike. JAX
reads and writes a gs:// cache itself (through etils.epath)."""

from __future__ import annotations

from calrec_core import storage


def enable_compilation_cache(directory, min_compile_seconds: float = 1.0) -> None:
    """Caches every program that took over ``min_compile_seconds`` to compile in ``directory``
    (local or gs://; "" or None leaves the cache off)."""
    if not directory:
        return
    import jax

    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
