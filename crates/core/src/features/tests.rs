use super::*;
use crate::event::EventParser;
use crate::schema::SchemaConfig;

fn rows(schema: &Schema, events: &[&str]) -> Vec<Vec<Value<'static>>> {
    let parser = EventParser::new(schema.clone());
    events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            let text: &'static str = Box::leak(e.to_string().into_boxed_str());
            parser.parse(text.as_bytes(), &mut out).unwrap();
            out
        })
        .collect()
}

fn event(id: &str, account: &str, category: &str, amount: f64, country: &str, time: &str) -> String {
    format!(
        r#"{{"transaction_id":"{id}","account_id":"{account}","merchant_category":"{category}","amount":{amount},"currency":"EUR","country":"{country}","channel":"pos","event_time":"{time}"}}"#
    )
}

#[test]
fn the_default_features_fit_name_and_compute() {
    let schema = Schema::default_schema();
    let spec = FeatureConfig::default().validate(&schema).unwrap();
    let events = [
        event("1", "a", "grocery", 10.0, "FR", "2026-11-02T06:00:00Z"),
        event("2", "a", "grocery", 30.0, "DE", "2026-11-02T06:30:00Z"),
        event("3", "b", "travel", 500.0, "FR", "2026-11-02T18:00:00Z"),
    ];
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let rows = rows(&schema, &refs);
    let fitted = spec.fit(&schema, rows.iter().map(Vec::as_slice));
    assert_eq!(fitted.categorical[0].values, ["grocery", "travel"], "by count, then by value");
    let features = fitted.bind(&schema).unwrap();
    assert_eq!(features.width(), features.names().len());
    assert_eq!(
        features.names(),
        [
            "log1p_amount",
            "merchant_category=grocery",
            "merchant_category=travel",
            "merchant_category=other",
            "channel=pos",
            "channel=other",
            "event_time_hour_sin",
            "event_time_hour_cos",
            "event_time_weekday_sin",
            "event_time_weekday_cos",
            "event_time_hours_0_6",
            "event_time_hours_6_12",
            "event_time_hours_12_18",
            "event_time_hours_18_24",
            "account_events_in_1h",
            "account_amount_vs_mean",
            "account_log_seconds_since_previous",
            "account_new_country",
            "account_amount_over_mean",
            "account_unusual_country",
            "account_previous_within_5m",
        ]
    );
    assert_eq!(features.one_hot_groups(), [1..4, 4..6, 10..14]);
    let mut history = History::new();
    let mut out = vec![0f32; features.width()];
    features.row(&rows[0], &mut history, &mut out);
    features.row(&rows[1], &mut history, &mut out);
    assert_eq!(out[0], 31f64.ln() as f32);
    assert_eq!(&out[1..6], &[1.0, 0.0, 0.0, 1.0, 0.0]);
    // 06:30 UTC on a Monday.
    let hour = std::f64::consts::TAU * 6.5 / 24.0;
    assert_eq!((out[6], out[7]), (hour.sin() as f32, hour.cos() as f32));
    assert_eq!((out[8], out[9]), (0.0, 1.0));
    assert_eq!(&out[10..14], &[0.0, 1.0, 0.0, 0.0], "06:30 is in the 6-12 part");
    assert_eq!(out[14], 1.0, "one earlier event of the account within the hour");
    assert_eq!(out[15], (31f64 / 11.0).ln() as f32);
    assert_eq!(out[16], 1800f64.ln_1p() as f32);
    assert_eq!(out[17], 1.0, "DE is new for account a");
    assert_eq!(out[18], out[15], "above the mean: the same as amount_vs_mean");
    assert_eq!(out[19], 1.0, "FR is account a's usual country");
    assert_eq!(out[20], 0.0, "30 minutes after its previous event");
    features.row(&rows[2], &mut history, &mut out);
    assert_eq!(&out[10..14], &[0.0, 0.0, 0.0, 1.0], "18:00 begins the last part");
    assert_eq!((out[18], out[19], out[20]), (0.0, 0.0, 0.0), "a first event: nothing to compare with");
    let soon = self::rows(&schema, &[&event("5", "b", "travel", 50.0, "FR", "2026-11-02T18:04:59Z")]);
    features.row(&soon[0], &mut history, &mut out);
    assert_eq!(out[20], 1.0, "4 min 59 s after the previous event of b");
    // A value not in the fitted top values goes to "other".
    let unseen = self::rows(&schema, &[&event("4", "c", "jewelry", 1.0, "FR", "2026-11-02T06:00:00Z")]);
    features.row(&unseen[0], &mut history, &mut out);
    assert_eq!(&out[1..4], &[0.0, 0.0, 1.0]);
}

