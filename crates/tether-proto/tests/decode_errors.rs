//! Malformed requests: every failure is a `bad_request` reply that names what was wrong and
//! echoes the request `id` whenever the id itself was readable. A property test checks that no
//! input, however odd, makes the decoders panic.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tether_proto::*;

const SID: &str = "0199a0c0-5e55-7000-8000-000000000001";

/// Decodes `text`, expecting a failure; checks the reply shape and returns (re, message).
fn reject(text: &str) -> (Value, String) {
    let err = match Request::decode(text) {
        Ok(req) => panic!("{text} decoded as {req:?}"),
        Err(e) => e,
    };
    let reply = err.to_reply();
    let encoded = reply.encode();
    let v: Value = serde_json::from_str(&encoded).expect("reply is JSON");
    assert_eq!(v["ok"], json!(false), "{encoded}");
    assert_eq!(v["error"]["reason"], json!("bad_request"), "{encoded}");
    assert!(v.get("result").is_none(), "{encoded}");
    let message = v["error"]["message"]
        .as_str()
        .expect("message is a string")
        .to_owned();
    // The reply message is the error's Display.
    assert_eq!(message, err.error.to_string());
    assert!(!message.is_empty());
    assert_eq!(
        v["re"],
        serde_json::to_value(&err.id).expect("id serializes"),
        "{encoded}"
    );
    (v["re"].clone(), message)
}

fn assert_names(message: &str, needle: &str) {
    assert!(
        message.contains(&format!("`{needle}`")),
        "message {message:?} does not name `{needle}`"
    );
}

// ---------------------------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_json() {
    for text in [
        "",
        "{",
        r#"{"id":1,"op":"hello""#,
        "{'id':1}",
        "hello",
        r#"{"id":1,"op":"hello"} trailing"#,
    ] {
        let (re, message) = reject(text);
        assert_eq!(re, Value::Null, "{text}");
        assert!(message.starts_with("malformed JSON"), "{text}: {message}");
    }
}

#[test]
fn not_an_object() {
    for text in [
        "[]",
        r#"[{"id":1,"op":"hello"}]"#,
        "1",
        r#""hello""#,
        "null",
        "true",
    ] {
        let (re, message) = reject(text);
        assert_eq!(re, Value::Null, "{text}");
        assert!(message.contains("JSON object"), "{text}: {message}");
    }
}

#[test]
fn missing_id() {
    for text in [r#"{"op":"hello"}"#, r#"{"id":null,"op":"hello"}"#, "{}"] {
        let (re, message) = reject(text);
        assert_eq!(re, Value::Null, "{text}");
        assert_names(&message, "id");
    }
}

#[test]
fn id_of_wrong_type() {
    for text in [
        r#"{"id":true,"op":"hello"}"#,
        r#"{"id":[1],"op":"hello"}"#,
        r#"{"id":{"n":1},"op":"hello"}"#,
    ] {
        let (re, message) = reject(text);
        assert_eq!(re, Value::Null, "{text}");
        assert_names(&message, "id");
        assert!(message.contains("string or a number"), "{message}");
    }
}

