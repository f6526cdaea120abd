"""Schemathesis hooks for scripts/check-contract.sh (SCHEMATHESIS_HOOKS=hooks).

* Authentication: logs in as the run's admin (LXGATE_CONTRACT_BASE,
  _USERNAME, _PASSWORD) and logs in again when an answer is 401: a generated
  logout, or a role grant to that account, revokes its tokens on purpose.
* The run's own account is not changed by the generated requests (a PATCH
  that disables it or sets its password would end the run's access); it is
  still read. Every other account is fair game.
"""

import json
import os
import urllib.request

import schemathesis

BASE = os.environ["LXGATE_CONTRACT_BASE"]
USERNAME = os.environ["LXGATE_CONTRACT_USERNAME"]
PASSWORD = os.environ["LXGATE_CONTRACT_PASSWORD"]


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
