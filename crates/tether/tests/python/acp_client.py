"""An editor, as the Agent Client Protocol Python SDK (`agent-client-protocol` on PyPI) builds
one, driving `tether acp` over stdio. Run by crates/tether/tests/acp.rs:

    python acp_client.py SCENARIO TETHER_BIN [ARG...]     # spawns `TETHER_BIN acp ARG...`

It talks to the Rust test on its own stdio, one JSON object per line: it prints
`{"step": NAME, ...}` when it reaches a point the test acts on, reads a line `NAME` when it must
wait for the test, and prints `{"result": {...}}` at the end. Any failed check raises, so the
process exits non-zero with the reason on stderr.
"""

import asyncio
import json
import os
import sys

import acp
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    Implementation,
    RequestPermissionResponse,
)

PATIENCE = 60.0


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class Commands:
    """Lines the test writes to this process's stdin."""

    def __init__(self):
        self.reader = None

    async def open(self):
        loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(self.reader)
        await loop.connect_read_pipe(lambda: protocol, sys.stdin)

    async def wait(self, word):
        line = await asyncio.wait_for(self.reader.readline(), PATIENCE)
        got = line.decode().strip()
        assert got == word, f"expected `{word}` from the test, got `{got}`"


class Editor:
    """The client side: records every update; permission requests follow `self.permission`."""

    def __init__(self):
        self.updates = []  # (session_id, update as JSON)
        self.asked = []  # permission requests as JSON
        self.changed = asyncio.Condition()
        # async (request JSON) -> option id, or None for "cancelled"
        self.permission = None

    async def session_update(self, session_id, update, **kwargs):
        async with self.changed:
            self.updates.append((session_id, dump(update)))
            if os.environ.get("ACP_DEBUG"):
                print("UPDATE", json.dumps(dump(update)), file=sys.stderr, flush=True)
            self.changed.notify_all()

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        request = {
            "sessionId": session_id,
            "toolCall": dump(tool_call),
            "options": [dump(o) for o in options],
        }
        async with self.changed:
            self.asked.append(request)
            self.changed.notify_all()
        assert self.permission is not None, f"unexpected permission request: {request}"
        choice = await self.permission(request)
        if choice is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(option_id=choice, outcome="selected")
        )

    async def until(self, what, check):
        """Waits until `check()` holds (it is re-checked after every update)."""

        async def wait():
            async with self.changed:
                await self.changed.wait_for(check)

        try:
            await asyncio.wait_for(wait(), PATIENCE)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; updates so far: {self.kinds()}"
            ) from None

    def of(self, kind, session_id=None, start=0):
        return [
            u
            for sid, u in self.updates[start:]
            if u.get("sessionUpdate") == kind and (session_id is None or sid == session_id)
        ]

    def text(self, kind, session_id=None, start=0):
        return "".join(u["content"]["text"] for u in self.of(kind, session_id, start))

    def kinds(self):
        return [u.get("sessionUpdate") for _, u in self.updates]


async def raw_request(conn, method, params):
    """A request exactly as given (the SDK's typed methods would refuse malformed ones)."""
    return await conn._conn.send_request(method, params)


async def expect_error(coro, code, *words):
    try:
        await asyncio.wait_for(coro, PATIENCE)
    except acp.RequestError as e:
        text = f"{e} {json.dumps(e.data)}"
        assert e.code == code, f"expected error {code}, got {e.code}: {text}"
        for w in words:
            assert w in text, f"`{w}` not in the error: {text}"
        return {"code": e.code, "message": str(e), "data": e.data}
    raise AssertionError(f"expected error {code}, the request succeeded")


async def start(tether, args, editor):
    return acp.spawn_agent_process(
        editor, tether, "acp", *args, env={"TETHER_LOG": "warn"}
    )


async def initialize(conn):
    init = await asyncio.wait_for(
        conn.initialize(
            protocol_version=1,
            client_capabilities=ClientCapabilities(),
            client_info=Implementation(name="acp-test", title="ACP test", version="1"),
        ),
        PATIENCE,
    )
    return dump(init)


async def prompt(conn, session_id, text):
    response = await asyncio.wait_for(
        conn.prompt(session_id=session_id, prompt=[acp.text_block(text)]), PATIENCE
    )
    return response.stop_reason


