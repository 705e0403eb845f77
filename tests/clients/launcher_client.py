"""An orchestrator in another language: drives `airlock serve` with grpcio, from stubs
generated from proto/ at test time (grpc_tools.protoc), over the server's Unix socket.

Usage: launcher_client.py STUB_DIR SOCKET WORK_HOST_DIR
Exits 0 when every step held; prints the failing step otherwise.
"""
import hashlib
import os
import sys

stubs, socket, work = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from airlock.v1 import common_pb2, launcher_pb2, launcher_pb2_grpc  # noqa: E402

PLAN = f"""
command = ["/bin/sh"]
[[mounts]]
host = "{work}"
guest = "/work"
mode = "rw"
[resources]
memory_mib = 128
"""


def check(cond, what):
    if not cond:
        print(f"python client: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


# grpc-core sends the socket path as :authority, which HTTP/2 servers reject;
# name a plain authority instead.
channel = grpc.insecure_channel(
    f"unix:{socket}", options=[("grpc.default_authority", "localhost")]
)
health = health_pb2_grpc.HealthStub(channel)
resp = health.Check(health_pb2.HealthCheckRequest(service="airlock.v1.Launcher"))
check(resp.status == health_pb2.HealthCheckResponse.SERVING, f"health: {resp}")

launcher = launcher_pb2_grpc.LauncherStub(channel)
source = launcher_pb2.PlanSource(toml=PLAN)
ev = launcher.EvaluatePlan(launcher_pb2.EvaluatePlanRequest(plan=source))
check(ev.outcome == common_pb2.OUTCOME_ALLOWED, f"evaluate: {ev}")

created = launcher.CreateSession(
    launcher_pb2.CreateSessionRequest(
        plan=source,
        isolation=common_pb2.ISOLATION_VM,
        labels={"client": "python"},
    )
)
sid = created.session_id
check(created.state == common_pb2.SESSION_STATE_READY, f"create: {created}")

out, code = b"", None
for event in launcher.Exec(
    launcher_pb2.ExecRequest(
        session_id=sid,
        argv=["/bin/sh", "-c", "echo from-python; echo written-by-python > /work/py.txt"],
    )
):
    kind = event.WhichOneof("event")
    if kind == "stdout":
        out += event.stdout
    elif kind == "exit":
        code = event.exit.code
check((out, code) == (b"from-python\n", 0), f"exec: {out!r} {code}")

try:
    list(launcher.Exec(launcher_pb2.ExecRequest(session_id=sid, argv=["ls"])))
    check(False, "an ungranted program ran")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"ungranted: {e.code()}")
    check("may not run" in e.details(), f"ungranted: {e.details()}")

info = launcher.GetSession(launcher_pb2.GetSessionRequest(session_id=sid))
check(dict(info.labels) == {"client": "python"}, f"labels: {info.labels}")

check(
    not os.path.exists(os.path.join(work, "py.txt")),
    "a copy-on-write share's write reached the host before any merge",
)
done = launcher.DestroySession(
    launcher_pb2.DestroySessionRequest(
        session_id=sid, collect=["/work/py.txt"], merge=launcher_pb2.MERGE_MODE_APPLY
    )
)
check(done.state == common_pb2.SESSION_STATE_DESTROYED, f"destroy: {done}")
check(done.merged.error == "" and "merged 1 change" in done.merged.summary, f"merge: {done.merged}")
check(len(done.collected) == 1, f"collected: {done.collected}")
body = b"written-by-python\n"
check(done.collected[0].sha256 == hashlib.sha256(body).hexdigest(), "collected digest")
with open(done.collected[0].host_path, "rb") as f:
    check(f.read() == body, "collected bytes")
with open(os.path.join(work, "py.txt"), "rb") as f:
    check(f.read() == body, "the share's write on the host, through the merge-back gate")

try:
    launcher.GetSession(launcher_pb2.GetSessionRequest(session_id=sid))
    check(False, "a destroyed session is still listed")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.NOT_FOUND, f"after destroy: {e.code()}")

print("python client: ok")
