//! An always-on, stable-toolchain fuzz of the link frame decoder (`LinkFrame::decode`, what
//! the agent runs on every frame from the hub): arbitrary bytes, arbitrary JSON, envelopes of
//! every known type with arbitrary payloads, and mutations of valid frames. The decoder must
//! never panic, every error must say something, and whatever it accepts must encode to a
//! frame it accepts again. (The coverage-guided fuzzer is `fuzz/fuzz_targets/link_frame.rs`,
//! run by `scripts/fuzz.sh`.)

use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};
use tether_proto::link::{LinkDecodeError, LinkFrame, MAX_LINK_FRAME_BYTES};

const KINDS: &[&str] = &[
    "register",
    "ack",
    "heartbeat",
    "alert_events",
    "alert_ack",
    "session_output",
    "session_error",
    "session_event",
    "diagnose_report",
    "session_start",
    "session_input",
    "session_cancel",
    "session_attach",
    "session_detach",
    "session_answer",
    "ping",
    "pong",
    "disconnect",
];

const FIELDS: &[&str] = &[
    "type",
    "id",
    "ref_id",
    "payload",
    "session_id",
    "session_type",
    "user_name",
    "params",
    "message",
    "class",
    "policy",
    "ok",
    "error",
    "warning",
    "proto",
    "reason",
    "details",
    "result",
    "upto_seq",
    "events",
    "event_time",
    "event_status",
    "alert_key",
    "labels",
    "attrs",
    "description",
    "description_format",
    "seq",
    "hostname",
    "ip",
    "os",
    "arch",
    "plugins",
    "agent_version",
    "uptime_sec",
    "active_sessions",
    "active_alerts",
    "cpu_pct",
    "mem_pct",
    "dropped_alerts",
    "delta",
    "stage",
    "done",
    "report",
    "metadata",
    "code",
    "event",
    "call_id",
    "decision",
    "scope",
    "after_seq",
    "queue",
    "retry_after_sec",
    "turn_id",
    "created_at",
    "plugin",
    "target",
];

/// Decodes; checks the decoder's contract.
fn check(text: &str) {
    match LinkFrame::decode(text) {
        Ok(frame) => {
            let again = LinkFrame::decode(&frame.encode())
                .unwrap_or_else(|e| panic!("re-encoding {frame:?} gave an undecodable frame: {e}"));
            assert_eq!(again.message.kind(), frame.message.kind());
            assert_eq!(again.id, frame.id);
            assert_eq!(again.ref_id, frame.ref_id);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if text.len() > MAX_LINK_FRAME_BYTES {
                assert!(matches!(e, LinkDecodeError::TooLarge { .. }), "{e}");
            }
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
        1 => ".{0,6}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        ".{0,24}".prop_map(Value::String),
        proptest::sample::select(KINDS).prop_map(|k| Value::String(k.to_owned())),
        proptest::sample::select(
            &[
                "Critical", "Warning", "Info", "Ok", "human", "agent", "allow"
            ][..]
        )
        .prop_map(|k| Value::String(k.to_owned())),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An envelope of a known (or random) type with an arbitrary payload.
fn envelope() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            4 => proptest::sample::select(KINDS).prop_map(|k| Value::String(k.to_owned())),
            1 => json_value(),
        ],
        prop_oneof![3 => "[0-9a-f-]{0,36}".prop_map(Value::String), 1 => json_value()],
        proptest::option::of(json_value()),
        proptest::option::of(json_value()),
    )
        .prop_map(|(kind, id, ref_id, payload)| {
            let mut m = Map::new();
            m.insert("type".into(), kind);
            m.insert("id".into(), id);
            if let Some(r) = ref_id {
                m.insert("ref_id".into(), r);
            }
            if let Some(p) = payload {
                m.insert("payload".into(), p);
            }
            Value::Object(m)
        })
}

