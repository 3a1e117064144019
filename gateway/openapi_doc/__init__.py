"""The gateway's own OpenAPI document (`openapi/openapi.json`): generated from the app,
enriched with what raw handlers cannot declare (`document`), and checked for drift by the
tests (`cli`).

    python -m gateway.openapi_doc --write   # regenerate openapi/openapi.json
    python -m gateway.openapi_doc --check   # exit 1 (with a summary) if the file is stale
"""
