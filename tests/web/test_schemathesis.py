"""Schemathesis against the published OpenAPI schema, in process (ASGI): no input makes the API answer 5xx.

Every operation is called with generated parameters and bodies (valid and invalid ones), as an
admin so that every route is reached, on the populated store of the web fixtures (hostile strings
included); no answer may be a server error and every documented answer must match its schema.
"""

from __future__ import annotations

from typing import Any, cast

import hypothesis
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from agent.web import create_app
from store import Store
from tests.web.conftest import Fixture, bearer

# The schema does not depend on the data: an app without a store publishes the same one. (It is
# loaded at import because schemathesis parametrizes at collection; its from_fixture helper reads
# a pytest attribute that pytest 9 no longer has.)
SCHEMA = schemathesis.openapi.from_dict(cast(dict[str, Any], create_app(cast(Store, None)).openapi()))


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_error(case: schemathesis.Case, app: FastAPI, data: Fixture) -> None:
    headers = bearer(data.tokens.admin)
    response = case.call(app=app, headers=headers)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
    case.validate_response(
        response, checks=[not_a_server_error, response_schema_conformance], headers=headers
    )
