"""Uploads a compiled pipeline to a Kubeflow Pipelines repository in Artifact Registry.

Through KFP's ``RegistryClient``: the template becomes a versioned package (version
``sha256:...`` of its content) carrying the given tags, from which Vertex AI runs and
schedules can be created (``https://REGION-kfp.pkg.dev/PROJECT/REPO/calrec/TAG``).
"""

from __future__ import annotations

import json
import re
import tempfile

# https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY
_HOST = re.compile(r"^https://(?P<region>[a-z0-9-]+)-kfp\.pkg\.dev/(?P<project>[^/]+)/"
                   r"(?P<repository>[^/]+)$")
# Artifact Registry tags: letters, digits, '-', '_' and '.', not starting with sha256:.
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def upload_template(host: str, template_path, tags: list[str], *, credentials=None,
                    api_endpoint: str | None = None) -> tuple[str, str]:
    """Uploads ``template_path`` to ``host`` with ``tags``; returns (package, version).

    ``api_endpoint`` sends the requests to another base URL with the same paths (a test
    stand-in or a private endpoint); ``credentials`` default to application default.
    """
    import google.auth
    from kfp.registry import RegistryClient

    host = host.rstrip("/")
    match = _HOST.match(host)
    if not match:
        raise ValueError(f"{host!r} is no Kubeflow repository host: expected "
                         "https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY")
    bad = [tag for tag in tags if not _TAG.match(tag) or tag.startswith("sha256:")]
    if bad:
        raise ValueError(f"invalid tags {bad}: letters, digits, '.', '_' and '-'")
    if credentials is None:
        credentials = google.auth.default(scopes=list(_SCOPES))[0]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as context:
        config_file = None
        if api_endpoint:
            base = f"{api_endpoint.rstrip('/')}/{match['project']}/{match['repository']}"
            json.dump({"upload_url": base}, context)
            context.flush()
            config_file = context.name
        client = RegistryClient(host=host, auth=credentials, config_file=config_file)
        return client.upload_pipeline(file_name=str(template_path), tags=list(tags))
