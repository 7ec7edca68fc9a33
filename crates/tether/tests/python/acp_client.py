"""An editor, as the Agent Client Protocol Python SDK (`agent-client-protocol` on PyPI) builds
one, driving `tether acp` over stdio. Run by crates/tether/tests/acp.rs:

    python acp_client.py SCENARIO TETHER_BIN [ARG...]     # spawns `TETHER_BIN acp ARG...`

It tells the Rust test where it is on stdout, one JSON object per line: `{"step": NAME, ...}`
when it reaches a point the test acts on (the test's actions mostly show up as updates it
waits for; else the test writes a line naming what happened to its stdin), and
`{"result": {...}}` at the end. Any failed check raises, so the process exits non-zero with
the reason on stderr. ACP_DEBUG=1 prints every update on stderr.
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
    """Lines the test writes to this process's stdin, when it must say something happened.
    Each line is a word; `wait(word)` returns once that word has come."""

    def __init__(self):
        self.seen = {}
        self.reader = None

    def event(self, word):
        return self.seen.setdefault(word, asyncio.Event())

    async def read(self):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        await loop.connect_read_pipe(lambda: protocol, sys.stdin)
        while line := await reader.readline():
            self.event(line.decode().strip()).set()

    async def wait(self, word):
        if self.reader is None:
            self.reader = asyncio.create_task(self.read())
        try:
            await asyncio.wait_for(self.event(word).wait(), PATIENCE)
        except asyncio.TimeoutError:
            raise AssertionError(f"the test never said `{word}`") from None


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


async def editor_flow(tether, args):
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

        # Cancel: the story stops at a tool call that waits for approval, so the turn can only
        # end by the cancel; the editor cancels there and dismisses the request, as the spec
        # tells a client to.
        async def cancel_here(request):
            await conn.cancel(session_id=sid)
            return None

        editor.permission = cancel_here
        mark = len(editor.updates)
        stop = await prompt(conn, sid, "tell me a long story")
        assert stop == "cancelled", stop
        told = editor.text("agent_message_chunk", sid, mark)
        assert told.startswith("Once upon a time"), told
        results = [u for u in editor.of("tool_call_update", sid, mark) if "rawOutput" in u]
        assert results and results[-1]["status"] == "failed", results
        emit({"result": {"session_id": sid, "bad_input": bad, "story": told}})


async def load_flow(tether, args, session_id):
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

        # Alice's third turn waits for approval (the editor, a human, is asked too). The editor
        # prompts meanwhile: queued behind it, answered when its own turn ends. Alice approves;
        # the editor's own answer, later, is dropped.
        mark = len(editor.updates)
        queued = []

        async def prompt_meanwhile(request):
            call_id = request["toolCall"]["toolCallId"]
            queued.append(asyncio.create_task(prompt(conn, session_id, "my turn")))
            emit({"step": "asked", "call_id": call_id})
            await editor.until(
                "alice's approval",
                lambda: any(
                    u["toolCallId"] == call_id and "approved by alice" in json.dumps(u)
                    for u in editor.of("tool_call_update", session_id)
                ),
            )
            return "allow_once"

        editor.permission = prompt_meanwhile
        emit({"step": "live"})
        await editor.until("the permission request", lambda: queued)
        stop = await asyncio.wait_for(queued[0], PATIENCE)
        assert stop == "end_turn", stop
        joined = editor.text("agent_message_chunk", session_id, mark)
        assert joined == "Alice's tool ran.The editor's answer.", joined
        emit({"result": {"loaded": True}})


async def join_flow(tether, args, session_id):
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


async def elsewhere_flow(tether, args):
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


async def gone_flow(tether, args):
    """The agent goes away mid-turn (the turn waits for approval, which never comes): the
    prompt fails with the reason and `tether acp` exits non-zero, saying why on stderr."""
    editor = Editor()
    never = asyncio.Event()

    async def wait_for_ever(request):
        emit({"step": "waiting"})
        await never.wait()

    editor.permission = wait_for_ever
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        new = await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)
        sid = new.session_id
        error = await expect_error(prompt(conn, sid, "tell me a long story"), -32603, "agent")
        told = editor.text("agent_message_chunk", sid)
        assert told.startswith("Once upon a time"), told
        await asyncio.wait_for(proc.wait(), PATIENCE)
        stderr = (await proc.stderr.read()).decode()
        emit({"result": {"exit": proc.returncode, "stderr": stderr, "error": error}})


async def queue_cancel_flow(tether, args, session_id):
    """A prompt queued behind alice's turn (which waits for approval), then cancelled: it ends
    `cancelled` at once, alice's turn runs on, and the editor's input, whose turn would wait
    for approval for ever, is cancelled when it starts and shows nothing."""
    editor = Editor()
    commands = Commands()
    queued = []

    async def prompt_meanwhile(request):
        if queued:
            return None  # alice's marker turn (below); the cancelled one is never asked about
        call_id = request["toolCall"]["toolCallId"]
        queued.append(asyncio.create_task(prompt(conn, session_id, "queued behind alice")))
        emit({"step": "asked", "call_id": call_id})
        await commands.wait("queued")
        await conn.cancel(session_id=session_id)
        stop = await asyncio.wait_for(queued[0], PATIENCE)
        assert stop == "cancelled", stop
        emit({"step": "cancelled"})
        await editor.until(
            "alice's approval",
            lambda: "approved by alice" in json.dumps(editor.of("tool_call_update", session_id)),
        )
        return None

    editor.permission = prompt_meanwhile
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        await asyncio.wait_for(conn.load_session(cwd=os.getcwd(), session_id=session_id), PATIENCE)
        mark = len(editor.updates)
        emit({"step": "loaded"})
        # Alice sends a marker once the editor's turn was cancelled: nothing of that turn may
        # come before it.
        await commands.wait("done")
        marker = lambda: [
            i for i, (sid, u) in enumerate(editor.updates)
            if u.get("sessionUpdate") == "user_message_chunk" and u["content"]["text"] == "alice: marker"
        ]
        await editor.until("alice's marker", marker)
        before = [u for _, u in editor.updates[mark:marker()[0]]]
        shown = "".join(u["content"]["text"] for u in before if u.get("sessionUpdate") == "agent_message_chunk")
        assert shown == "Alice's tool ran.", shown
        calls = [u["toolCallId"] for u in before if u.get("sessionUpdate") == "tool_call"]
        assert len(calls) == 1, f"the cancelled turn's tool call was shown: {before}"
        emit({"result": {"shown": shown}})


async def reject_flow(tether, args):
    """`reject_always`: the call is denied, and the tool's next call is denied without asking."""
    editor = Editor()

    async def reject_always(request):
        return "reject_always"

    editor.permission = reject_always
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        sid = (await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)).session_id
        for n in range(2):
            mark = len(editor.updates)
            stop = await prompt(conn, sid, f"run the shell ({n})")
            assert stop == "end_turn", stop
            results = [u for u in editor.of("tool_call_update", sid, mark) if "rawOutput" in u]
            assert len(results) == 1 and results[0]["status"] == "failed", results
            assert results[0]["rawOutput"]["ok"] is False, results
        assert len(editor.asked) == 1, f"asked again after reject_always: {editor.asked}"
        emit({"result": {"session_id": sid}})


