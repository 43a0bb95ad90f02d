"""The API fuzzed from its own OpenAPI schema (issue 20, kind 4): schemathesis generates requests, valid and not,
for every operation of a server on loopback (echo engine, a temporary copy of a project), sent with the admin key
so the admin routes are reached too: bodies that fit the schema (positive) and bodies that break it (negative).
No response may be a 5xx. Bounded: 25 examples an operation and mode, no deadline.
(Driven through hypothesis directly: schemathesis's pytest plugin does not run under pytest 9.)"""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from loradex.testing import ThreadedServer

from .test_server import _project

EXAMPLES = 25


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(project_dir, tmp_path, monkeypatch, mode):
    from loradex.server.app import create_app

    proj, _ = _project(project_dir, tmp_path, monkeypatch)
    running = ThreadedServer(create_app(proj))
    try:
        schema = schemathesis.openapi.from_url(running.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        calls: list[tuple[str, int]] = []

        for op in operations:
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                response = case.call(headers={"Authorization": "Bearer admin-key"}, timeout=30)
                calls.append((f"{case.method} {case.path}", response.status_code))
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:400])

            try:
                fuzz()
            except Unsatisfiable:  # negative: nothing in the operation can break its schema (GET /health)
                assert mode is GenerationMode.NEGATIVE
        reached = {name for name, _ in calls}
        assert len(reached) == len(operations) >= 10 if mode is GenerationMode.POSITIVE else len(reached) >= 6, reached
        assert "POST /v1/chat/completions" in reached
        print(f"{mode.value}: {len(calls)} requests over {len(reached)} of {len(operations)} operations, "
              f"{sum(s >= 500 for _, s in calls)} server errors")
    finally:
        running.stop()
