//! JSON-schema validation of tool arguments.
//!
//! A small validator for the part of JSON Schema that tool schemas use, so that a model's bad
//! arguments come back to it as a precise error before the tool runs. Supported keywords:
//!
//! * `type` — `object`, `string`, `integer`, `number`, `boolean`, `array`, `null`, or an array
//!   of those. `integer` means a JSON number written without a fraction or exponent (`5`,
//!   not `5.0`): the tools decode integers with serde, which refuses `5.0`, so accepting it
//!   here would only move the error somewhere less clear.
//! * `properties`, `required`, `additionalProperties` (`false`, `true` or a schema);
//! * `enum`, `const`;
//! * `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers, and the draft-4
//!   boolean forms of the exclusive keywords);
//! * `minLength`, `maxLength` (counted in Unicode scalar values);
//! * `items` (one schema for every element, or an array of schemas by position),
//!   `minItems`, `maxItems`;
//! * `allOf`, `anyOf`, `oneOf`; boolean schemas (`true`, `false`).
//!
//! Every other keyword is ignored, never an error — in particular `pattern`,
//! `patternProperties` (when present, `additionalProperties` is not checked, since the
//! validator cannot tell which names the patterns allow), `format`, `$ref` and
//! `dependencies`.
//!
//! Errors name where the problem is: ``"`timeout_sec`: expected an integer >= 1, got -3"``,
//! ``"missing required property `command`"``, ``"`hosts[2]`: expected a string, got 7"``.
//! All problems found are reported (up to eight), separated by `"; "`.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// At most this many problems are listed in one error.
const MAX_ERRORS: usize = 8;

/// Checks `args` against `schema`. `Err` lists the problems, each naming its path.
pub fn validate(schema: &Value, args: &Value) -> Result<(), String> {
    let mut errors = Vec::new();
    check(schema, args, &mut Vec::new(), &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn push(errors: &mut Vec<String>, path: &[Seg], msg: String) {
    if errors.len() >= MAX_ERRORS {
        return;
    }
    if path.is_empty() {
        errors.push(msg);
    } else {
        errors.push(format!("`{}`: {msg}", path_text(path)));
    }
}

/// The value in compact JSON, shortened to about 60 characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        return text;
    }
    let cut: String = text.chars().take(57).collect();
    format!("{cut}...")
}

fn is_integer(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.is_i64() || n.is_u64())
}

fn matches_type(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        // An unknown type name constrains nothing (unknown keywords are ignored too).
        _ => true,
    }
}

fn type_noun(name: &str) -> &'static str {
    match name {
        "object" => "an object",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "array" => "an array",
        "null" => "null",
        _ => "a value",
    }
}

/// How a value that has the wrong type is described: `a string "abc"`, `an array`, `-3`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => format!("a string {}", short(value)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn check(schema: &Value, value: &Value, path: &mut Vec<Seg>, errors: &mut Vec<String>) {
    if errors.len() >= MAX_ERRORS {
        return;
    }
    let s = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => {
            push(errors, path, "no value is allowed here".into());
            return;
        }
        Value::Object(s) => s,
        // Not a schema: constrains nothing.
        _ => return,
    };

    // type: a mismatch makes the other keywords' complaints noise, so stop there.
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| matches_type(t, value)) {
        let nouns: Vec<String> = types.iter().map(|t| type_noun(t).to_owned()).collect();
        push(
            errors,
            path,
            format!("expected {}, got {}", join_or(&nouns), describe(value)),
        );
        return;
    }

    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(value)
    {
        let listed: Vec<String> = options.iter().map(short).collect();
        push(
            errors,
            path,
            format!(
                "expected one of {}, got {}",
                listed.join(", "),
                short(value)
            ),
        );
    }
    if let Some(expected) = s.get("const")
        && expected != value
    {
        push(
            errors,
            path,
            format!("expected {}, got {}", short(expected), short(value)),
        );
    }

    match value {
        Value::Number(n) => check_number(s, n, &types, path, errors),
        Value::String(text) => check_string(s, text, path, errors),
        Value::Array(items) => check_array(s, items, path, errors),
        Value::Object(map) => check_object(s, map, path, errors),
        _ => {}
    }

    check_combinators(s, value, path, errors);
}