#[test]
fn missing_op_echoes_id() {
    let (re, message) = reject(r#"{"id":7}"#);
    assert_eq!(re, json!(7));
    assert_names(&message, "op");

    let (re, message) = reject(r#"{"id":"abc","op":null,"session_id":"s"}"#);
    assert_eq!(re, json!("abc"));
    assert_names(&message, "op");
}

#[test]
fn op_of_wrong_type() {
    let (re, message) = reject(r#"{"id":8,"op":5}"#);
    assert_eq!(re, json!(8));
    assert_names(&message, "op");
}

#[test]
fn unknown_op() {
    for op in ["session.destroy", "HELLO", "", "attach "] {
        let text = json!({"id": "u1", "op": op}).to_string();
        let (re, message) = reject(&text);
        assert_eq!(re, json!("u1"));
        assert_names(&message, op);
        assert!(message.contains("unknown op"), "{message}");
    }
}

#[test]
fn ids_are_echoed_verbatim() {
    for id in [
        json!(0),
        json!(-3),
        json!(1.5),
        json!(u64::MAX),
        json!(""),
        json!("x y"),
    ] {
        let text = json!({"id": id, "op": "nope"}).to_string();
        let (re, _) = reject(&text);
        assert_eq!(re, id, "{text}");
    }
}

#[test]
fn too_large() {
    let text = format!(
        r#"{{"id":1,"op":"input","session_id":"{SID}","text":"{}"}}"#,
        "a".repeat(MAX_MESSAGE_BYTES)
    );
    let (re, message) = reject(&text);
    assert_eq!(re, Value::Null);
    assert!(message.contains("limit"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_required_field() {
    let cases: &[(Value, &str)] = &[
        (json!({"op": "session.create"}), "mode"),
        (json!({"op": "attach"}), "session_id"),
        (json!({"op": "detach"}), "session_id"),
        (json!({"op": "input", "session_id": SID}), "text"),
        (json!({"op": "input", "text": "hi"}), "session_id"),
        (
            json!({"op": "answer", "session_id": SID, "decision": "allow"}),
            "call_id",
        ),
        (
            json!({"op": "answer", "session_id": SID, "call_id": "c"}),
            "decision",
        ),
        (json!({"op": "cancel", "session_id": SID}), "turn_id"),
        (json!({"op": "session.close"}), "session_id"),
    ];
    for (i, (params, field)) in cases.iter().enumerate() {
        let mut v = params.clone();
        v["id"] = json!(100 + i);
        let text = v.to_string();
        let (re, message) = reject(&text);
        assert_eq!(re, json!(100 + i), "{text}");
        assert_names(&message, field);
        assert!(message.contains("missing"), "{text}: {message}");
    }
}

#[test]
fn wrong_field_type() {
    let cases: &[(Value, &str)] = &[
        (
            json!({"op": "attach", "session_id": SID, "after_seq": "x"}),
            "after_seq",
        ),
        (
            json!({"op": "attach", "session_id": SID, "after_seq": -1}),
            "after_seq",
        ),
        (json!({"op": "attach", "session_id": 12}), "session_id"),
        (
            json!({"op": "input", "session_id": SID, "text": "hi", "queue": 3}),
            "queue",
        ),
        (
            json!({"op": "input", "session_id": SID, "text": "hi", "queue": "true"}),
            "queue",
        ),
        (
            json!({"op": "input", "session_id": SID, "text": ["hi"]}),
            "text",
        ),
        (
            json!({"op": "answer", "session_id": SID, "call_id": "c", "decision": "maybe"}),
            "decision",
        ),
        (
            json!({"op": "answer", "session_id": SID, "call_id": "c", "decision": "allow", "scope": "forever"}),
            "scope",
        ),
        (json!({"op": "session.create", "mode": "debug"}), "mode"),
        (
            json!({"op": "session.create", "mode": "chat", "params": 3}),
            "params",
        ),
        (
            json!({"op": "session.create", "mode": "chat", "policy": "anyone"}),
            "policy",
        ),
        (
            json!({"op": "session.create", "mode": "chat", "title": false}),
            "title",
        ),
        (json!({"op": "hello", "client_name": 1}), "client_name"),
        (
            json!({"op": "cancel", "session_id": SID, "turn_id": {}}),
            "turn_id",
        ),
    ];
    for (i, (params, field)) in cases.iter().enumerate() {
        let id = format!("w{i}");
        let mut v = params.clone();
        v["id"] = json!(id);
        let text = v.to_string();
        let (re, message) = reject(&text);
        assert_eq!(re, json!(id), "{text}");
        assert_names(&message, field);
    }
}

#[test]
fn field_limits() {
    let cases: &[(Value, &str)] = &[
        (
            json!({"op": "input", "session_id": SID, "text": "  \n"}),
            "text",
        ),
        (
            json!({"op": "session.create", "mode": "chat", "title": "t".repeat(MAX_TITLE_CHARS + 1)}),
            "title",
        ),
        (
            json!({"op": "hello", "client_name": "n".repeat(MAX_CLIENT_NAME_CHARS + 1)}),
            "client_name",
        ),
    ];
    for (params, field) in cases {
        let mut v = params.clone();
        v["id"] = json!(5);
        let (re, message) = reject(&v.to_string());
        assert_eq!(re, json!(5));
        assert_names(&message, field);
    }
    // Exactly at the limit is fine.
    let ok = json!({"id": 1, "op": "session.create", "mode": "chat", "title": "t".repeat(MAX_TITLE_CHARS)});
    assert!(Request::decode(&ok.to_string()).is_ok());
}

#[test]
fn raw_parse_then_from_raw() {
    // The two-step API reports the same errors as Request::decode.
    let raw = RawRequest::parse(
        r#"{"id":3,"op":"answer","session_id":"s","call_id":"c","decision":"maybe"}"#,
    )
    .expect("envelope is fine");
    assert_eq!(raw.op, "answer");
    assert!(!raw.params.contains_key("id") && !raw.params.contains_key("op"));
    let err = Op::from_raw(&raw).expect_err("bad decision");
    assert_eq!(err.id, Some(3.into()));
    assert_names(&err.error.to_string(), "decision");
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

#[test]
fn server_frame_errors() {
    for text in [
        "",
        "[]",
        "{}",
        r#"{"re":1,"ok":"yes"}"#,
        r#"{"event":"text_delta","session_id":"s","seq":1,"ts":"t"}"#,
        r#"{"event":"bogus","session_id":"s","seq":1,"ts":"t"}"#,
        r#"{"event":"slow_consumer","queued":-1}"#,
    ] {
        assert!(ServerFrame::decode(text).is_err(), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..50).prop_map(Value::from),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        ".{0,12}".prop_map(Value::String),
        // Spellings the decoders know, so that typed fields are sometimes valid.
        prop::sample::select(vec![
            "chat", "diagnose", "inspect", "human", "any", "allow", "deny", "once", "session",
            "idle", "running", "s1", "",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Known request fields, so that random maps often get past the envelope into param decoding.
const FIELDS: &[&str] = &[
    "session_id",
    "after_seq",
    "text",
    "queue",
    "call_id",
    "decision",
    "scope",
    "turn_id",
    "mode",
    "params",
    "title",
    "policy",
    "client_name",
    "agent_id",
];

fn arb_field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
    ]
}

fn arb_op() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(Op::NAMES).prop_map(|s| Value::String(s.to_owned())),
        1 => "[a-z.]{0,16}".prop_map(Value::String),
        1 => arb_json(),
    ]
}

fn arb_id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => any::<u32>().prop_map(|n| Some(Value::from(n))),
        2 => ".{0,8}".prop_map(|s| Some(Value::String(s))),
        1 => Just(None),
        1 => arb_json().prop_map(Some),
    ]
}

/// A request-shaped object: maybe an id, maybe an op, and a random param map.
fn arb_request_object() -> impl Strategy<Value = Value> {
    (
        arb_id(),
        prop::option::weighted(0.9, arb_op()),
        prop::collection::btree_map(arb_field_name(), arb_json(), 0..6),
    )
        .prop_map(|(id, op, params)| {
            let mut map: Map<String, Value> = params.into_iter().collect();
            if let Some(id) = id {
                map.insert("id".into(), id);
            }
            if let Some(op) = op {
                map.insert("op".into(), op);
            }
            Value::Object(map)
        })
}

/// Decodes `text` as a request; on failure checks the reply, and on success checks that the
/// request re-encodes to something that decodes to the same value.
fn check_request(text: &str) -> Result<(), TestCaseError> {
    match Request::decode(text) {
        Ok(req) => {
            let again = Request::decode(&req.encode());
            prop_assert_eq!(again, Ok(req));
        }
        Err(err) => {
            let encoded = err.to_reply().encode();
            let v: Value = serde_json::from_str(&encoded)
                .map_err(|e| TestCaseError::fail(format!("reply {encoded:?} is not JSON: {e}")))?;
            prop_assert_eq!(&v["ok"], &json!(false));
            prop_assert_eq!(&v["error"]["reason"], &json!("bad_request"));
            prop_assert!(v["error"]["message"].is_string());
            // When the id was readable it is echoed.
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
                match map.get("id") {
                    Some(id @ (Value::String(_) | Value::Number(_))) => {
                        prop_assert_eq!(&v["re"], id)
                    }
                    _ => prop_assert_eq!(&v["re"], &Value::Null),
                }
            }
        }
    }
    Ok(())
}

/// Decodes `text` as a server frame; an error must still make a valid `bad_request` reply.
fn check_server_frame(text: &str) -> Result<(), TestCaseError> {
    if let Err(error) = ServerFrame::decode(text) {
        let encoded = RequestError { id: None, error }.to_reply().encode();
        let v: Value = serde_json::from_str(&encoded)
            .map_err(|e| TestCaseError::fail(format!("reply {encoded:?} is not JSON: {e}")))?;
        prop_assert_eq!(&v["error"]["reason"], &json!("bad_request"));
        prop_assert_eq!(&v["re"], &Value::Null);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,64}") {
        check_request(&text)?;
        check_server_frame(&text)?;
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        let text = value.to_string();
        check_request(&text)?;
        check_server_frame(&text)?;
    }

    #[test]
    fn arbitrary_request_objects_never_panic(value in arb_request_object()) {
        let text = value.to_string();
        check_request(&text)?;
        check_server_frame(&text)?;
    }

    #[test]
    fn arbitrary_server_shaped_objects_never_panic(
        tag in prop::option::of(prop::sample::select(vec![
            "session_state", "client_attached", "client_detached", "turn_started", "text_delta",
            "reasoning_delta", "tool_call", "permission_requested", "permission_resolved",
            "tool_result", "turn_ended", "notice", "session_closed", "stream_gap",
            "replay_complete", "slow_consumer", "evicted", "bogus",
        ])),
        re in prop::option::of(arb_json()),
        seq in prop::option::of(arb_json()),
        fields in prop::collection::btree_map(
            prop::sample::select(vec![
                "session_id", "ts", "ok", "result", "error", "turn_id", "call_id", "text",
                "state", "client", "by", "cause", "decision", "from_seq", "to_seq", "queued",
                "reason", "last_seq",
            ]),
            arb_json(),
            0..6,
        ),
    ) {
        let mut map: Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Some(tag) = tag {
            map.insert("event".into(), json!(tag));
        }
        if let Some(re) = re {
            map.insert("re".into(), re);
        }
        if let Some(seq) = seq {
            map.insert("seq".into(), seq);
        }
        let text = Value::Object(map).to_string();
        check_server_frame(&text)?;
        check_request(&text)?;
    }
}
