"""A dashboard's flow through the Python client that openapi-python-client
generated from openapi.json (scripts/check-contract.sh runs it against the
embedded backend): every response is parsed into the generated model its
status documents, so a spec that says a field is an object while the server
sends null, or types a map wrongly, fails here.

Environment: LXGATE_CONTRACT_BASE, LXGATE_CONTRACT_USERNAME,
LXGATE_CONTRACT_PASSWORD, and the image to upload:
LXGATE_TEST_EMBEDDED_IMAGE_META / LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS.
Needs the generated package `lxgate_client` on PYTHONPATH.
"""

import os
import sys
import uuid

import httpx
from lxgate_client import AuthenticatedClient, Client
from lxgate_client.api.auth import get_me, login
from lxgate_client.api.images import list_images
from lxgate_client.api.instances import (
    create_instance,
    delete_instance,
    exec_instance,
    get_instance,
    get_instance_state,
    instance_action,
    list_instances,
)
from lxgate_client.api.operations import get_operation, list_operations, wait_operation
from lxgate_client.api.projects import get_project, list_projects
from lxgate_client.api.snapshots import create_snapshot, get_snapshot, list_snapshots
from lxgate_client.api.storage import get_storage_pool, list_storage_pools
from lxgate_client.api.system import get_system_info
from lxgate_client.models import (
    ExecRequest,
    Instance,
    InstanceAction,
    InstanceCreate,
    InstanceState,
    LoginRequest,
    Me,
    Operation,
    OperationRef,
    PageImageEntry,
    PageInstanceEntry,
    PageOperation,
    PageSnapshotEntry,
    Problem,
    Project,
    Snapshot,
    SnapshotCreate,
    StoragePool,
    SystemInfo,
    TokenResponse,
)
from lxgate_client.types import Response

STEPS: list[str] = []


def expect(step: str, resp: Response, model: type) -> object:
    """The parsed body, which must be the model (not a Problem, not None)."""
    parsed = resp.parsed
    if not isinstance(parsed, model):
        detail = parsed.to_dict() if isinstance(parsed, Problem) else resp.content[:300]
        raise SystemExit(f"{step}: HTTP {resp.status_code}, expected {model.__name__}: {detail!r}")
    STEPS.append(step)
    return parsed


def finished(api: AuthenticatedClient, step: str, resp: Response) -> Operation:
    """A 202's operation, waited for; or the 200's finished operation."""
    parsed = resp.parsed
    if isinstance(parsed, OperationRef):
        STEPS.append(f"{step} (202)")
        op = expect(
            f"{step}: wait",
            wait_operation.sync_detailed(uuid.UUID(parsed.operation_id), client=api, timeout=120),
            Operation,
        )
    else:
        op = expect(step, resp, Operation)
    assert isinstance(op, Operation)
    if op.status_code != 200:
        raise SystemExit(f"{step}: operation ended {op.status_code} {op.status}: {op.err}")
    return op


def main() -> int:
    base = os.environ["LXGATE_CONTRACT_BASE"]
    user = os.environ["LXGATE_CONTRACT_USERNAME"]
    password = os.environ["LXGATE_CONTRACT_PASSWORD"]
    timeout = httpx.Timeout(180.0)
    anon = Client(base_url=base, timeout=timeout)
    token = expect(
        "login",
        login.sync_detailed(client=anon, body=LoginRequest(username=user, password=password)),
        TokenResponse,
    )
    assert isinstance(token, TokenResponse)
    api = AuthenticatedClient(base_url=base, token=token.access_token, timeout=timeout)

    expect("me", get_me.sync_detailed(client=api), Me)
    expect("system info", get_system_info.sync_detailed(client=api), SystemInfo)
    expect("projects", list_projects.sync_detailed(client=api), object)
    expect("project default", get_project.sync_detailed("default", client=api), Project)
    expect("pools", list_storage_pools.sync_detailed(client=api), object)
    expect("pool default", get_storage_pool.sync_detailed("default", client=api), StoragePool)

    # The image: uploaded as a dashboard would (multipart), then listed.
    alias = f"flow-{uuid.uuid4().hex[:8]}"
    with open(os.environ["LXGATE_TEST_EMBEDDED_IMAGE_META"], "rb") as meta, open(
        os.environ["LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS"], "rb"
    ) as rootfs:
        raw = api.get_httpx_client().post(
            "/api/v1/images/import",
            params={"wait": 120},
            files=[("metadata", ("meta.tar.xz", meta)), ("rootfs", ("rootfs.tar.xz", rootfs))],
            data={"alias": alias},
        )
    if raw.status_code not in (200, 202):
        raise SystemExit(f"image import: HTTP {raw.status_code}: {raw.text[:300]}")
    STEPS.append("image import")
    expect("images", list_images.sync_detailed(client=api), PageImageEntry)

    name = f"flow-{uuid.uuid4().hex[:8]}"
    body = InstanceCreate.from_dict(
        {"name": name, "type": "container", "source": {"type": "image", "alias": alias}, "start": True}
    )
    finished(api, "create instance", create_instance.sync_detailed(client=api, body=body, wait=120))
    try:
        page = expect("list instances", list_instances.sync_detailed(client=api), PageInstanceEntry)
        assert isinstance(page, PageInstanceEntry)
        inst = expect("get instance", get_instance.sync_detailed(name, client=api), Instance)
        assert isinstance(inst, Instance)
        for device in inst.expanded_devices.additional_properties.values() if inst.expanded_devices else []:
            assert isinstance(device.type_, str)
        state = expect("instance state", get_instance_state.sync_detailed(name, client=api), InstanceState)
        assert isinstance(state, InstanceState)

        op = finished(
            api,
            "exec",
            exec_instance.sync_detailed(
                name,
                client=api,
                body=ExecRequest.from_dict({"command": ["sh", "-c", "echo flow"]}),
                wait=60,
            ),
        )
        expect("operation", get_operation.sync_detailed(uuid.UUID(op.id), client=api), Operation)

        # Stopped first: a running container is frozen for its snapshot, and
        # under `ip netns exec` (a sysfs of its own) the freezer is out of reach.
        finished(api, "stop", instance_action.sync_detailed(name, InstanceAction.STOP, client=api, wait=60))
        finished(
            api,
            "snapshot",
            create_snapshot.sync_detailed(name, client=api, body=SnapshotCreate.from_dict({"name": "s1"}), wait=60),
        )
        expect("snapshots", list_snapshots.sync_detailed(name, client=api), PageSnapshotEntry)
        expect("snapshot", get_snapshot.sync_detailed(name, "s1", client=api), Snapshot)
        expect("operations", list_operations.sync_detailed(client=api), PageOperation)
    except BaseException:
        # Cleaned up without hiding what failed.
        api.get_httpx_client().post(f"/api/v1/instances/{name}/stop", params={"wait": 60}, json={"force": True})
        api.get_httpx_client().delete(f"/api/v1/instances/{name}", params={"wait": 60})
        raise
    finished(api, "delete instance", delete_instance.sync_detailed(name, client=api, wait=60))
    print(f"{len(STEPS)} steps, every response parsed: {', '.join(STEPS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