/// Valid frames of every type the agent may receive or send.
fn valid_frames() -> Vec<String> {
    let event = json!({"event_time": 1, "event_status": "Critical", "alert_key": "k",
                       "labels": {"a": "b"}, "description": "d", "seq": 3});
    [
        json!({"type": "register", "id": "1", "payload": {"hostname": "h", "ip": "1.2.3.4", "os": "linux", "arch": "amd64", "labels": {}, "plugins": [], "agent_version": "v", "uptime_sec": 5}}),
        json!({"type": "ack", "id": "2", "ref_id": "1", "payload": {"ok": true, "proto": 2}}),
        json!({"type": "heartbeat", "id": "3", "payload": {"active_sessions": 1, "active_alerts": 2, "cpu_pct": 1.5, "mem_pct": 2.5, "dropped_alerts": 0}}),
        json!({"type": "alert_events", "id": "4", "payload": {"events": [event]}}),
        json!({"type": "alert_ack", "id": "5", "payload": {"upto_seq": 9}}),
        json!({"type": "session_start", "id": "6", "payload": {"session_id": "s", "session_type": "chat", "user_name": "u", "params": {"message": "hi"}}}),
        json!({"type": "session_input", "id": "7", "payload": {"session_id": "s", "message": "m", "user_name": "u", "class": "human", "queue": true}}),
        json!({"type": "session_cancel", "id": "8", "payload": {"session_id": "s", "reason": "r"}}),
        json!({"type": "session_attach", "id": "9", "payload": {"session_id": "s", "user_name": "u", "class": "human", "after_seq": 4}}),
        json!({"type": "session_answer", "id": "10", "payload": {"session_id": "s", "call_id": "c", "user_name": "u", "class": "human", "decision": "allow"}}),
        json!({"type": "disconnect", "id": "11", "payload": {"reason": "r", "retry_after_sec": 30}}),
        json!({"type": "ping", "id": "12"}),
        json!({"type": "session_event", "id": "13", "payload": {"session_id": "s", "event": {"event": "text_delta", "seq": 1}}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            proptest::sample::select(&b"{}[]\",:\\0-9eE.tfn \x00\xff"[..])
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= b;
            }
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % bytes.len());
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Duplicate(i, n) if !bytes.is_empty() => {
                let i = i % bytes.len();
                let end = (i + n).min(bytes.len());
                let chunk = bytes[i..end].to_vec();
                bytes.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,256}") {
        check(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        check(&v.to_string());
    }

    #[test]
    fn envelopes_of_every_type_never_panic(v in envelope()) {
        check(&v.to_string());
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in any::<prop::sample::Index>(),
        ms in proptest::collection::vec(mutation(), 1..8),
    ) {
        let frames = valid_frames();
        let base = frames[which.index(frames.len())].clone().into_bytes();
        check(&String::from_utf8_lossy(&mutate(base, &ms)));
    }
}

#[test]
fn the_valid_frames_decode() {
    for f in valid_frames() {
        LinkFrame::decode(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn hostile_edge_cases_are_errors_not_panics() {
    let deep_array = "[".repeat(100_000);
    let deep_payload = format!(
        r#"{{"type":"session_start","id":"x","payload":{}{}}}"#,
        "{\"params\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let just_over = format!(
        r#"{{"type":"ping","id":"{}"}}"#,
        "a".repeat(MAX_LINK_FRAME_BYTES)
    );
    let cases: Vec<String> = vec![
        String::new(),
        " ".into(),
        "null".into(),
        "[]".into(),
        "\"ping\"".into(),
        "{\"type\":null}".into(),
        "{\"type\":\"ping\"}".into(),
        "{\"type\":\"ping\",\"type\":\"pong\",\"id\":\"1\"}".into(),
        "{\"type\":\"alert_ack\",\"id\":\"1\",\"payload\":{\"upto_seq\":-1}}".into(),
        "{\"type\":\"alert_ack\",\"id\":\"1\",\"payload\":{\"upto_seq\":18446744073709551616}}".into(),
        "{\"type\":\"heartbeat\",\"id\":\"1\",\"payload\":{\"active_sessions\":1,\"active_alerts\":1,\"cpu_pct\":1e400}}".into(),
        "{\"type\":\"session_input\",\"id\":\"\\ud800\",\"payload\":{\"session_id\":\"s\"}}".into(),
        "{\"type\":\"session_start\",\"id\":\"1\",\"payload\":{\"session_id\":\"\\u0000\"}}".into(),
        "{\"type\":\"disconnect\",\"id\":1,\"payload\":{}}".into(),
        "{\"type\":\"ack\",\"id\":\"1\",\"ref_id\":7,\"payload\":{\"ok\":true}}".into(),
        deep_array,
        deep_payload,
        just_over,
    ];
    for c in &cases {
        check(c);
    }
    // Exactly at the limit is not refused for its size.
    let at_limit = {
        let pad = MAX_LINK_FRAME_BYTES - r#"{"type":"ping","id":""}"#.len();
        format!(r#"{{"type":"ping","id":"{}"}}"#, "a".repeat(pad))
    };
    assert_eq!(at_limit.len(), MAX_LINK_FRAME_BYTES);
    assert!(LinkFrame::decode(&at_limit).is_ok());
}
