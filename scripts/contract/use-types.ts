// A dashboard's use of the TypeScript types that openapi-typescript makes from
// openapi.json, through openapi-fetch: scripts/check-contract.sh type-checks it
// (tsc --strict --noEmit) against freshly generated types, so a spec change
// that breaks a client's code shows here. Not run (the flow against a live
// server is a later step of issue 11).
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Schemas = components["schemas"];

export async function flow(baseUrl: string, username: string, password: string): Promise<string[]> {
  const api = createClient<paths>({ baseUrl });
  const seen: string[] = [];

  const login = await api.POST("/api/v1/auth/login", { body: { username, password } });
  if (login.error) {
    const problem: Schemas["Problem"] = login.error;
    throw new Error(`${problem.code}: ${problem.detail}`);
  }
  const token: string = login.data.access_token;
  const headers = { Authorization: `Bearer ${token}` };

  const list = await api.GET("/api/v1/instances", {
    headers,
    params: { query: { project: "default", expand: true, limit: 10 } },
  });
  for (const entry of list.data?.items ?? []) {
    seen.push(typeof entry === "string" ? entry : (entry.name ?? ""));
  }

  const create = await api.POST("/api/v1/instances", {
    headers,
    params: { query: { project: "default" } },
    body: { name: "c1", source: { type: "image", alias: "busybox" }, start: true },
  });
  if (create.response.status === 202 && create.data && "operation_id" in create.data) {
    const waited = await api.GET("/api/v1/operations/{id}/wait", {
      headers,
      params: { path: { id: create.data.operation_id }, query: { timeout: 30 } },
    });
    seen.push(String(waited.data?.status_code ?? 0));
  }

  const state = await api.GET("/api/v1/instances/{name}/state", {
    headers,
    params: { path: { name: "c1" } },
  });
  if (state.data) {
    const memory: number = state.data.memory?.usage ?? 0;
    const disks: string[] = Object.keys(state.data.disk ?? {});
    seen.push(String(memory), ...disks);
  }

  const instance = await api.GET("/api/v1/instances/{name}", { headers, params: { path: { name: "c1" } } });
  if (instance.data) {
    const image: string = instance.data.config?.["image.description"] ?? "";
    seen.push(image);
    const devices = instance.data.devices ?? {};
    for (const [name, options] of Object.entries(devices)) {
      seen.push(`${name}:${options["type"] ?? ""}`);
    }
  }

  await api.POST("/api/v1/instances/{name}/snapshots", {
    headers,
    params: { path: { name: "c1" } },
    body: { name: "s1" },
  });
  const pool = await api.GET("/api/v1/storage/pools/{pool}", { headers, params: { path: { pool: "default" } } });
  const source: string | undefined = pool.data?.config?.["source"];
  seen.push(source ?? "");

  const ops = await api.GET("/api/v1/operations", { headers });
  for (const op of ops.data?.items ?? []) {
    seen.push(op.id ?? "");
  }
  await api.DELETE("/api/v1/instances/{name}", { headers, params: { path: { name: "c1" } } });
  return seen;
}