async def editor_flow(tether, args, commands):
    editor = Editor()
    async with await start(tether, args, editor) as (conn, proc):
        init = await initialize(conn)
        assert init["protocolVersion"] == 1, init
        caps = init["agentCapabilities"]
        assert caps["loadSession"] is True, caps
        assert caps.get("promptCapabilities", {}).get("image") in (None, False), caps
        assert "list" in caps.get("sessionCapabilities", {}), caps

        new = await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)
        sid = new.session_id
        emit({"step": "created", "session_id": sid})

        # Streamed chunks.
        mark = len(editor.updates)
        stop = await prompt(conn, sid, "hello")
        assert stop == "end_turn", stop
        chunks = editor.of("agent_message_chunk", sid, mark)
        answer = editor.text("agent_message_chunk", sid, mark)
        assert answer == "Hello from the scripted model, streamed in chunks.", answer
        assert len(chunks) > 3, f"not streamed: {chunks}"
        assert editor.of("user_message_chunk", sid, mark) == [], "own prompt echoed back"

        # A tool that needs approval: answered `allow_once`.
        async def allow_once(request):
            return "allow_once"

        editor.permission = allow_once
        mark = len(editor.updates)
        stop = await prompt(conn, sid, "run the shell")
        assert stop == "end_turn", stop
        assert len(editor.asked) == 1, editor.asked
        asked = editor.asked[0]
        options = [(o["optionId"], o["kind"]) for o in asked["options"]]
        assert options == [
            ("allow_once", "allow_once"),
            ("allow_always", "allow_always"),
            ("reject_once", "reject_once"),
            ("reject_always", "reject_always"),
        ], options
        call_id = asked["toolCall"]["toolCallId"]
        assert asked["toolCall"]["rawInput"] == {"command": "echo from-the-shell"}, asked
        starts = editor.of("tool_call", sid, mark)
        assert [s["toolCallId"] for s in starts] == [call_id], starts
        assert starts[0]["kind"] == "execute", starts
        assert starts[0]["rawInput"] == {"command": "echo from-the-shell"}, starts
        progress = [u for u in editor.of("tool_call_update", sid, mark) if u["toolCallId"] == call_id]
        final = progress[-1]
        assert final["status"] == "completed", progress
        shown = "".join(c["content"]["text"] for c in final["content"])
        assert "from-the-shell" in shown, final
        assert final["rawOutput"]["ok"] is True, final
        answer = editor.text("agent_message_chunk", sid, mark)
        assert answer == "Checking. The shell said hi.", answer

        # Bad input: a JSON-RPC error naming the field; the session goes on.
        bad = []
        bad.append(
            await expect_error(
                raw_request(conn, "session/prompt", {"sessionId": 5, "prompt": [{"type": "text", "text": "x"}]}),
                -32602,
                "sessionId",
            )
        )
        bad.append(
            await expect_error(
                raw_request(conn, "session/prompt", {"sessionId": sid}), -32602, "prompt"
            )
        )
        bad.append(
            await expect_error(
                raw_request(conn, "session/load", {"sessionId": sid, "cwd": 7, "mcpServers": []}),
                -32602,
                "cwd",
            )
        )
        bad.append(
            await expect_error(
                raw_request(conn, "session/prompt", {"sessionId": "no-such-session", "prompt": [{"type": "text", "text": "x"}]}),
                -32002,
                "no-such-session",
            )
        )
        stop = await prompt(conn, sid, "still there?")
        assert stop == "end_turn", stop

        listed = await asyncio.wait_for(conn.list_sessions(cwd=os.getcwd()), PATIENCE)
        ids = [s.session_id for s in listed.sessions]
        assert sid in ids, ids

        # Cancel: the turn streams slowly; session/cancel ends it `cancelled`.
        mark = len(editor.updates)
        task = asyncio.create_task(prompt(conn, sid, "tell me a long story"))
        await editor.until("the first chunk of the story", lambda: editor.of("agent_message_chunk", sid, mark))
        await conn.cancel(session_id=sid)
        stop = await task
        assert stop == "cancelled", stop
        told = editor.text("agent_message_chunk", sid, mark)
        assert not told.endswith("the end."), f"the story was not cut short: {told}"
        emit({"result": {"session_id": sid, "bad_input": bad, "story": told}})


