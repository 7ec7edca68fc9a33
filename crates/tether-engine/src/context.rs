//! Context management: token estimates and history compaction.
//!
//! Models have a fixed context window. tether does not ship a tokenizer per model, so it
//! estimates ([`estimate_tokens`]) and, when a request would come too close to an endpoint's
//! window, sends a compacted copy of the conversation ([`compact`]). The conversation a session
//! keeps is never changed: compaction is applied to each request, per endpoint, so a fallback
//! endpoint with a smaller window gets a shorter history than the primary.
//!
//! # The estimate
//!
//! About 4 bytes of UTF-8 per token ([`BYTES_PER_TOKEN`]), rounded up per piece of text, plus
//! [`MESSAGE_OVERHEAD_TOKENS`] per message (role and framing of the chat template) and
//! [`TOOL_CALL_OVERHEAD_TOKENS`] per tool call. This is close for English prose, somewhat
//! high for code and JSON, and low for scripts without spaces such as Chinese (about 3 bytes
//! and one token per character) — which is why endpoints compact at a share of the window
//! (`compact_at`, 0.8 by default) rather than at the window itself.
//!
//! # Compaction
//!
//! [`compact`] keeps every system message and the first user message (the task), then the
//! most recent messages that fit, newest first, as one contiguous tail. An assistant message
//! that asked for tool calls and the tool messages answering it form a unit that is kept or
//! dropped whole, so a request never carries a tool result without its call or a call without
//! its result. One short user message, "[N earlier messages were omitted to fit the context
//! window]", marks where messages were left out. The newest unit is always kept; if it alone
//! does not fit, the longest tool results in it are cut in the middle.

use crate::model::Message;
use tether_host::tools::ToolSpec;

/// Bytes of UTF-8 text counted as one token.
pub const BYTES_PER_TOKEN: usize = 4;
/// Tokens added for each message (role, separators of the chat template).
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;
/// Tokens added for each tool call in an assistant message, and for each tool offered.
pub const TOOL_CALL_OVERHEAD_TOKENS: usize = 8;
/// A tool result is never cut below this many bytes when compacting.
const MIN_TOOL_RESULT_BYTES: usize = 256;

fn text_tokens(text: &str) -> usize {
    text.len().div_ceil(BYTES_PER_TOKEN)
}

/// The estimated tokens of one message (see the module documentation).
pub fn message_tokens(message: &Message) -> usize {
    MESSAGE_OVERHEAD_TOKENS
        + match message {
            Message::System { content } | Message::User { content } => text_tokens(content),
            Message::Assistant {
                content,
                reasoning,
                tool_calls,
            } => {
                text_tokens(content)
                    + reasoning.as_deref().map_or(0, text_tokens)
                    + tool_calls
                        .iter()
                        .map(|c| {
                            TOOL_CALL_OVERHEAD_TOKENS
                                + text_tokens(&c.id)
                                + text_tokens(&c.name)
                                + text_tokens(&c.arguments)
                        })
                        .sum::<usize>()
            }
            Message::Tool {
                tool_call_id,
                content,
                ..
            } => text_tokens(tool_call_id) + text_tokens(content),
        }
}

/// The estimated tokens of a conversation (see the module documentation).
pub fn estimate_tokens(messages: &[Message]) -> usize {
    messages.iter().map(message_tokens).sum()
}

/// The estimated tokens taken by the tool definitions sent with a request.
pub fn estimate_tool_tokens(tools: &[ToolSpec]) -> usize {
    tools
        .iter()
        .map(|t| {
            TOOL_CALL_OVERHEAD_TOKENS
                + text_tokens(&t.name)
                + text_tokens(&t.description)
                + t.parameters.to_string().len().div_ceil(BYTES_PER_TOKEN)
        })
        .sum()
}

/// The note that replaces `omitted` messages.
pub fn omitted_note(omitted: usize) -> Message {
    Message::User {
        content: format!("[{omitted} earlier messages were omitted to fit the context window]"),
    }
}

