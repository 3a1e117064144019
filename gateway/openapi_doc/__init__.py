"""The gateway's own OpenAPI document (`openapi/openapi.json`): generated from the app,
enriched with what raw handlers cannot declare, and checked for drift by the tests.

    python -m gateway.openapi_doc --write   # regenerate openapi/openapi.json
    python -m gateway.openapi_doc --check   # exit 1 (with a summary) if the file is stale
"""

from gateway.openapi_doc.document import build_document, check, enrich, main, render
from gateway.openapi_doc.headers import DOCUMENT_PATH

__all__ = ["DOCUMENT_PATH", "build_document", "check", "enrich", "main", "render"]
