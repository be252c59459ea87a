use super::*;
use crate::schema::SchemaConfig;

fn parser() -> EventParser {
    EventParser::new(Schema::default_schema())
}

const GOOD: &str = r#"{"transaction_id":"t1","account_id":"a1","merchant_id":"m1","merchant_category":"Grocery","amount":12.5,"currency":"eur","country":"de","channel":"POS","event_time":"2026-11-01T10:00:00.250+01:00","is_fraud":0,"extra":{"x":[1,2]}}"#;

fn parse(p: &EventParser, s: &str) -> Result<Vec<Value<'static>>, Rejection> {
    let mut out = Vec::new();
    p.parse(s.as_bytes(), &mut out)?;
    Ok(out.into_iter().map(own).collect())
}

fn own(v: Value<'_>) -> Value<'static> {
    match v {
        Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
        Value::Null => Value::Null,
        Value::Double(x) => Value::Double(x),
        Value::Long(x) => Value::Long(x),
        Value::Bool(x) => Value::Bool(x),
        Value::Timestamp(x) => Value::Timestamp(x),
    }
}

fn kind(p: &EventParser, s: &str) -> RejectKind {
    parse(p, s).unwrap_err().kind
}

#[test]
fn cleans_a_good_event() {
    let v = parse(&parser(), GOOD).unwrap();
    assert_eq!(v[0], Value::Str("t1".into()));
    assert_eq!(v[3], Value::Str("grocery".into()));
    assert_eq!(v[4], Value::Double(12.5));
    assert_eq!(v[5], Value::Str("EUR".into()));
    assert_eq!(v[6], Value::Str("DE".into()));
    assert_eq!(v[7], Value::Str("pos".into()));
    // 10:00:00.250+01:00 is 09:00:00.250Z
    assert_eq!(v[8], Value::Timestamp(1_793_523_600_250_000));
    assert_eq!(v[9], Value::Bool(false));
}

#[test]
fn strings_without_normalisation_are_borrowed() {
    let p = parser();
    let payload = GOOD.replace("Grocery", "grocery");
    let mut out = Vec::new();
    p.parse(payload.as_bytes(), &mut out).unwrap();
    assert!(matches!(&out[0], Value::Str(Cow::Borrowed("t1"))));
    assert!(matches!(&out[3], Value::Str(Cow::Borrowed("grocery"))));
}

#[test]
fn optional_fields_may_be_absent_or_null() {
    let p = parser();
    let v = parse(
        &p,
        r#"{"transaction_id":"t","account_id":"a","merchant_category":"x","amount":0,"currency":"USD","event_time":1700000000123,"country":null}"#,
    )
    .unwrap();
    assert_eq!(v[2], Value::Null);
    assert_eq!(v[4], Value::Double(0.0));
    assert_eq!(v[6], Value::Null);
    assert_eq!(v[8], Value::Timestamp(1_700_000_000_123_000));
    assert_eq!(v[9], Value::Null);
}

#[test]
fn labels_accept_the_four_spellings() {
    let p = parser();
    for (text, want) in [("0", false), ("1", true), ("false", false), ("true", true)] {
        let v = parse(&p, &GOOD.replace(r#""is_fraud":0"#, &format!(r#""is_fraud":{text}"#))).unwrap();
        assert_eq!(v[9], Value::Bool(want), "{text}");
    }
    assert_eq!(kind(&p, &GOOD.replace(r#""is_fraud":0"#, r#""is_fraud":2"#)), RejectKind::WrongType);
    assert_eq!(kind(&p, &GOOD.replace(r#""is_fraud":0"#, r#""is_fraud":"yes""#)), RejectKind::WrongType);
}

#[test]
fn each_kind_of_bad_event_is_named() {
    let p = parser();
    let cases = [
        ("{\"transaction_id\":", RejectKind::InvalidJson),
        ("not json", RejectKind::InvalidJson),
        ("", RejectKind::InvalidJson),
        (&format!("{GOOD} trailing"), RejectKind::InvalidJson),
        ("[1,2]", RejectKind::NotObject),
        ("42", RejectKind::NotObject),
        (&GOOD.replace(r#""amount":12.5,"#, ""), RejectKind::MissingField),
        (&GOOD.replace(r#""amount":12.5"#, r#""amount":null"#), RejectKind::NullField),
        (&GOOD.replace(r#""amount":12.5"#, r#""amount":"12.5""#), RejectKind::WrongType),
        (&GOOD.replace(r#""account_id":"a1""#, r#""account_id":7"#), RejectKind::WrongType),
        (&GOOD.replace(r#""amount":12.5"#, r#""amount":-0.01"#), RejectKind::OutOfRange),
        (&GOOD.replace(r#""amount":12.5"#, r#""amount":1e999"#), RejectKind::OutOfRange),
        (&GOOD.replace("2026-11-01T10:00:00.250+01:00", "yesterday"), RejectKind::BadTime),
        (&GOOD.replace("2026-11-01T10:00:00.250+01:00", "2026-11-01T10:00:00"), RejectKind::BadTime),
        (&GOOD.replace(r#""2026-11-01T10:00:00.250+01:00""#, "1.5"), RejectKind::BadTime),
        (&GOOD.replace(r#""2026-11-01T10:00:00.250+01:00""#, "true"), RejectKind::WrongType),
        (&GOOD.replace(r#""transaction_id":"t1""#, r#""transaction_id":"  ""#), RejectKind::BadFormat),
        (&GOOD.replace(r#""currency":"eur""#, r#""currency":"euro""#), RejectKind::BadFormat),
    ];
    for (payload, want) in cases {
        let r = parse(&p, payload).unwrap_err();
        assert_eq!(r.kind, want, "{payload} -> {r}");
        assert!(r.to_string().starts_with(want.code()), "{r}");
    }
}

#[test]
fn reasons_name_the_field_and_the_expected_form() {
    let p = parser();
    let r = parse(&p, &GOOD.replace(r#""amount":12.5"#, r#""amount":"12.5""#)).unwrap_err();
    assert_eq!(r.to_string(), "wrong_type: field `amount`: expected a number, found a string");
    let r = parse(&p, &GOOD.replace(r#""amount":12.5,"#, "")).unwrap_err();
    assert_eq!(r.to_string(), "missing_field: required field `amount` is missing");
}

#[test]
fn the_last_of_repeated_keys_wins() {
    let p = parser();
    let v = parse(&p, &GOOD.replace(r#""amount":12.5"#, r#""amount":-1,"amount":3"#)).unwrap();
    assert_eq!(v[4], Value::Double(3.0));
}

#[test]
fn escaped_strings_are_decoded() {
    let p = parser();
    let v = parse(&p, &GOOD.replace(r#""m1""#, r#""m\u00e9\n""#)).unwrap();
    assert_eq!(v[2], Value::Str("mé\n".into()));
}

#[test]
fn invalid_utf8_is_invalid_json() {
    let p = parser();
    let mut bytes = GOOD.as_bytes().to_vec();
    let at = GOOD.find("m1").unwrap();
    bytes[at] = 0xff;
    let mut out = Vec::new();
    assert_eq!(p.parse(&bytes, &mut out).unwrap_err().kind, RejectKind::InvalidJson);
}

#[test]
fn blank_case_and_length_checks_hold_for_ascii_and_other_text() {
    let p = parser();
    let with = |field: &str, old: &str, new: &str| {
        GOOD.replace(&format!(r#""{field}":"{old}""#), &format!(r#""{field}":"{new}""#))
    };
    // Blank: empty, ASCII whitespace (vertical tab included) and other Unicode white space.
    for blank in ["", " ", "\\t\\n", "\\u000b", "\\u00a0\\u2003"] {
        assert_eq!(kind(&p, &with("transaction_id", "t1", blank)), RejectKind::BadFormat, "{blank:?}");
    }
    assert!(parse(&p, &with("transaction_id", "t1", " t1")).is_ok());
    assert!(parse(&p, &with("transaction_id", "t1", "\\u00e9t\\u00e9")).is_ok());
    // Case, ASCII and not.
    let v = parse(&p, &with("merchant_category", "Grocery", "\\u00c9PICERIE")).unwrap();
    assert_eq!(v[3], Value::Str("épicerie".into()));
    let v = parse(&p, &with("currency", "eur", "\\u00e9ur")).unwrap();
    assert_eq!(v[5], Value::Str("ÉUR".into()));
    // Length counts characters, not bytes, of the value as sent (spaces included).
    assert_eq!(kind(&p, &with("country", "de", " de")), RejectKind::BadFormat);
    assert!(parse(&p, &with("country", "de", "\\u00e9\\u00e9")).is_ok());
    assert_eq!(kind(&p, &with("country", "de", "d\\u00e9e")), RejectKind::BadFormat);
}

#[test]
fn keys_match_by_exact_bytes_in_any_order_and_spelling() {
    let p = parser();
    // Keys out of schema order, and one written with an escape.
    let shuffled = r#"{"is_fraud":1,"event_time":"2026-11-01T00:00:00Z","currency":"EUR","amount":1,"merchant_category":"x","account_id":"a","transaction\u005fid":"t9"}"#;
    let v = parse(&p, shuffled).unwrap();
    assert_eq!(v[0], Value::Str("t9".into()));
    assert_eq!(v[9], Value::Bool(true));
    // Same length, one byte apart (at the start, the middle, the end): not the field.
    for near in ["transaction_iD", "xransaction_id", "transactiom_id", "account_iD", "merchant_categorz"] {
        let payload = GOOD.replace(r#""transaction_id""#, &format!(r#""{near}""#));
        let payload = payload.replace(r#""account_id""#, r#""account""#);
        assert_eq!(kind(&p, &payload), RejectKind::MissingField, "{near}");
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let p = parser();
        let mut out = Vec::new();
        match p.parse(&bytes, &mut out) {
            Ok(()) => proptest::prop_assert_eq!(out.len(), p.schema().fields().len()),
            Err(r) => proptest::prop_assert!(!r.detail.is_empty()),
        }
    }

    #[test]
    fn mutated_events_never_panic(cut in 0usize..GOOD.len(), byte in proptest::num::u8::ANY) {
        let p = parser();
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[cut] = byte;
        let mut out = Vec::new();
        match p.parse(&bytes, &mut out) {
            Ok(()) => proptest::prop_assert_eq!(out.len(), p.schema().fields().len()),
            Err(r) => proptest::prop_assert!(!r.detail.is_empty()),
        }
        let _ = p.parse(&bytes[..cut], &mut out);
    }
}

#[test]
fn a_schema_wider_than_the_stack_slots_parses_every_field() {
    let mut config = SchemaConfig::default();
    let extra = STACK_SLOTS + 8;
    for i in 0..extra {
        let mut field = config.fields[0].clone();
        field.name = format!("extra_{i}");
        field.required = i % 2 == 0;
        config.fields.push(field);
    }
    let schema = Schema::new(config).unwrap();
    let base = schema.fields().len() - extra;
    let p = EventParser::new(schema);
    // Odd extras are optional and left out; even ones carry their index.
    let fields: String = (0..extra).step_by(2).map(|i| format!(r#","extra_{i}":"v{i}""#)).collect();
    let event = format!("{{{},{}", &fields[1..], &GOOD[1..]);
    let v = parse(&p, &event).unwrap();
    assert_eq!(v.len(), base + extra);
    for i in 0..extra {
        let want = if i % 2 == 0 { Value::Str(format!("v{i}").into()) } else { Value::Null };
        assert_eq!(v[base + i], want, "extra_{i}");
    }
    assert_eq!(v[0], Value::Str("t1".into()));
    // A required extra that is missing is named.
    let missing = event.replace(r#""extra_4":"v4","#, "");
    let err = parse(&p, &missing).unwrap_err();
    assert_eq!(err.kind, RejectKind::MissingField);
    assert!(err.detail.contains("extra_4"), "{err}");
}

fn chrono_micros(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros())
}

#[test]
fn the_common_time_form_is_read_as_chrono_reads_it() {
    for s in [
        "2026-11-01T00:00:00.187Z",
        "2026-11-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999999Z",
        "0000-01-01T00:00:00Z",
        "0000-02-29T12:00:00.5Z",
        "9999-12-31T23:59:59.123456789Z",
        "2000-02-29T00:00:00Z",
        "2024-02-29T08:30:15.000001Z",
    ] {
        assert_eq!(utc_fast(s.as_bytes()), chrono_micros(s), "{s}");
        assert!(utc_fast(s.as_bytes()).is_some(), "{s} is the common form");
    }
    // Left to chrono: other separators, offsets, a leap second, more than 9 digits of fraction.
    for s in [
        "2026-11-01t00:00:00Z",
        "2026-11-01 00:00:00Z",
        "2026-11-01T00:00:00z",
        "2026-11-01T00:00:00+01:00",
        "2016-12-31T23:59:60Z",
        "2026-11-01T00:00:00.1234567891Z",
    ] {
        assert_eq!(utc_fast(s.as_bytes()), None, "{s}");
        assert_eq!(parse_rfc3339(s), chrono_micros(s), "{s}");
    }
    // Refused by both.
    for s in [
        "2026-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-01T24:00:00Z",
        "2026-11-01T00:00:00.Z",
        "2026-11-0aT00:00:00Z",
    ] {
        assert_eq!((utc_fast(s.as_bytes()), chrono_micros(s)), (None, None), "{s}");
    }
}

proptest::proptest! {
    #[test]
    fn times_read_directly_are_the_times_chrono_reads(
        year in 0i64..10_000, month in 0i64..14, day in 0i64..33,
        hour in 0i64..26, minute in 0i64..62, second in 0i64..62,
        fraction in proptest::option::of("[0-9]{0,11}"),
        zone in proptest::sample::select(vec!["Z", "z", "+00:00", "-03:30", ""]),
    ) {
        let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
        let s = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{zone}");
        let fast = utc_fast(s.as_bytes());
        if fast.is_some() {
            proptest::prop_assert_eq!(fast, chrono_micros(&s), "{}", s);
        }
        proptest::prop_assert_eq!(parse_rfc3339(&s), chrono_micros(&s), "{}", s);
    }

    #[test]
    fn any_text_reads_as_chrono_reads_it(s in "[0-9TZ:.+-]{18,31}") {
        proptest::prop_assert_eq!(parse_rfc3339(&s), chrono_micros(&s), "{}", s);
    }
}

/// The slots as serde_json reads `text`, or its reason.
fn slots_read_any(schema: &Schema, text: &str) -> Result<String, Rejection> {
    let mut slots: Vec<Raw<'_>> =
        std::iter::repeat_with(|| Raw::Missing).take(schema.fields().len()).collect();
    read_any(text, schema, &mut slots)?;
    Ok(format!("{slots:?}"))
}

/// The slots as the flat reader reads `text`, when it takes it.
fn slots_flat(schema: &Schema, text: &str) -> Option<String> {
    let mut slots: Vec<Raw<'_>> =
        std::iter::repeat_with(|| Raw::Missing).take(schema.fields().len()).collect();
    flat::read(text, schema, &flat::Keys::new(schema), &mut slots)?;
    Some(format!("{slots:?}"))
}

#[test]
fn the_flat_reader_takes_generated_events_and_reads_them_as_serde_json_does() {
    let schema = Schema::default_schema();
    let mut generator = crate::generator::Generator::new(
        &schema,
        crate::generator::GeneratorConfig {
            seed: 5,
            count: 2_000,
            malformed_rate: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    for payload in generator.payloads(2_000) {
        let text = std::str::from_utf8(&payload).unwrap();
        let flat = slots_flat(&schema, text);
        assert!(flat.is_some(), "the flat reader should take {text}");
        assert_eq!(flat, Some(slots_read_any(&schema, text).unwrap()), "{text}");
    }
    // Keys out of order, repeated and unknown; spaces; every kind of simple value.
    let text = " {\"amount\" : -0.5 ,\"x\":null, \"account_id\":\"a\u{e9}\",\"amount\":7,\"is_fraud\":true,\"currency\":\"\",\"country\":false,\"merchant_id\":-12} \n";
    assert_eq!(slots_flat(&schema, text), Some(slots_read_any(&schema, text).unwrap()));
}

#[test]
fn the_flat_reader_leaves_other_shapes_to_serde_json() {
    let schema = Schema::default_schema();
    for text in [
        r#"{"account_id":"a\"b"}"#,
        r#"{"account_id":"a\u0041"}"#,
        "{\"account_id\":\"a\tb\"}",
        r#"{"amount":1e3}"#,
        r#"{"amount":-0}"#,
        r#"{"amount":01}"#,
        r#"{"amount":1.}"#,
        r#"{"amount":.5}"#,
        r#"{"amount":18446744073709551616}"#,
        r#"{"amount":9007199254740993.5}"#,
        r#"{"amount":0.12345678901234567890123}"#,
        r#"{"amount":-9223372036854775809}"#,
        r#"{"extra":{"x":[1,2]}}"#,
        r#"{"extra":[1]}"#,
        r#"{"amount":1,}"#,
        r#"{"amount":1} x"#,
        r#"{"amount":tru}"#,
        r#"{"amount":truex}"#,
        r#"[1]"#,
        r#""#,
        r#"{"amount" 1}"#,
    ] {
        assert_eq!(slots_flat(&schema, text), None, "{text}");
    }
}

/// A JSON-like value: mostly valid simple values, with the forms the flat reader leaves alone.
fn value_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{0,24})?([eE][+-]?[0-9]{1,3})?",
        "-?[0-9]{1,25}",
        "\"([a-zA-Z0-9 é€_-]|\\\\[\"nt/u]|\\\\u00[0-9a-f]{2}|\t){0,20}\"",
        proptest::sample::select(vec![
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "{}",
            "[1,{\"a\":2}]",
            "{\"k\":\"v\"}"
        ])
        .prop_map(String::from),
    ]
}

proptest::proptest! {
    // About one text in six is of the flat shape: enough cases that hundreds are compared.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
    #[test]
    fn the_flat_reader_reads_every_text_it_takes_as_serde_json_does(
        members in proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "transaction_id", "account_id", "amount", "is_fraud", "event_time", "channel",
                    "other", "amount\\u0000", "amo\\\"unt", "",
                ]),
                value_text(),
                proptest::sample::select(vec!["", " ", "\n\t", "\r"]),
            ),
            0..8,
        ),
        cut in proptest::option::of(0usize..200),
        byte in proptest::sample::select(vec![b'"', b'\\', b',', b'}', b':', b' ', 0x01, b'0', b'.', b'e']),
    ) {
        let schema = Schema::default_schema();
        let body: Vec<String> =
            members.iter().map(|(key, value, space)| format!("{space}\"{key}\"{space}:{space}{value}{space}")).collect();
        let mut text = format!("{{{}}}", body.join(","));
        if let Some(at) = cut.filter(|&at| at < text.len() && text.is_char_boundary(at) && text.is_char_boundary(at + 1)) {
            text.replace_range(at..at + 1, std::str::from_utf8(&[byte]).unwrap());
        }
        if let Some(flat) = slots_flat(&schema, &text) {
            let any = slots_read_any(&schema, &text);
            proptest::prop_assert!(any.is_ok(), "flat took {:?}, serde_json refused it: {:?}", text, any);
            proptest::prop_assert_eq!(Some(flat), any.ok(), "{:?}", text);
        }
    }
}