fn check_number(
    s: &Map<String, Value>,
    n: &serde_json::Number,
    types: &[&str],
    path: &[Seg],
    errors: &mut Vec<String>,
) {
    let Some(v) = n.as_f64() else { return };
    let noun = if types.contains(&"integer") && !types.contains(&"number") {
        "an integer"
    } else {
        "a number"
    };
    let bound = |key: &str| {
        s.get(key)
            .and_then(|b| b.as_f64().map(|f| (f, b.to_string())))
    };
    // Draft 4 wrote exclusiveness as a boolean beside minimum/maximum.
    let min_exclusive_flag = s.get("exclusiveMinimum") == Some(&Value::Bool(true));
    let max_exclusive_flag = s.get("exclusiveMaximum") == Some(&Value::Bool(true));

    if let Some((min, text)) = bound("minimum") {
        if min_exclusive_flag && v <= min {
            push(errors, path, format!("expected {noun} > {text}, got {n}"));
        } else if v < min {
            push(errors, path, format!("expected {noun} >= {text}, got {n}"));
        }
    }
    if let Some((max, text)) = bound("maximum") {
        if max_exclusive_flag && v >= max {
            push(errors, path, format!("expected {noun} < {text}, got {n}"));
        } else if v > max {
            push(errors, path, format!("expected {noun} <= {text}, got {n}"));
        }
    }
    if let Some((min, text)) = bound("exclusiveMinimum")
        && v <= min
    {
        push(errors, path, format!("expected {noun} > {text}, got {n}"));
    }
    if let Some((max, text)) = bound("exclusiveMaximum")
        && v >= max
    {
        push(errors, path, format!("expected {noun} < {text}, got {n}"));
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

fn check_string(s: &Map<String, Value>, text: &str, path: &[Seg], errors: &mut Vec<String>) {
    let len = text.chars().count() as u64;
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        push(
            errors,
            path,
            format!(
                "expected a string of at least {}, got {}",
                plural(min, "character", "characters"),
                short(&Value::String(text.to_owned()))
            ),
        );
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        push(
            errors,
            path,
            format!(
                "expected a string of at most {}, got one of {len}",
                plural(max, "character", "characters")
            ),
        );
    }
}

fn check_array(
    s: &Map<String, Value>,
    items: &[Value],
    path: &mut Vec<Seg>,
    errors: &mut Vec<String>,
) {
    let len = items.len() as u64;
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        push(
            errors,
            path,
            format!(
                "expected at least {}, got {len}",
                plural(min, "item", "items")
            ),
        );
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        push(
            errors,
            path,
            format!(
                "expected at most {}, got {len}",
                plural(max, "item", "items")
            ),
        );
    }
    match s.get("items") {
        Some(Value::Array(by_position)) => {
            for (i, (item, item_schema)) in items.iter().zip(by_position).enumerate() {
                path.push(Seg::Index(i));
                check(item_schema, item, path, errors);
                path.pop();
            }
        }
        Some(item_schema) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                check(item_schema, item, path, errors);
                path.pop();
            }
        }
        None => {}
    }
}