/// Returns a copy of `messages` that fits `budget_tokens` when that is possible (see the
/// module documentation for what is kept). Order is preserved. When the messages already fit
/// they are returned unchanged.
pub fn compact(messages: &[Message], budget_tokens: usize) -> Vec<Message> {
    if estimate_tokens(messages) <= budget_tokens {
        return messages.to_vec();
    }
    let n = messages.len();
    let first_user = messages
        .iter()
        .position(|m| matches!(m, Message::User { .. }));
    let mut keep = vec![false; n];
    // Units that may be dropped, oldest first: ranges of message indices.
    let mut units: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < n {
        match &messages[i] {
            Message::System { .. } => {
                keep[i] = true;
                i += 1;
            }
            Message::User { .. } if Some(i) == first_user => {
                keep[i] = true;
                i += 1;
            }
            Message::Assistant { tool_calls, .. } if !tool_calls.is_empty() => {
                let mut j = i + 1;
                while let Some(Message::Tool { tool_call_id, .. }) = messages.get(j) {
                    if !tool_calls.iter().any(|c| &c.id == tool_call_id) {
                        break;
                    }
                    j += 1;
                }
                units.push(i..j);
                i = j;
            }
            // A tool message without its call (never produced by the turn loop): dropped,
            // because the model API would refuse it.
            Message::Tool { .. } => i += 1,
            _ => {
                units.push(i..i + 1);
                i += 1;
            }
        }
    }

    let pinned: usize = (0..n)
        .filter(|&i| keep[i])
        .map(|i| message_tokens(&messages[i]))
        .sum();
    // The note's cost with the largest count it could carry.
    let mut cost = pinned + message_tokens(&omitted_note(n));
    for (k, unit) in units.iter().enumerate().rev() {
        let unit_cost = estimate_tokens(&messages[unit.clone()]);
        if k + 1 == units.len() || cost + unit_cost <= budget_tokens {
            cost += unit_cost;
            keep[unit.clone()].fill(true);
        } else {
            break;
        }
    }

    let omitted = keep.iter().filter(|k| !**k).count();
    let mut out = Vec::with_capacity(n - omitted + 1);
    let mut noted = false;
    for (message, kept) in messages.iter().zip(&keep) {
        if *kept {
            out.push(message.clone());
        } else if !noted {
            out.push(omitted_note(omitted));
            noted = true;
        }
    }
    shorten_tool_results(&mut out, budget_tokens);
    out
}

/// Cuts the longest tool results (in the middle) until `messages` fit `budget_tokens` or no
/// result can be cut further.
fn shorten_tool_results(messages: &mut [Message], budget_tokens: usize) {
    let mut total = estimate_tokens(messages);
    if total <= budget_tokens {
        return;
    }
    let mut order: Vec<usize> = (0..messages.len())
        .filter(|&i| matches!(messages[i], Message::Tool { .. }))
        .collect();
    order.sort_by_key(|&i| match &messages[i] {
        Message::Tool { content, .. } => std::cmp::Reverse(content.len()),
        _ => std::cmp::Reverse(0),
    });
    for i in order {
        if total <= budget_tokens {
            break;
        }
        let excess_bytes = (total - budget_tokens) * BYTES_PER_TOKEN;
        if let Message::Tool { content, .. } = &mut messages[i] {
            let before = text_tokens(content);
            // Leave room for the marker and rounding.
            let target = content
                .len()
                .saturating_sub(excess_bytes + 80)
                .max(MIN_TOOL_RESULT_BYTES);
            if target < content.len() {
                *content = cut_middle(content, target);
                total = total + text_tokens(content) - before;
            }
        }
    }
}

