"""Checks that an error answer has exactly the OpenAI shape and leaks no internals."""

from __future__ import annotations

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}
# Text that only a leaked traceback or exception repr would put in a response body.
LEAK_MARKERS = ("Traceback", 'File "/', "site-packages", "Error(", "<class ")


def assert_openai_error(r: httpx.Response, status: int | tuple[int, ...] | None = None) -> dict:
    """Check an error answer: 4xx/5xx as expected, exactly the OpenAI shape, no leaked internals."""
    if status is not None:
        allowed = status if isinstance(status, tuple) else (status,)
        assert r.status_code in allowed, f"status {r.status_code} not in {allowed}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers.get("content-type")
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], (str, int)), err
    assert not any(m in r.text for m in LEAK_MARKERS), r.text[:500]
    return err
