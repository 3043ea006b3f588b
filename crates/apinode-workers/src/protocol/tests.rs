use super::*;
use serde_json::json;

#[test]
fn frames_carry_their_length_and_the_payload() {
    let frame = frame("args", &json!({"a": 1}), b'{').unwrap();
    assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
    assert_eq!(&frame[4..], br#"{"args":{"a":1}}"#);
}

#[test]
fn arguments_must_be_an_object_and_records_an_array() {
    assert!(matches!(
        frame("args", &json!([1]), b'{'),
        Err(Error::InvalidCall { .. })
    ));
    assert!(matches!(
        frame("records", &json!({}), b'['),
        Err(Error::InvalidCall { .. })
    ));
}

#[test]
fn a_null_answer_is_an_answer() {
    match parse_run(br#"{"ok":null}"#) {
        Parsed::Answer(raw) => assert_eq!(raw.get(), "null"),
        _ => panic!("expected an answer"),
    }
}

#[test]
fn user_errors_keep_type_message_and_status() {
    let reply =
        br#"{"error":{"type":"ValueError","message":"bad","traceback":"tb","http_status":422}}"#;
    match parse_run(reply) {
        Parsed::UserError(Error::UserCode {
            exception,
            message,
            traceback,
            http_status,
        }) => {
            assert_eq!(
                (exception.as_str(), message.as_str(), traceback.as_str()),
                ("ValueError", "bad", "tb")
            );
            assert_eq!(http_status, Some(422));
        }
        _ => panic!("expected a user error"),
    }
}

#[test]
fn predictions_become_rows() {
    let reply = br#"{"ok":{"predictions":["a",null],"classes":["a","b"],
        "probas":[[0.75,0.25],[null,null]],"custom_keys":[{"k":1},null]}}"#;
    let Parsed::Answer(p) = parse_predict(reply, 2) else {
        panic!("expected an answer")
    };
    assert_eq!(p.classes, ["a", "b"]);
    assert_eq!(p.rows[0].prediction, Some(json!("a")));
    assert_eq!(p.rows[0].probas, [Some(0.75), Some(0.25)]);
    assert_eq!(p.rows[0].custom_keys.as_ref().unwrap()["k"], json!(1));
    assert_eq!(p.rows[1].prediction, None);
    assert_eq!(p.rows[1].custom_keys, None);
    assert_eq!(
        p.probas(0).collect::<Vec<_>>(),
        [("a", Some(0.75)), ("b", Some(0.25))]
    );
}

#[test]
fn a_count_mismatch_is_a_broken_worker() {
    assert!(matches!(
        parse_predict(br#"{"ok":{"predictions":[1]}}"#, 2),
        Parsed::Broken(_)
    ));
    assert!(matches!(parse_run(b"{\"ok\":"), Parsed::Broken(_)));
}
