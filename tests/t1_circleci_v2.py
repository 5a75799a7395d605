"""Tier 1: CircleCI API v2 units: job records and the unique-name rule. The workflow view and
v2-only projects are tested in-process (tier 2)."""

from __future__ import annotations

import pytest

from ciartfs.errors import BadListing
from ciartfs.providers.circleci.v2 import parse_job, unique_names


def test_parse_job_shapes():
    """The spec requires no job_number: its absence is a job that has not started; a number
    of another type is a malformed listing."""
    job = parse_job({"name": "deploy", "status": "blocked", "type": "build", "id": "j1", "started_at": None}, "w")
    assert job.number is None and not job.done and "has not started (status blocked)" in job.why_empty
    approval = parse_job({"job_number": 7, "name": "hold", "status": "success", "type": "approval"}, "w")
    assert approval.number == 7 and approval.done and approval.why_empty == "an approval job: it has no artifacts"
    ran = parse_job({"job_number": 8, "name": "t", "status": "retried", "type": "build"}, "w")
    assert ran.done and ran.why_empty is None
    for bad in ("8", True, 0, -1, 1.5):
        with pytest.raises(BadListing):
            parse_job({"job_number": bad, "name": "t", "status": "success"}, "w")


def test_unique_names_rule():
    items = [("ci", 2), ("ci", 1), ("a/b", 3), ("", 4), ("..", 5), ("x" * 300, 6), ("ci~2", 7)]
    names = {item[1]: name for name, item in unique_names(items, lambda i: i[0], lambda i: i[1])}
    assert names[1] == "ci" and names[2] == "ci~2" and names[7] == "ci~2~2"
    assert names[3] == "a%2Fb" and names[4] == "_" and names[5] == "_.."
    assert len(names[6].encode()) <= 255 and names[6].startswith("x" * 200)
    assert unique_names(list(reversed(items)), lambda i: i[0], lambda i: i[1]) == \
        unique_names(items, lambda i: i[0], lambda i: i[1])  # order-independent
