"""Drives `tether mcp` (stdio) or the agent's `POST /mcp` (streamable HTTP) with the official
MCP Python SDK, as an AI program would. Run by crates/tether/tests/mcp.rs.

    mcp_client.py stdio SESSION_ID TCP_TARGET TETHER_BIN CONFIG
    mcp_client.py http  SESSION_ID TCP_TARGET URL TOKEN

SESSION_ID is a chat session a human created with policy `any` and is attached to; the
scripted model answers each message with a `shell` call (needs approval), then "all done".
TCP_TARGET is a HOST:PORT nothing listens on (a CRITICAL inspection).

Protocol with the Rust test, on stdout: `REFUSED <call_id>` once this client's own approval
was refused (the human then approves), `OK` at the end. Any failure raises (exit status 1).
"""

import sys

import anyio
import httpx2
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

TOOLS = {
    "tether_sessions",
    "tether_session_create",
    "tether_send",
    "tether_events",
    "tether_answer",
    "tether_cancel",
    "tether_inspect",
}


def say(line):
    print(line, flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def expect_bad_input(session, tool, arguments, field):
    """A call with a missing or mistyped field is a JSON-RPC error naming the field."""
    try:
        result = await session.call_tool(tool, arguments)
    except MCPError as e:
        check(e.code == -32602, f"{tool} {arguments}: code {e.code}")
        check(f"`{field}`" in e.error.message, f"{tool} {arguments}: {e.error.message}")
        return
    raise AssertionError(f"{tool} {arguments}: expected an invalid-params error, got {result}")


async def refusal(session, tool, arguments):
    """A tool error carrying the protocol's reason: the reason."""
    result = await session.call_tool(tool, arguments)
    check(result.is_error, f"{tool} {arguments}: expected a refusal, got {result}")
    reason = result.structured_content["reason"]
    check(reason in result.content[0].text, f"{tool}: {result.content}")
    return reason


async def wait_for_prompt(session, sid, turn_id):
    """Polls tether_events until the turn's permission prompt shows up."""
    after = 0
    with anyio.fail_after(60):
        while True:
            r = await session.call_tool("tether_events", {"session_id": sid, "after_seq": after})
            check(not r.is_error, f"tether_events: {r}")
            doc = r.structured_content
            for e in doc["events"]:
                if e["event"] == "permission_requested" and e["turn_id"] == turn_id:
                    pending = [p for p in doc["pending_permissions"] if p["call_id"] == e["call_id"]]
                    return e, pending
            after = doc["next_after_seq"]
            await anyio.sleep(0.05)


async def exercise(session, sid, tcp_target):
    await session.initialize()

    # Every tool, each with an object schema and a one-line description.
    listed = (await session.list_tools()).tools
    check({t.name for t in listed} == TOOLS, f"tools: {[t.name for t in listed]}")
    for t in listed:
        check(t.description and "\n" not in t.description, f"{t.name}: {t.description!r}")
        check(t.input_schema["type"] == "object", f"{t.name}: {t.input_schema}")

    # Sessions: create one; policy `any` is a human's choice, not ours.
    r = await session.call_tool("tether_session_create", {"mode": "chat", "title": "from mcp"})
    check(not r.is_error, f"create: {r}")
    mine = r.structured_content["session_id"]
    reason = await refusal(session, "tether_session_create", {"mode": "chat", "policy": "any"})
    check(reason == "forbidden", reason)
    r = await session.call_tool("tether_sessions", {})
    ids = {s["session_id"] for s in r.structured_content["sessions"]}
    check({mine, sid} <= ids, f"sessions: {ids}")

    # Bad input names the field; nothing else happens.
    await expect_bad_input(session, "tether_send", {"session_id": sid}, "text")
    await expect_bad_input(session, "tether_send", {"session_id": 7, "text": "hi"}, "session_id")
    await expect_bad_input(session, "tether_send", {"session_id": sid, "text": "hi", "wait": "yes"}, "wait")
    await expect_bad_input(session, "tether_events", {}, "session_id")
    await expect_bad_input(session, "tether_events", {"session_id": sid, "limit": 0}, "limit")
    await expect_bad_input(session, "tether_answer", {"session_id": sid, "call_id": "c", "decision": "maybe"}, "decision")
    reason = await refusal(session, "tether_send", {"session_id": "no-such-session", "text": "hi"})
    check(reason == "unknown_session", reason)

    # A turn of ours whose tool needs approval: tether_send waits (with progress) while we try
    # to approve it ourselves, are refused, and a human approves.
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    sent = {}

    async def send():
        sent["result"] = await session.call_tool(
            "tether_send",
            {"session_id": sid, "text": "check the disk"},
            progress_callback=on_progress,
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        # The turn's id, from its first progress notification.
        with anyio.fail_after(60):
            while not any(m and m.startswith("[turn ") for m in progress):
                await anyio.sleep(0.02)
        turn_id = next(m for m in progress if m.startswith("[turn ")).split()[1]
        prompt, pending = await wait_for_prompt(session, sid, turn_id)
        check(prompt["originator"]["class"] == "agent", f"{prompt}")
        check(len(pending) == 1 and pending[0]["you_may_answer"] is False, f"{pending}")
        check(pending[0]["waiting_for"].startswith("a human"), f"{pending}")
        answer = {"session_id": sid, "call_id": prompt["call_id"], "decision": "allow"}
        reason = await refusal(session, "tether_answer", answer)
        check(reason == "agent_cannot_self_approve", reason)
        say(f"REFUSED {prompt['call_id']}")

    r = sent["result"]
    check(not r.is_error, f"tether_send: {r}")
    doc = r.structured_content
    check(doc["stop"] == "completed", f"{doc}")
    check(doc["turn_id"] == turn_id, f"{doc}")
    check(doc["text"] == "all done", f"{doc}")
    calls = doc["tool_calls"]
    check(len(calls) == 1 and calls[0]["tool"] == "shell", f"{calls}")
    check(calls[0]["result"]["ok"] is True and "tool-ran" in calls[0]["result"]["output"], f"{calls}")
    check(calls[0]["permission"]["state"] == "allow", f"{calls}")
    check(calls[0]["permission"]["by"].startswith("alice"), f"{calls}")
    check(any(m and m.startswith("[waiting for a human") for m in progress), f"{progress}")
    # The answer streamed as it came, chunk by chunk, between the status lines.
    streamed = "".join(m for m in progress if m and not m.startswith("["))
    check("all done" in streamed, f"{progress}")

    # Without waiting: the turn id at once; then cancel the turn (its prompt is pending).
    r = await session.call_tool("tether_send", {"session_id": sid, "text": "again", "wait": False})
    check(not r.is_error and r.structured_content["status"] == "started", f"{r}")
    turn_id = r.structured_content["turn_id"]
    await wait_for_prompt(session, sid, turn_id)
    r = await session.call_tool("tether_cancel", {"session_id": sid, "turn_id": turn_id})
    check(not r.is_error, f"cancel: {r}")
    with anyio.fail_after(60):
        ended = None
        while ended is None:
            r = await session.call_tool("tether_events", {"session_id": sid, "after_seq": 0, "limit": 1000})
            for e in r.structured_content["events"]:
                if e["event"] == "turn_ended" and e["turn_id"] == turn_id:
                    ended = e
            await anyio.sleep(0.05)
    check(ended["stop"] == "cancelled", f"{ended}")

    # An inspection of this host: the Markdown report and its status.
    r = await session.call_tool("tether_inspect", {"plugin": "tcp", "target": tcp_target})
    check(not r.is_error, f"inspect: {r}")
    check(r.content[0].text.startswith("#"), f"{r.content}")
    check(r.structured_content["status"] == "CRITICAL", f"{r.structured_content}")
    say("OK")


async def main():
    mode, sid, tcp_target = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[4], args=["mcp", "--config", sys.argv[5]], env={"TETHER_LOG": "warn"}
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session, sid, tcp_target)
    elif mode == "http":
        url, token = sys.argv[4], sys.argv[5]
        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx2.Timeout(30, read=300)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await exercise(session, sid, tcp_target)
    else:
        raise SystemExit(f"unknown mode {mode}")


anyio.run(main)