#[test]
fn fitted_features_survive_json_and_give_the_same_numbers() {
    let schema = Schema::default_schema();
    let mut config = FeatureConfig::default();
    config.numeric[0].standardize = true;
    config.numeric[0].clip = Some([0.0, 5.0]);
    let spec = config.validate(&schema).unwrap();
    let events: Vec<String> = (0..50)
        .map(|i| event(&i.to_string(), "a", "fuel", i as f64 * 3.0, "FR", "2026-11-02T06:00:00Z"))
        .collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let rows = rows(&schema, &refs);
    let fitted = spec.fit(&schema, rows.iter().map(Vec::as_slice));
    let again: FittedFeatures = serde_json::from_str(&serde_json::to_string(&fitted).unwrap()).unwrap();
    assert_eq!(again, fitted);
    let (a, b) = (fitted.bind(&schema).unwrap(), again.bind(&schema).unwrap());
    let (mut ha, mut hb) = (History::new(), History::new());
    let (mut oa, mut ob) = (vec![0f32; a.width()], vec![0f32; b.width()]);
    for r in &rows {
        a.row(r, &mut ha, &mut oa);
        b.row(r, &mut hb, &mut ob);
        assert_eq!(oa, ob);
    }
    let m = fitted.numeric[0].mean.unwrap();
    assert!(m > 0.0 && m <= 5.0, "the mean of the clipped log1p amounts: {m}");
}

#[test]
fn a_spec_that_does_not_fit_the_schema_names_its_key() {
    let schema = Schema::default_schema();
    let bad = |edit: fn(&mut FeatureConfig)| {
        let mut c = FeatureConfig::default();
        edit(&mut c);
        c.validate(&schema).unwrap_err().to_string()
    };
    let e = bad(|c| c.numeric[0].field = "amout".into());
    assert!(e.contains("`features.numeric.field` = \"amout\"") && e.contains("a field of the schema"), "{e}");
    let e = bad(|c| c.numeric[0].field = "currency".into());
    assert!(e.contains("a double or long field"), "{e}");
    let e = bad(|c| c.categorical[0].field = "amount".into());
    assert!(e.contains("features.categorical.field") && e.contains("a string field"), "{e}");
    assert!(bad(|c| c.boolean = vec!["is_fraud".into()]).contains("other than the label"));
    assert!(bad(|c| c.history.window = "soon".into()).contains("features.history.window"));
    assert!(bad(|c| c.hour_bins = vec![12, 6]).contains("features.hour_bins"));
    assert!(bad(|c| c.hour_bins = vec![0]).contains("features.hour_bins"));
    assert!(
        bad(|c| c.history.previous_within = Some("0s".into())).contains("features.history.previous_within")
    );
    assert!(bad(|c| c.categorical[0].top_k = 0).contains("features.categorical.top_k"));
    assert!(bad(|c| c.numeric[0].clip = Some([3.0, 1.0])).contains("features.numeric.clip"));
}

#[test]
fn events_of_another_shape_need_only_config() {
    use crate::schema::{FieldConfig, FieldType};
    let field = |name: &str, kind: FieldType, required: bool| FieldConfig {
        name: name.into(),
        kind,
        required,
        case: None,
        length: None,
        min: None,
        generate: None,
    };
    let mut fields = vec![
        field("id", FieldType::String, true),
        field("t", FieldType::Timestamp, true),
        field("label", FieldType::Boolean, false),
    ];
    fields.extend((0..30).map(|i| field(&format!("v{i}"), FieldType::Double, true)));
    let schema = Schema::new(SchemaConfig {
        id_field: "id".into(),
        time_field: "t".into(),
        label_field: Some("label".into()),
        key_field: None,
        fields,
    })
    .unwrap();
    // The default features name fields this schema lacks: refused by name.
    assert!(FeatureConfig::default().validate(&schema).unwrap_err().to_string().contains("amount"));
    let config = FeatureConfig {
        numeric: (0..30)
            .map(|i| NumericFeature {
                field: format!("v{i}"),
                transform: NumericTransform::Identity,
                clip: None,
                standardize: false,
            })
            .collect(),
        categorical: vec![],
        boolean: vec![],
        hour_of_day: false,
        day_of_week: false,
        hour_bins: vec![],
        history: HistoryFeatures::default(),
    };
    let spec = config.validate(&schema).unwrap();
    assert!(spec.history.is_none());
    let payload: String = format!(
        r#"{{"id":"x","t":"2026-11-02T06:00:00Z",{}}}"#,
        (0..30).map(|i| format!(r#""v{i}":{}"#, i as f64 / 2.0)).collect::<Vec<_>>().join(",")
    );
    let rows = rows(&schema, &[&payload]);
    let features = spec.fit(&schema, rows.iter().map(Vec::as_slice)).bind(&schema).unwrap();
    let mut out = vec![0f32; features.width()];
    features.row(&rows[0], &mut History::new(), &mut out);
    assert_eq!(out.len(), 30);
    assert_eq!(out[29], 14.5);
}
