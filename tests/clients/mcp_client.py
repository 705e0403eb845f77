"""An agent host that speaks MCP: drives `airlock mcp` over stdio with the official
Python SDK (PyPI `mcp`), the way MCP clients start servers from their configuration.

Usage: mcp_client.py CONFIG.json
  CONFIG: {"command": AIRLOCK, "args": [...], "env": {...},
           "work": HOST_DIR, "docs": HOST_DIR, "secret": HOST_DIR, "ask_timeout_secs": N}
Exits 0 when every step held (printing "mcp client: ok"); prints the failing step
otherwise.
"""
import base64
import json
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

cfg = json.load(open(sys.argv[1]))
WORK, DOCS, SECRET = cfg["work"], cfg["docs"], cfg["secret"]
BIG = cfg["big_bytes"]  # /work/big.txt: that many bytes of ASCII, over the output cap
CAP = 1 << 20

TOOLS = [
    "evaluate_plan",
    "create_session",
    "run_command",
    "read_file",
    "write_file",
    "list_pending_asks",
    "destroy_session",
]

PLAN = f"""
command = ["/bin/true"]
tools = ["cat", "tee", "echo", "wc", "sleep"]

[[mounts]]
host = "{WORK}"
guest = "/work"
mode = "rw"

[[mounts]]
host = "{DOCS}"
guest = "/docs"
mode = "ro"

[resources]
memory_mib = 128
"""

DENIED_PLAN = f"""
command = ["/bin/true"]
[[mounts]]
host = "{SECRET}"
guest = "/secret"
mode = "ro"
"""


