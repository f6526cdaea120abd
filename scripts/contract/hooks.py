"""Schemathesis hooks for scripts/check-contract.sh (SCHEMATHESIS_HOOKS=hooks).

* Authentication: logs in as the run's admin (LXGATE_CONTRACT_BASE,
  _USERNAME, _PASSWORD) and logs in again when an answer is 401: a generated
  logout, or a role grant to that account, revokes its tokens on purpose.
* The run's own account is not changed by the generated requests (a PATCH
  that disables it or sets its password would end the run's access); it is
  still read. Every other account is fair game.
* Long polls are kept short: `?wait=N` (every operation-starting endpoint)
  and `GET /operations/{id}/wait?timeout=N` wait up to N seconds (300 at
  most) for an operation by design, so a slow operation (an instance that
  takes its time to stop) answers after exactly N seconds, which the
  max_response_time check (10 s) would report. A schema-valid N above
  LONG_POLL_CAP is sent as LONG_POLL_CAP (still valid, so a negative case
  stays negative: out-of-range and non-integer values are left alone).
"""

import json
import os
import urllib.request

import schemathesis

BASE = os.environ["LXGATE_CONTRACT_BASE"]
USERNAME = os.environ["LXGATE_CONTRACT_USERNAME"]
PASSWORD = os.environ["LXGATE_CONTRACT_PASSWORD"]
LONG_POLL_CAP = 5
WAIT_MAX = 18446744073709551615  # WaitSeconds' maximum in openapi.json


@schemathesis.auth(refresh_interval=600, retry_on=[401])
class AdminLogin:
    def get(self, case, ctx):
        body = json.dumps({"username": USERNAME, "password": PASSWORD}).encode()
        req = urllib.request.Request(
            f"{BASE}/api/v1/auth/login",
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["access_token"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def filter_case(ctx, case):
    path = case.path_parameters or {}
    return not (case.method.upper() != "GET" and path.get("username") == USERNAME)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    query = case.query
    if not query:
        return
    names = ["wait"] + (["timeout"] if case.path.endswith("/wait") else [])
    for name in names:
        value = query.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and LONG_POLL_CAP < value <= WAIT_MAX:
            query[name] = LONG_POLL_CAP
        elif isinstance(value, str) and value.isascii() and value.isdigit() and LONG_POLL_CAP < int(value) <= WAIT_MAX:
            query[name] = str(LONG_POLL_CAP)
