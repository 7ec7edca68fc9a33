"""Three kinds of client on one session (issue 11's end-to-end acceptance), run by
crates/tether/tests/three_clients.rs:

    python three_clients.py TETHER_BIN AGENT_CONFIG MCP_URL AGENT_TOKEN

- an editor: the ACP Python SDK spawns `tether acp --config AGENT_CONFIG` (the Unix socket, so
  a human) and creates the session;
- an AI program: the MCP Python SDK over streamable HTTP (`MCP_URL`, an agent-class token)
  sends a message whose tool needs permission, tries to approve it itself and is refused;
- the editor is asked, and approves it (`allow_once`).

The Rust test attaches a WebSocket observer between the two steps below and compares what the
three saw. Protocol on stdout, one JSON object per line: `{"step": "created", "session_id"}`,
then (after the test writes a line to stdin) `{"result": {...}}` with the MCP client's events
and the editor's updates. A failed check raises: exit non-zero, the reason on stderr.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from acp_client import PATIENCE, Editor, emit, initialize, prompt, start  # noqa: F401


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def wait_for_prompt(mcp, sid):
    """Polls tether_events until a permission prompt shows up."""
    after = 0
    while True:
        r = await mcp.call_tool("tether_events", {"session_id": sid, "after_seq": after})
        check(not r.is_error, f"tether_events: {r}")
        doc = r.structured_content
        for e in doc["events"]:
            if e["event"] == "permission_requested":
                return e
        after = doc["next_after_seq"]
        await asyncio.sleep(0.05)


async def all_events(mcp, sid):
    r = await mcp.call_tool("tether_events", {"session_id": sid, "after_seq": 0, "limit": 1000})
    check(not r.is_error, f"tether_events: {r}")
    return r.structured_content["events"]


async def main():
    tether, config, url, token = sys.argv[1:5]
    editor = Editor()
    refused = asyncio.Event()

    async def approve_after_the_ai_was_refused(request):
        await asyncio.wait_for(refused.wait(), PATIENCE)
        return "allow_once"

    editor.permission = approve_after_the_ai_was_refused

    async with await start(tether, ["--config", config], editor) as (conn, _proc):
        await initialize(conn)
        new = await asyncio.wait_for(conn.new_session(cwd="/"), PATIENCE)
        sid = new.session_id
        emit({"step": "created", "session_id": sid})
        # The test attaches its observer, then says go.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx2.Timeout(30, read=300)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as mcp:
                    await mcp.initialize()
                    send = asyncio.create_task(
                        mcp.call_tool("tether_send", {"session_id": sid, "text": "check the disk"})
                    )
                    asked = await asyncio.wait_for(wait_for_prompt(mcp, sid), PATIENCE)
                    # The AI program may not approve its own turn's tool call.
                    r = await mcp.call_tool(
                        "tether_answer",
                        {"session_id": sid, "call_id": asked["call_id"], "decision": "allow"},
                    )
                    check(r.is_error, f"self-approval went through: {r}")
                    reason = r.structured_content["reason"]
                    check(reason == "agent_cannot_self_approve", reason)
                    refused.set()
                    # The human in the editor approves; the turn runs to its end.
                    sent = await asyncio.wait_for(send, PATIENCE)
                    check(not sent.is_error, f"tether_send: {sent}")
                    done = sent.structured_content
                    check(done["stop"] == "completed", f"{done}")
                    calls = done["tool_calls"]
                    check(len(calls) == 1 and calls[0]["permission"]["state"] == "allow", f"{calls}")
                    events = await all_events(mcp, sid)

        await editor.until(
            "the turn's last chunk in the editor",
            lambda: "all done" in editor.text("agent_message_chunk", sid),
        )
        check(len(editor.asked) == 1, f"asked: {editor.asked}")
        emit(
            {
                "result": {
                    "session_id": sid,
                    "call_id": asked["call_id"],
                    "approved_by": calls[0]["permission"]["by"],
                    "mcp_events": events,
                    "acp_updates": [u for s, u in editor.updates if s == sid],
                    "acp_asked": editor.asked,
                }
            }
        )


if __name__ == "__main__":
    asyncio.run(main())