async def stops_flow(tether, args):
    """How turns end: `max_rounds` is `max_turn_requests`; a failed turn is a JSON-RPC error
    with its message."""
    editor = Editor()
    async with await start(tether, args, editor) as (conn, proc):
        await initialize(conn)
        sid = (await asyncio.wait_for(conn.new_session(cwd=os.getcwd()), PATIENCE)).session_id
        stop = await prompt(conn, sid, "describe this host, again and again")
        assert stop == "max_turn_requests", stop
        error = await expect_error(prompt(conn, sid, "and now?"), -32603, "the model is down")
        emit({"result": {"error": error}})


async def main():
    scenario, tether, *args = sys.argv[1:]
    if scenario == "editor":
        await editor_flow(tether, args)
    elif scenario == "load":
        session_id = args.pop(0)
        await load_flow(tether, args, session_id)
    elif scenario == "join":
        session_id = args.pop(0)
        await join_flow(tether, args, session_id)
    elif scenario == "elsewhere":
        await elsewhere_flow(tether, args)
    elif scenario == "queue_cancel":
        session_id = args.pop(0)
        await queue_cancel_flow(tether, args, session_id)
    elif scenario == "stops":
        await stops_flow(tether, args)
    elif scenario == "reject":
        await reject_flow(tether, args)
    elif scenario == "gone":
        await gone_flow(tether, args)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    asyncio.run(main())
