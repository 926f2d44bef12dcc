"""The CALRec Kubeflow pipeline: DAG factory, local runs, compilation and Vertex AI deployment.

Names load on first use (PEP 562), so ``calrec --help`` does not import KFP or the cloud SDK.
"""

from calrec_core.lazy import lazy_exports

_EXPORTS = {
    "PIPELINE_NAME": "pipelines.dag",
    "BuildOptions": "pipelines.dag",
    "build_pipeline": "pipelines.dag",
    "compiled_categories": "pipelines.dag",
    "compiled_experiment": "pipelines.dag",
    "compile_pipeline": "pipelines.compile",
    "load_pipeline_spec": "pipelines.compile",
    "LocalRunResult": "pipelines.local",
    "data_version": "components.raw_manifest",
    "manifest": "components.raw_manifest",
    "run_local": "pipelines.local",
    "VertexTarget": "pipelines.vertex",
    "check_labels": "pipelines.vertex",
    "create_schedule": "pipelines.vertex",
    "delete_schedule": "pipelines.vertex",
    "list_schedules": "pipelines.vertex",
    "make_job": "pipelines.vertex",
    "pause_schedule": "pipelines.vertex",
    "resume_schedule": "pipelines.vertex",
    "submit_pipeline": "pipelines.vertex",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