/// Keeps about `keep` bytes of `text`: two thirds from the start, one third from the end,
/// with a marker between them.
fn cut_middle(text: &str, keep: usize) -> String {
    let mut head = keep * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (keep - keep * 2 / 3);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let cut = tail - head;
    format!(
        "{}\n[... {cut} bytes cut to fit the context window ...]\n{}",
        &text[..head],
        &text[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolCallRequest;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn sys(s: &str) -> Message {
        Message::System { content: s.into() }
    }
    fn user(s: &str) -> Message {
        Message::User { content: s.into() }
    }
    fn assistant(s: &str) -> Message {
        Message::Assistant {
            content: s.into(),
            reasoning: None,
            tool_calls: vec![],
        }
    }
    fn calls(ids: &[&str]) -> Message {
        Message::Assistant {
            content: String::new(),
            reasoning: None,
            tool_calls: ids
                .iter()
                .map(|id| ToolCallRequest {
                    id: (*id).into(),
                    name: "system_info".into(),
                    arguments: "{}".into(),
                })
                .collect(),
        }
    }
    fn tool(id: &str, content: &str) -> Message {
        Message::Tool {
            tool_call_id: id.into(),
            name: "system_info".into(),
            content: content.into(),
        }
    }

    #[test]
    fn estimate_counts_bytes_and_overhead() {
        assert_eq!(estimate_tokens(&[]), 0);
        assert_eq!(estimate_tokens(&[user("")]), MESSAGE_OVERHEAD_TOKENS);
        assert_eq!(
            estimate_tokens(&[user("abcd")]),
            MESSAGE_OVERHEAD_TOKENS + 1
        );
        assert_eq!(
            estimate_tokens(&[user("abcde")]),
            MESSAGE_OVERHEAD_TOKENS + 2
        );
        let with_call = estimate_tokens(&[calls(&["abcd"])]);
        assert!(with_call > MESSAGE_OVERHEAD_TOKENS + TOOL_CALL_OVERHEAD_TOKENS);
    }

    #[test]
    fn fitting_messages_are_returned_unchanged() {
        let m = vec![sys("s"), user("u"), assistant("a")];
        assert_eq!(compact(&m, 10_000), m);
    }

    #[test]
    fn drops_the_oldest_units_and_notes_it() {
        let big = "x".repeat(400); // 100 tokens
        let m = vec![
            sys("system"),
            user("first question"),
            calls(&["a", "b"]),
            tool("a", &big),
            tool("b", &big),
            assistant(&big),
            user("second"),
            calls(&["c"]),
            tool("c", "small"),
            assistant("answer"),
        ];
        let out = compact(&m, 120);
        assert!(estimate_tokens(&out) <= 120, "{}", estimate_tokens(&out));
        assert_eq!(out[0], m[0]);
        assert_eq!(out[1], m[1]);
        assert_eq!(out[2], omitted_note(4));
        assert_eq!(&out[3..], &m[6..]);
    }

    #[test]
    fn the_newest_unit_is_kept_and_its_long_tool_results_are_cut() {
        let big = "y".repeat(40_000);
        let m = vec![
            sys("system"),
            user("q"),
            assistant("old"),
            calls(&["a"]),
            tool("a", &big),
        ];
        let out = compact(&m, 1_000);
        assert!(estimate_tokens(&out) <= 1_000, "{}", estimate_tokens(&out));
        assert_eq!(out.len(), 5);
        assert_eq!(out[2], omitted_note(1));
        assert_eq!(out[3], m[3]);
        match &out[4] {
            Message::Tool {
                tool_call_id,
                content,
                ..
            } => {
                assert_eq!(tool_call_id, "a");
                assert!(content.contains("bytes cut to fit the context window"));
                assert!(content.starts_with("yyy") && content.ends_with("yyy"));
            }
            other => panic!("expected a tool message, got {other:?}"),
        }
    }

    #[test]
    fn a_cut_tool_result_keeps_both_ends_of_its_fence() {
        let fence = crate::fence::Fence::new();
        // The longest source attribute there is, and a result cut down to the minimum.
        let source = "s".repeat(200);
        let fenced = fence.untrusted(
            crate::fence::Kind::ToolOutput,
            Some(&source),
            &"z".repeat(40_000),
        );
        let m = vec![sys("system"), user("q"), calls(&["a"]), tool("a", &fenced)];
        let out = compact(&m, 1);
        let Some(Message::Tool { content, .. }) = out.last() else {
            panic!("expected a tool message, got {out:?}")
        };
        assert!(content.len() < fenced.len());
        let opening = &fenced[..fenced.find('\n').unwrap_or(0)];
        let closing = &fenced[fenced.rfind('\n').unwrap_or(0)..];
        assert!(content.starts_with(opening), "{content}");
        assert!(content.ends_with(closing), "{content}");
    }

    #[test]
    fn cut_middle_respects_char_boundaries() {
        let text = "é".repeat(1000);
        let cut = cut_middle(&text, 301);
        assert!(cut.len() < text.len());
        assert!(cut.starts_with('é') && cut.ends_with('é'));
    }

    #[test]
    fn orphan_tool_messages_are_dropped_when_compacting() {
        let big = "z".repeat(2_000);
        let m = vec![
            sys("s"),
            user("q"),
            tool("ghost", "x"),
            assistant(&big),
            user("now"),
        ];
        let out = compact(&m, 40);
        assert!(!out.iter().any(|m| matches!(m, Message::Tool { .. })));
        assert_eq!(out.last(), m.last());
    }

    // ---- property tests ----

    #[derive(Clone, Debug)]
    enum Round {
        User(String),
        Assistant(String),
        Tools(Vec<String>),
    }

    fn round() -> impl Strategy<Value = Round> {
        prop_oneof![
            "[a-z ]{0,120}".prop_map(Round::User),
            "[a-z ]{0,300}".prop_map(Round::Assistant),
            prop::collection::vec("[a-z ]{0,400}", 1..4).prop_map(Round::Tools),
        ]
    }

    fn conversation() -> impl Strategy<Value = Vec<Message>> {
        (
            "[a-z ]{0,200}",
            "[a-z ]{0,200}",
            prop::collection::vec(round(), 0..16),
            any::<bool>(),
        )
            .prop_map(|(system, first, rounds, extra_system)| {
                let mut out = vec![sys(&system), user(&first)];
                let mut next_id = 0;
                for (k, r) in rounds.into_iter().enumerate() {
                    match r {
                        Round::User(t) => out.push(user(&t)),
                        Round::Assistant(t) => out.push(assistant(&t)),
                        Round::Tools(results) => {
                            let ids: Vec<String> = results
                                .iter()
                                .map(|_| {
                                    next_id += 1;
                                    format!("call_{next_id}")
                                })
                                .collect();
                            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                            out.push(calls(&refs));
                            for (id, content) in ids.iter().zip(&results) {
                                out.push(tool(id, content));
                            }
                        }
                    }
                    if extra_system && k == 3 {
                        out.push(sys("a later system note"));
                    }
                }
                out
            })
    }

    /// The ranges of the units `compact` may drop (mirrors its grouping).
    fn newest_unit_cost(messages: &[Message]) -> usize {
        let mut last_start = None;
        for (i, m) in messages.iter().enumerate().skip(2) {
            match m {
                Message::Tool { .. } | Message::System { .. } => {}
                _ => last_start = Some(i),
            }
        }
        match last_start {
            None => 0,
            Some(s) => estimate_tokens(
                &messages[s..]
                    .iter()
                    .filter(|m| !matches!(m, Message::System { .. }))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn key(m: &Message) -> String {
        match m {
            // Tool results may be cut; their call id identifies them.
            Message::Tool { tool_call_id, .. } => format!("tool:{tool_call_id}"),
            other => format!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn compact_properties(messages in conversation(), budget in 0usize..1_500) {
            let out = compact(&messages, budget);

            // System messages and the first user message are kept.
            for m in &messages {
                if matches!(m, Message::System { .. }) {
                    prop_assert!(out.contains(m));
                }
            }
            prop_assert_eq!(&out[1], &messages[1]);

            // Order is preserved: without the note, the output is a subsequence of the input.
            let note_count = out
                .iter()
                .filter(|m| matches!(m, Message::User { content } if content.contains("earlier messages were omitted")))
                .count();
            prop_assert!(note_count <= 1);
            let mut it = messages.iter().map(key);
            let mut kept = 0;
            for m in &out {
                if matches!(m, Message::User { content } if content.contains("earlier messages were omitted")) {
                    continue;
                }
                let k = key(m);
                prop_assert!(it.any(|x| x == k), "out of order or invented: {}", k);
                kept += 1;
            }
            if note_count == 1 {
                prop_assert_eq!(out.iter().find_map(|m| match m {
                    Message::User { content } if content.contains("earlier messages were omitted") => Some(content.clone()),
                    _ => None,
                }), match omitted_note(messages.len() - kept) { Message::User { content } => Some(content), _ => None });
            } else {
                prop_assert_eq!(kept, messages.len());
            }

            // Tool-call units are intact: every tool message follows the call it answers, and
            // every call has its answer.
            let mut open: HashSet<String> = HashSet::new();
            for m in &out {
                match m {
                    Message::Assistant { tool_calls, .. } => {
                        prop_assert!(open.is_empty(), "a call lost its result: {:?}", open);
                        open = tool_calls.iter().map(|c| c.id.clone()).collect();
                    }
                    Message::Tool { tool_call_id, .. } => {
                        prop_assert!(open.remove(tool_call_id), "orphan tool result {}", tool_call_id);
                    }
                    _ => prop_assert!(open.is_empty(), "a call lost its result: {:?}", open),
                }
            }
            prop_assert!(open.is_empty());

            // It fits whenever the pinned messages, the note and the newest unit fit.
            let pinned: usize = messages
                .iter()
                .enumerate()
                .filter(|(i, m)| *i == 1 || matches!(m, Message::System { .. }))
                .map(|(_, m)| message_tokens(m))
                .sum();
            let floor = pinned + message_tokens(&omitted_note(messages.len())) + newest_unit_cost(&messages);
            if floor <= budget || estimate_tokens(&messages) <= budget {
                prop_assert!(estimate_tokens(&out) <= budget, "{} > {}", estimate_tokens(&out), budget);
            }
        }
    }
}
