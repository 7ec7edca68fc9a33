//! The terminal client in a real pseudo-terminal (issue 10, item 1): two clients on one
//! session, the idle one's screen shows the other's turn as one block under its originator,
//! the prompt is drawn once, never doubled, never under a notice; history replays the same
//! way; `/help` is answered locally.

mod common;

use common::{AgentProc, Pty, client, text, write_config};

/// A loop of one slowly streamed answer (one chunk per word).
const SLOW: &str = r#"{"loop": true, "responses": [
  {"text": "alpha beta gamma delta epsilon zeta eta theta", "chunk_delay_ms": 30}
]}"#;
const ANSWER: &str = "alpha beta gamma delta epsilon zeta eta theta";

/// The session id from the banner `session <id> (chat, …)`.
fn session_id(screen: &[String]) -> String {
    screen
        .iter()
        .find_map(|l| l.strip_prefix("session "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("banner with the session id")
        .to_owned()
}

/// The screen is idle: its last line is the prompt alone.
fn prompt_last(s: &[String]) -> bool {
    s.last().is_some_and(|l| l == ">")
}

/// Lines that start with the prompt and carry something else: a streamed chunk or a notice
/// drawn on the prompt line, or a line the user typed (`allowed`).
fn prompt_lines_with_text<'a>(s: &'a [String], allowed: &[&str]) -> Vec<&'a String> {
    s.iter()
        .filter(|l| l.starts_with('>') && l.as_str() != ">")
        .filter(|l| !allowed.iter().any(|a| l.as_str() == format!("> {a}")))
        .collect()
}

fn assert_clean(screen: &[String], typed: &[&str]) {
    let all = screen.join("\n");
    assert!(!all.contains("> >"), "a doubled prompt:\n{all}");
    let stray = prompt_lines_with_text(screen, typed);
    assert!(
        stray.is_empty(),
        "output drawn on the prompt line: {stray:?}\n{all}"
    );
    for l in screen {
        if l.contains(" joined") || l.contains(" left") {
            assert!(
                l.starts_with('·'),
                "a notice not on a line of its own: {l:?}\n{all}"
            );
        }
    }
}

#[test]
fn an_idle_terminal_shows_another_clients_turn_as_one_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), SLOW);
    let config_arg = config.to_str().expect("utf-8 path");
    let _agent = AgentProc::start(&config);

    // A: an idle client on a terminal.
    let mut a = Pty::spawn(&["chat", "--config", config_arg]);
    let shown = a.wait_for("the banner and the prompt", |s| {
        s.last().is_some_and(|l| l.starts_with('>'))
    });
    assert_clean(&shown, &[]);
    let id = session_id(&shown);

    // B: another client joins, sends a message whose answer streams word by word, and leaves.
    let b = client(&config, &["chat", "--session", &id], "what is up?\n");
    assert!(b.status.success(), "{}", text(&b));
    let screen = a.wait_for("B's turn and the prompt again", |s| {
        s.iter().any(|l| l.contains("left")) && prompt_last(s) && s.join("\n").contains("theta")
    });
    let all = screen.join("\n");
    // One block: the originator's header, then the whole answer on one line.
    let head = screen
        .iter()
        .position(|l| l.ends_with("(human)> what is up?"))
        .unwrap_or_else(|| panic!("no header naming B's turn:\n{all}"));
    assert!(
        screen[head + 1..].iter().any(|l| l == ANSWER),
        "the answer is not one continuous block:\n{all}"
    );
    assert_clean(&screen, &[]);
    // Redrawn once, at the end: the only prompt on screen is the last line.
    assert_eq!(
        screen.iter().filter(|l| l.as_str() == ">").count(),
        1,
        "{all}"
    );

    // `/help` is answered here, never sent to the model.
    a.type_text("/help\n");
    let screen = a.wait_for("the command list", |s| {
        s.iter().any(|l| l.contains("/queue MESSAGE")) && prompt_last(s)
    });
    assert!(
        !screen.join("\n").contains("you> /help"),
        "{}",
        screen.join("\n")
    );

    // A's own line: the terminal shows it once (as typed), not echoed back as `you> …`.
    a.type_text("my own question\n");
    let screen = a.wait_for("A's own turn", |s| {
        s.iter().filter(|l| l.as_str() == ANSWER).count() == 2 && prompt_last(s)
    });
    let all = screen.join("\n");
    assert!(all.contains("> my own question"), "{all}");
    assert!(
        !all.contains("you> my own question"),
        "own line echoed:\n{all}"
    );
    assert_clean(&screen, &["/help", "my own question"]);

    // The model never saw `/help`: the session has B's turn and A's, nothing else.
    let history = client(&config, &["attach", &id], "");
    let replay = text(&history);
    assert!(!replay.contains("> /help"), "the model got /help: {replay}");
    assert!(replay.contains("my own question"), "{replay}");

    a.type_text("\x04"); // Ctrl-D leaves
    assert!(a.wait().success());

    // Replaying the history on a terminal: the same blocks, and one prompt once it is live.
    let mut c = Pty::spawn(&["attach", &id, "--config", config_arg]);
    let screen = c.wait_for("the replay and the prompt", |s| {
        s.iter().any(|l| l.contains("── live ──")) && prompt_last(s)
    });
    let all = screen.join("\n");
    assert_eq!(
        screen.iter().filter(|l| l.as_str() == ANSWER).count(),
        2,
        "history not replayed as blocks:\n{all}"
    );
    assert_clean(&screen, &[]);
    assert_eq!(
        screen.iter().filter(|l| l.as_str() == ">").count(),
        1,
        "{all}"
    );
    c.type_text("\x04");
    assert!(c.wait().success());
}

#[test]
fn help_is_answered_locally_when_piped_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), SLOW);
    let _agent = AgentProc::start(&config);
    let out = client(&config, &["chat"], "/help\n");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("/queue MESSAGE"), "{shown}");
    assert!(!shown.contains("alpha"), "/help reached the model: {shown}");
    let list = client(&config, &["sessions", "--json"], "");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    // Created and attached to, but no turn: only a handful of session events.
    let session = &list["sessions"][0];
    assert_eq!(session["state"], "idle", "{list}");
    let id = session["session_id"].as_str().expect("id");
    let replay = text(&client(&config, &["attach", id], ""));
    assert!(!replay.contains("> /help"), "the model got /help: {replay}");
}

#[test]
fn the_screen_emulation_erases_and_overwrites_like_a_terminal() {
    let s = common::screen("> \r\x1b[2K· bob joined\r\nab\rX\x1b[31mY\x1b[0m\r\n> ");
    assert_eq!(s, ["· bob joined", "XY", ">"]);
}