fn check_object(
    s: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &mut Vec<Seg>,
    errors: &mut Vec<String>,
) {
    if let Some(Value::Array(required)) = s.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                push(errors, path, format!("missing required property `{name}`"));
            }
        }
    }
    let properties = s.get("properties").and_then(Value::as_object);
    for (key, item) in map {
        let declared = properties.and_then(|p| p.get(key));
        match declared {
            Some(prop_schema) => {
                path.push(Seg::Key(key.clone()));
                check(prop_schema, item, path, errors);
                path.pop();
            }
            None => {
                if s.contains_key("patternProperties") {
                    continue;
                }
                match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<String> = properties
                            .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                            .unwrap_or_default();
                        let hint = if known.is_empty() {
                            "no properties are allowed".to_owned()
                        } else {
                            format!("allowed: {}", known.join(", "))
                        };
                        push(errors, path, format!("unknown property `{key}` ({hint})"));
                    }
                    Some(extra @ Value::Object(_)) => {
                        path.push(Seg::Key(key.clone()));
                        check(extra, item, path, errors);
                        path.pop();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Errors `schema` finds in `value`, without touching the caller's list.
fn errors_of(schema: &Value, value: &Value, path: &mut Vec<Seg>) -> Vec<String> {
    let mut errs = Vec::new();
    check(schema, value, path, &mut errs);
    errs
}

fn check_combinators(
    s: &Map<String, Value>,
    value: &Value,
    path: &mut Vec<Seg>,
    errors: &mut Vec<String>,
) {
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(sub, value, path, errors);
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf") {
        let mut first_failure = None;
        let mut matched = false;
        for sub in any {
            let errs = errors_of(sub, value, path);
            if errs.is_empty() {
                matched = true;
                break;
            }
            first_failure.get_or_insert(errs);
        }
        if !matched && !any.is_empty() {
            let why = first_failure.map(|e| e.join("; ")).unwrap_or_default();
            push(
                errors,
                path,
                format!(
                    "matches none of the {} allowed forms (first: {why})",
                    any.len()
                ),
            );
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let matching = one
            .iter()
            .filter(|sub| errors_of(sub, value, path).is_empty())
            .count();
        if matching != 1 && !one.is_empty() {
            push(
                errors,
                path,
                format!(
                    "must match exactly one of {} forms, matches {matching}",
                    one.len()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn shell_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "command": {"type": "string", "minLength": 1},
                "timeout_sec": {"type": "integer", "minimum": 1}
            },
            "required": ["command"],
            "additionalProperties": false
        })
    }

    #[test]
    fn messages_name_the_path_and_the_problem() {
        let s = shell_schema();
        assert_eq!(validate(&s, &json!({"command": "ls"})), Ok(()));
        assert_eq!(
            validate(&s, &json!({"command": "ls", "timeout_sec": -3})),
            Err("`timeout_sec`: expected an integer >= 1, got -3".into())
        );
        assert_eq!(
            validate(&s, &json!({})),
            Err("missing required property `command`".into())
        );
        assert_eq!(
            validate(&s, &json!({"command": "ls", "x": 1})),
            Err("unknown property `x` (allowed: `command`, `timeout_sec`)".into())
        );
        assert_eq!(
            validate(&s, &json!({"command": 5})),
            Err("`command`: expected a string, got 5".into())
        );
        assert_eq!(
            validate(&s, &json!({"command": ""})),
            Err("`command`: expected a string of at least 1 character, got \"\"".into())
        );
        assert_eq!(
            validate(&s, &json!({"command": "ls", "timeout_sec": 2.5})),
            Err("`timeout_sec`: expected an integer, got 2.5".into())
        );
        assert_eq!(
            validate(&s, &json!([1])),
            Err("expected an object, got an array of 1 items".into())
        );
    }

    #[test]
    fn all_problems_are_listed() {
        let err =
            validate(&shell_schema(), &json!({"timeout_sec": 0, "y": true})).expect_err("invalid");
        assert!(err.contains("missing required property `command`"), "{err}");
        assert!(
            err.contains("`timeout_sec`: expected an integer >= 1, got 0"),
            "{err}"
        );
        assert!(err.contains("unknown property `y`"), "{err}");
        assert_eq!(err.matches("; ").count(), 2, "{err}");
    }

    #[test]
    fn nested_paths_and_items() {
        let s = json!({
            "type": "object",
            "properties": {
                "checks": {
                    "type": "array", "minItems": 1, "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}},
                        "required": ["port"]
                    }
                }
            }
        });
        assert_eq!(validate(&s, &json!({"checks": [{"port": 80}]})), Ok(()));
        assert_eq!(
            validate(&s, &json!({"checks": [{"port": 80}, {"port": 70000}]})),
            Err("`checks[1].port`: expected an integer <= 65535, got 70000".into())
        );
        assert_eq!(
            validate(&s, &json!({"checks": [{"port": 80}, {}]})),
            Err("`checks[1]`: missing required property `port`".into())
        );
        assert_eq!(
            validate(&s, &json!({"checks": []})),
            Err("`checks`: expected at least 1 item, got 0".into())
        );
        assert_eq!(
            validate(
                &s,
                &json!({"checks": [{"port": 1}, {"port": 2}, {"port": 3}, {"port": 4}]})
            ),
            Err("`checks`: expected at most 3 items, got 4".into())
        );
    }

    #[test]
    fn enum_const_type_arrays_and_exclusive_bounds() {
        let s = json!({
            "type": "object",
            "properties": {
                "sort_by": {"type": "string", "enum": ["cpu", "memory"]},
                "mode": {"const": "fast"},
                "note": {"type": ["string", "null"], "maxLength": 3},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "old": {"type": "number", "minimum": 0, "exclusiveMinimum": true}
            },
            "additionalProperties": {"type": "boolean"}
        });
        assert_eq!(
            validate(
                &s,
                &json!({"sort_by": "cpu", "mode": "fast", "note": null, "ratio": 0.5, "flag": true})
            ),
            Ok(())
        );
        assert_eq!(
            validate(&s, &json!({"sort_by": "disk"})),
            Err("`sort_by`: expected one of \"cpu\", \"memory\", got \"disk\"".into())
        );
        assert_eq!(
            validate(&s, &json!({"mode": "slow"})),
            Err("`mode`: expected \"fast\", got \"slow\"".into())
        );
        assert_eq!(
            validate(&s, &json!({"note": 1})),
            Err("`note`: expected a string or null, got 1".into())
        );
        assert_eq!(
            validate(&s, &json!({"note": "abcd"})),
            Err("`note`: expected a string of at most 3 characters, got one of 4".into())
        );
        assert_eq!(
            validate(&s, &json!({"ratio": 1})),
            Err("`ratio`: expected a number < 1, got 1".into())
        );
        assert_eq!(
            validate(&s, &json!({"old": 0})),
            Err("`old`: expected a number > 0, got 0".into())
        );
        assert_eq!(
            validate(&s, &json!({"flag": "yes"})),
            Err("`flag`: expected a boolean, got a string \"yes\"".into())
        );
    }

    #[test]
    fn unknown_keywords_and_pattern_are_ignored() {
        let s = json!({
            "type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[a-z]+$", "format": "hostname", "x-custom": 1}},
            "$comment": "whatever"
        });
        assert_eq!(validate(&s, &json!({"name": "NOT LOWER"})), Ok(()));
        // Properties not declared are allowed when additionalProperties is absent.
        assert_eq!(validate(&s, &json!({"other": 1})), Ok(()));
        // patternProperties turns off the additionalProperties check rather than guessing.
        let pp = json!({"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": false});
        assert_eq!(validate(&pp, &json!({"xa": 1, "b": 2})), Ok(()));
    }

    #[test]
    fn boolean_schemas_and_combinators() {
        assert_eq!(validate(&json!(true), &json!({"a": 1})), Ok(()));
        let s = json!({"type": "object", "properties": {"never": false}});
        assert_eq!(
            validate(&s, &json!({"never": 1})),
            Err("`never`: no value is allowed here".into())
        );
        let any = json!({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]});
        assert_eq!(validate(&any, &json!("x")), Ok(()));
        assert_eq!(validate(&any, &json!(3)), Ok(()));
        let err = validate(&any, &json!(-1)).expect_err("neither");
        assert!(
            err.starts_with("matches none of the 2 allowed forms"),
            "{err}"
        );
        let one = json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
        assert_eq!(validate(&one, &json!(1.5)), Ok(()));
        assert!(validate(&one, &json!(1)).is_err());
        let all = json!({"allOf": [{"minimum": 1}, {"maximum": 2}]});
        assert_eq!(validate(&all, &json!(2)), Ok(()));
        assert!(validate(&all, &json!(3)).is_err());
    }

    #[test]
    fn error_count_is_bounded() {
        let s = json!({"type": "object", "additionalProperties": false});
        let args: Map<String, Value> = (0..50).map(|i| (format!("k{i}"), json!(i))).collect();
        let err = validate(&s, &Value::Object(args)).expect_err("invalid");
        assert_eq!(err.split("; ").count(), MAX_ERRORS);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Schemas built from the supported keywords, with arbitrary (possibly odd) values.
    fn arb_schema() -> impl Strategy<Value = Value> {
        let keyword = prop_oneof![
            prop_oneof![
                Just("object"),
                Just("string"),
                Just("integer"),
                Just("number"),
                Just("boolean"),
                Just("array"),
                Just("null")
            ]
            .prop_map(|t| ("type".to_owned(), json!(t))),
            arb_json().prop_map(|v| ("minimum".to_owned(), v)),
            arb_json().prop_map(|v| ("maxLength".to_owned(), v)),
            arb_json().prop_map(|v| ("enum".to_owned(), v)),
            arb_json().prop_map(|v| ("required".to_owned(), v)),
            arb_json().prop_map(|v| ("additionalProperties".to_owned(), v)),
            arb_json().prop_map(|v| ("items".to_owned(), v)),
            arb_json().prop_map(|v| ("properties".to_owned(), v)),
            arb_json().prop_map(|v| ("anyOf".to_owned(), v)),
        ];
        prop::collection::vec(keyword, 0..5)
            .prop_map(|kws| Value::Object(kws.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_schemas_and_values(schema in arb_schema(), value in arb_json()) {
            let _ = validate(&schema, &value);
        }

        #[test]
        fn integer_bounds_agree_with_arithmetic(min in -1000i64..1000, span in 0i64..1000, v in -3000i64..3000) {
            let max = min + span;
            let s = json!({"type": "integer", "minimum": min, "maximum": max});
            let result = validate(&s, &json!(v));
            prop_assert_eq!(result.is_ok(), (min..=max).contains(&v), "{:?}", result);
            if v < min {
                prop_assert_eq!(result, Err(format!("expected an integer >= {min}, got {v}")));
            } else if v > max {
                prop_assert_eq!(result, Err(format!("expected an integer <= {max}, got {v}")));
            }
        }

        #[test]
        fn string_lengths_count_characters(text in "\\PC{0,12}", min in 0u64..8, max in 0u64..12) {
            let s = json!({"type": "string", "minLength": min, "maxLength": max});
            let len = text.chars().count() as u64;
            prop_assert_eq!(validate(&s, &json!(text)).is_ok(), len >= min && len <= max);
        }

        #[test]
        fn a_wrong_property_is_named_by_its_path(key in "[a-z]{1,8}", value in arb_json()) {
            let s = json!({
                "type": "object",
                "properties": {"outer": {"type": "object", "properties": {key.clone(): {"type": "string"}}}}
            });
            let args = json!({"outer": {key.clone(): value.clone()}});
            let result = validate(&s, &args);
            if value.is_string() {
                prop_assert!(result.is_ok());
            } else {
                let err = result.expect_err("not a string");
                let expected_prefix = format!("`outer.{key}`: expected a string, got ");
                prop_assert!(err.starts_with(&expected_prefix), "{}", err);
            }
        }

        #[test]
        fn closed_objects_accept_exactly_their_declared_keys(keys in prop::collection::btree_set("[a-c]", 0..4)) {
            let s = json!({
                "type": "object",
                "properties": {"a": {}, "b": {}},
                "additionalProperties": false
            });
            let args: Map<String, Value> = keys.iter().map(|k| (k.clone(), json!(1))).collect();
            let ok = validate(&s, &Value::Object(args)).is_ok();
            prop_assert_eq!(ok, !keys.contains("c"));
        }
    }
}