def check(cond, what):
    if not cond:
        print(f"mcp client: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def text(r):
    return r.content[0].text


def step(what):
    print(f"mcp client: {what}", file=sys.stderr, flush=True)


async def call(session, tool, args):
    return await session.call_tool(tool, args, read_timeout_seconds=300)


async def main():
    params = StdioServerParameters(command=cfg["command"], args=cfg["args"], env=cfg["env"])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            hello = await session.initialize()
            check(
                hello.protocol_version in ("2025-06-18", "2025-11-25"),
                f"negotiated {hello.protocol_version}",
            )
            check(hello.server_info.name == "airlock", f"server info {hello.server_info}")
            check(hello.capabilities.tools is not None, "tools capability")

            listed = await session.list_tools()
            names = [t.name for t in listed.tools]
            check(names == TOOLS, f"tools/list: {names}")
            by_name = {t.name: t for t in listed.tools}
            check(
                by_name["run_command"].input_schema["required"] == ["session_id", "argv"],
                f"run_command schema: {by_name['run_command'].input_schema}",
            )
            for t in listed.tools:
                check("cannot" in (t.description or ""), f"{t.name}: says what it cannot do")

            step("a denied plan")
            r = await call(session, "evaluate_plan", {"plan": DENIED_PLAN})
            check(not r.is_error, f"evaluate: {text(r)}")
            check(r.structured_content["outcome"] == "denied", f"evaluate: {r.structured_content}")
            mount = [i for i in r.structured_content["items"] if i["kind"] == "mount"][0]
            check(mount["rule_id"] == "secret" and mount["verdict"] == "deny", f"evaluate: {mount}")

            r = await call(session, "create_session", {"plan": DENIED_PLAN})
            check(r.is_error, f"denied plan is a tool error: {r}")
            check("plan denied, nothing ran" in text(r), text(r))
            check("rule `secret`" in text(r), text(r))
            check(r.structured_content["outcome"] == "denied", f"{r.structured_content}")

            step("bad arguments")
            for tool, args, want in [
                ("create_session", {}, "missing required argument `plan`"),
                ("create_session", {"plan": PLAN, "isolation": "none"}, "unknown argument `isolation`"),
                ("evaluate_plan", {"plan": "command = ["}, "argument `plan`:1:"),
                ("run_command", {"session_id": "0" * 32, "argv": "ls -l"}, "argument `argv` must be an array"),
                ("read_file", {"session_id": "x", "path": "/work/a"}, "argument `session_id`"),
            ]:
                r = await call(session, tool, args)
                check(r.is_error and want in text(r), f"{tool} {args}: {text(r)!r} lacks {want!r}")

            step("a session")
            r = await call(session, "evaluate_plan", {"plan": PLAN})
            check(r.structured_content["outcome"] == "allowed", f"plan: {r.structured_content}")
            r = await call(session, "create_session", {"plan": PLAN})
            check(not r.is_error, f"create: {text(r)}")
            created = r.structured_content
            sid = created["session_id"]
            granted = created["granted"]
            check(granted["tools"] == ["cat", "tee", "echo", "wc", "sleep"], f"granted: {granted}")
            check(
                granted["mounts"] == [
                    {"guest_path": "/work", "mode": "rw"},
                    {"guest_path": "/docs", "mode": "ro"},
                ],
                f"granted: {granted}",
            )
            check(granted["command"] == ["/bin/true"], f"granted: {granted}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["echo", "hello", "from", "mcp"]})
            check(not r.is_error, f"echo: {text(r)}")
            out = r.structured_content
            check(out["stdout"] == "hello from mcp\n" and out["exit_code"] == 0, f"echo: {out}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["cat"], "stdin": "piped in"})
            check(r.structured_content["stdout"] == "piped in", f"stdin: {r.structured_content}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["cat", "/work/missing"]})
            check(r.is_error and r.structured_content["exit_code"] == 1, f"failing command: {text(r)}")
            check("missing" in r.structured_content["stderr"], f"failing command: {text(r)}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["ls", "/"]})
            check(r.is_error and "may not run in this session" in text(r), f"ungranted: {text(r)}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["sleep", "60"], "timeout_secs": 1})
            out = r.structured_content
            check(r.is_error and out["timed_out"] and out["status"] == "signaled", f"timeout: {out}")
            check(out["signal"] == 9 and out["exit_code"] == 137, f"timeout: {out}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["cat", "/work/big.txt"]})
            out = r.structured_content
            check(not r.is_error and out["stdout_truncated"], f"cap: {text(r)[:300]}")
            check(out["stdout_bytes"] == BIG and len(out["stdout"]) == CAP, f"cap: {out['stdout_bytes']}")

            step("files")
            r = await call(session, "read_file", {"session_id": sid, "path": "/work/hello.txt"})
            check(not r.is_error, f"read: {text(r)}")
            check(r.structured_content["content"] == "hello from the host\n", f"read: {r.structured_content}")

            r = await call(session, "read_file", {"session_id": sid, "path": "/work/big.txt"})
            got = r.structured_content
            check(got["truncated"] and got["bytes"] == BIG and len(got["content"]) == CAP, f"big: {got['bytes']}")

            r = await call(session, "read_file", {"session_id": sid, "path": "/etc/hostname"})
            check(r.is_error and "not inside any of this session's mounts" in text(r), f"read outside: {text(r)}")

            r = await call(
                session,
                "write_file",
                {"session_id": sid, "path": "/work/new.txt", "content": "written over MCP\n"},
            )
            check(not r.is_error, f"write: {text(r)}")
            check(r.structured_content["bytes_written"] == 17, f"write: {r.structured_content}")
            r = await call(session, "read_file", {"session_id": sid, "path": "/work/new.txt"})
            check(r.structured_content["content"] == "written over MCP\n", f"read back: {r.structured_content}")

            binary = bytes(range(256))
            r = await call(
                session,
                "write_file",
                {
                    "session_id": sid,
                    "path": "/work/blob.bin",
                    "content": base64.b64encode(binary).decode(),
                    "encoding": "base64",
                },
            )
            check(not r.is_error, f"write binary: {text(r)}")
            r = await call(session, "read_file", {"session_id": sid, "path": "/work/blob.bin"})
            got = r.structured_content
            check(
                got["encoding"] == "base64" and base64.b64decode(got["content"]) == binary,
                f"read binary: {got}",
            )

            r = await call(session, "write_file", {"session_id": sid, "path": "/docs/x.txt", "content": "x"})
            check(r.is_error and "read-only mount /docs" in text(r), f"write ro: {text(r)}")
            r = await call(session, "read_file", {"session_id": sid, "path": "/docs/readme.txt"})
            check(r.structured_content["content"] == "docs\n", f"read ro: {r.structured_content}")

            step("an ask nobody answers")
            results = {}

            async def count():
                results["wc"] = await call(session, "run_command", {"session_id": sid, "argv": ["wc", "-c", "/work/hello.txt"]})

            pending = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(count)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    r = await call(session, "list_pending_asks", {"session_id": sid})
                    if r.structured_content["pending"]:
                        pending = r.structured_content["pending"]
                        break
                    await anyio.sleep(0.2)
            check(pending is not None and len(pending) == 1, f"pending: {pending}")
            p = pending[0]
            check(p["rule_id"] == "wc-asks", f"pending: {p}")
            check(p["action"]["argv"] == ["wc", "-c", "/work/hello.txt"], f"pending: {p}")
            wc = results["wc"]
            check(wc.is_error and wc.structured_content["exit_code"] == 126, f"wc: {text(wc)}")
            check("wc-asks" in wc.structured_content["stderr"], f"wc: {wc.structured_content}")
            r = await call(session, "list_pending_asks", {"session_id": sid})
            asks = r.structured_content
            check(asks["pending"] == [], f"after: {asks}")
            check(
                [(a["approval_id"], a["approved"], a["approver"]) for a in asks["answered"]]
                == [(p["approval_id"], False, "timeout")],
                f"answered: {asks}",
            )

            step("destroy")
            r = await call(session, "destroy_session", {"session_id": sid, "merge": "apply"})
            check(not r.is_error, f"destroy: {text(r)}")
            merge = r.structured_content["merge"]
            check(merge["status"] == "merged", f"merge: {merge}")

            r = await call(session, "run_command", {"session_id": sid, "argv": ["echo", "x"]})
            check(r.is_error and f"no session {sid}" in text(r), f"after destroy: {text(r)}")

    step("the 2026-07-28 revision (server/discover, no initialize)")
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            found = await session.discover()
            check("2026-07-28" in found.supported_versions, f"discover: {found}")
            check("2025-06-18" in found.supported_versions, f"discover: {found}")
            listed = await session.list_tools()
            check([t.name for t in listed.tools] == TOOLS, f"tools/list: {listed}")
            r = await call(session, "evaluate_plan", {"plan": DENIED_PLAN})
            check(r.structured_content["outcome"] == "denied", f"evaluate: {r}")
            r = await call(session, "destroy_session", {"session_id": sid})
            check(r.is_error and "no session" in text(r), f"another server's session: {text(r)}")

    print("mcp client: ok")


anyio.run(main)