async def load_flow(tether, args, commands, session_id):
    editor = Editor()
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        await expect_error(
            conn.load_session(cwd=os.getcwd(), session_id="no-such-session"), -32002, "no-such-session"
        )
        response = await asyncio.wait_for(
            conn.load_session(cwd=os.getcwd(), session_id=session_id), PATIENCE
        )
        # Everything replayed arrived before the reply.
        history = list(editor.updates)
        users = [u["content"]["text"] for sid, u in history if u.get("sessionUpdate") == "user_message_chunk"]
        assert users == ["alice: first question"], users
        answer = editor.text("agent_message_chunk", session_id)
        assert answer == "The first answer.", answer
        assert all(sid == session_id for sid, _ in history), history
        origin = [u for _, u in history if u.get("sessionUpdate") == "user_message_chunk"][0]
        assert origin["_meta"]["tether"]["originator"]["name"] == "alice", origin
        emit({"step": "loaded"})

        # Live: alice's next message and its answer.
        mark = len(editor.updates)
        await editor.until(
            "alice's second turn",
            lambda: editor.text("agent_message_chunk", session_id, mark) == "The second answer.",
        )
        users = [u["content"]["text"] for u in editor.of("user_message_chunk", session_id, mark)]
        assert users == ["alice: second question"], users
        emit({"step": "live"})

        # A prompt while alice's (slow) turn runs: queued, answered when its own turn ends.
        mark = len(editor.updates)
        await editor.until(
            "alice's third turn",
            lambda: editor.of("agent_message_chunk", session_id, mark),
        )
        stop = await prompt(conn, session_id, "my turn")
        assert stop == "end_turn", stop
        texts = [u["content"]["text"] for u in editor.of("agent_message_chunk", session_id, mark)]
        joined = "".join(texts)
        slow = "A slow answer from alice's turn that takes a while."
        assert joined == slow + "The editor's answer.", joined
        emit({"result": {"loaded": True}})


async def join_flow(tether, args, commands, session_id):
    """`tether acp --session ID`: session/new joins ID, its history follows the reply."""
    editor = Editor()
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        new = await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)
        assert new.session_id == session_id, (new.session_id, session_id)
        await editor.until(
            "the history",
            lambda: "The first answer." in editor.text("agent_message_chunk", session_id),
        )
        users = [u["content"]["text"] for u in editor.of("user_message_chunk", session_id)]
        assert users[0] == "alice: first question", users
        emit({"result": {"joined": new.session_id}})


async def elsewhere_flow(tether, args, commands):
    """A permission request that another client resolves first: the editor is told, and its
    late answer is no error."""
    editor = Editor()
    resolved = asyncio.Event()

    async def answer_late(request):
        emit({"step": "asked", "session_id": request["sessionId"], "call_id": request["toolCall"]["toolCallId"]})
        call_id = request["toolCall"]["toolCallId"]
        await editor.until(
            "the update saying alice approved",
            lambda: any(
                u["toolCallId"] == call_id
                and "approved by alice" in "".join(c["content"]["text"] for c in u.get("content", []))
                for u in editor.of("tool_call_update")
            ),
        )
        resolved.set()
        return "allow_once"

    editor.permission = answer_late
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        new = await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)
        sid = new.session_id
        stop = await prompt(conn, sid, "run the shell")
        assert stop == "end_turn", stop
        # The editor saw the update saying alice approved (its handler may run after the reply).
        await asyncio.wait_for(resolved.wait(), PATIENCE)
        finals = [u for u in editor.of("tool_call_update", sid) if u.get("status") == "completed"]
        assert finals, editor.of("tool_call_update", sid)
        # Still a working session after the dropped answer.
        stop = await prompt(conn, sid, "and now?")
        assert stop == "end_turn", stop
    # Leaving the block closes `tether acp`'s stdin and waits (2 s) before it terminates it:
    # exit 0 means it left by itself, on end of input.
    stderr = (await proc.stderr.read()).decode()
    emit({"result": {"exit": proc.returncode, "stderr": stderr}})


async def gone_flow(tether, args, commands):
    """The agent goes away mid-turn: the prompt fails with the reason and `tether acp` exits
    non-zero, saying why on stderr."""
    editor = Editor()
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        new = await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)
        sid = new.session_id
        task = asyncio.create_task(prompt(conn, sid, "tell me a long story"))
        await editor.until("the first chunk", lambda: editor.of("agent_message_chunk", sid))
        emit({"step": "streaming"})
        error = await expect_error(task, -32603, "agent")
        await asyncio.wait_for(proc.wait(), PATIENCE)
        stderr = (await proc.stderr.read()).decode()
        emit({"result": {"exit": proc.returncode, "stderr": stderr, "error": error}})


async def main():
    scenario, tether, *args = sys.argv[1:]
    commands = Commands()
    await commands.open()
    if scenario == "editor":
        await editor_flow(tether, args, commands)
    elif scenario == "load":
        session_id = args.pop(0)
        await load_flow(tether, args, commands, session_id)
    elif scenario == "join":
        session_id = args.pop(0)
        await join_flow(tether, args, commands, session_id)
    elif scenario == "elsewhere":
        await elsewhere_flow(tether, args, commands)
    elif scenario == "gone":
        await gone_flow(tether, args, commands)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    asyncio.run(main())
