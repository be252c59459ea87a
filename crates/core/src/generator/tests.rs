use super::*;
use crate::event::{EventParser, Value};
use crate::schema::{FieldConfig, FieldType, SchemaConfig};
use std::collections::{BTreeMap, HashSet};

fn events(schema: &Schema, config: GeneratorConfig, n: usize) -> Vec<(Vec<u8>, Vec<u8>, Truth)> {
    let mut g = Generator::new(schema, config).unwrap();
    (0..n)
        .map(|_| {
            let (mut p, mut k) = (Vec::new(), Vec::new());
            let t = g.next_into(&mut p, &mut k);
            (p, k, t)
        })
        .collect()
}

fn config(seed: u64, count: u64) -> GeneratorConfig {
    GeneratorConfig { seed, count, ..GeneratorConfig::default() }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let s = Schema::default_schema();
    let a = events(&s, GeneratorConfig { malformed_rate: 0.1, ..config(7, 2_000) }, 2_000);
    let b = events(&s, GeneratorConfig { malformed_rate: 0.1, ..config(7, 2_000) }, 2_000);
    let c = events(&s, GeneratorConfig { malformed_rate: 0.1, ..config(8, 2_000) }, 2_000);
    assert_eq!(a, b);
    assert_ne!(a.iter().map(|e| &e.0).collect::<Vec<_>>(), c.iter().map(|e| &e.0).collect::<Vec<_>>());
}

#[test]
fn events_are_valid_keyed_unique_and_in_time_order() {
    let s = Schema::default_schema();
    let cfg = config(1, 20_000);
    let (start, span) = (cfg.start_us, cfg.span_us);
    let parser = EventParser::new(s.clone());
    let mut last = i64::MIN;
    let mut ids = HashSet::new();
    for (payload, key, truth) in events(&s, cfg, 20_000) {
        let mut out = Vec::new();
        parser
            .parse(&payload, &mut out)
            .unwrap_or_else(|r| panic!("{r}: {}", String::from_utf8_lossy(&payload)));
        assert_eq!(out[0].as_str(), Some(truth.transaction_id.as_str()));
        assert_eq!(out[1].as_str().map(str::as_bytes), Some(key.as_slice()));
        let Value::Timestamp(t) = out[8] else { panic!("time") };
        assert!(t >= last, "event times must not decrease");
        // Burst events may run a few minutes past the end of the span.
        assert!(t >= start && t < start + span + 3_600_000_000);
        last = t;
        assert!(matches!(out[9], Value::Bool(b) if b == truth.is_fraud));
        assert!(ids.insert(truth.transaction_id));
    }
}

#[test]
fn fraud_rate_follows_the_setting_and_probability_carries_signal() {
    let s = Schema::default_schema();
    for rate in [0.01, 0.05] {
        let n = 60_000;
        let ev = events(&s, GeneratorConfig { fraud_rate: rate, ..config(3, n as u64) }, n);
        let mean_p = ev.iter().map(|e| e.2.fraud_probability).sum::<f64>() / n as f64;
        let frauds = ev.iter().filter(|e| e.2.is_fraud).count() as f64 / n as f64;
        assert!((mean_p - rate).abs() < 0.15 * rate, "mean probability {mean_p} vs {rate}");
        assert!((frauds - rate).abs() < 0.2 * rate, "label rate {frauds} vs {rate}");
        // The true probability separates the labels far better than chance (AUC > 0.8).
        let mut scored: Vec<(f64, bool)> = ev.iter().map(|e| (e.2.fraud_probability, e.2.is_fraud)).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut pos) = (0.0, 0.0);
        for (rank, (_, y)) in scored.iter().enumerate() {
            if *y {
                rank_sum += rank as f64 + 1.0;
                pos += 1.0;
            }
        }
        let neg = n as f64 - pos;
        let auc = (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg);
        assert!(auc > 0.8, "AUC of the true probability {auc}");
    }
}

#[test]
fn malformed_events_follow_the_rate_cover_every_kind_and_are_rejected_as_expected() {
    let s = Schema::default_schema();
    let n = 30_000;
    let parser = EventParser::new(s.clone());
    let mut per_kind = BTreeMap::new();
    for (payload, _, truth) in events(&s, GeneratorConfig { malformed_rate: 0.1, ..config(5, n) }, n as usize)
    {
        let mut out = Vec::new();
        match truth.malformed {
            None => assert!(parser.parse(&payload, &mut out).is_ok()),
            Some(kind) => {
                let r = parser.parse(&payload, &mut out).unwrap_err();
                assert_eq!(r.kind, kind.rejection(), "{kind:?}: {r}: {}", String::from_utf8_lossy(&payload));
                *per_kind.entry(kind).or_insert(0usize) += 1;
            }
        }
    }
    let total: usize = per_kind.values().sum();
    let rate = total as f64 / n as f64;
    assert!((rate - 0.1).abs() < 0.01, "malformed rate {rate}");
    for kind in MalformedKind::ALL {
        let k = per_kind.get(&kind).copied().unwrap_or(0);
        // 7 kinds share the 10%: about 430 each.
        assert!(k > 300, "{kind:?} produced {k} times");
    }
}

#[test]
fn labels_can_be_left_out() {
    let s = Schema::default_schema();
    let ev = events(&s, GeneratorConfig { labels: false, ..config(2, 100) }, 100);
    assert!(ev.iter().all(|e| !String::from_utf8_lossy(&e.0).contains("is_fraud")));
}

/// A schema of 30 anonymous numeric features, no account id, works by config alone.
#[test]
fn another_schema_works_by_config_alone() {
    let mut text = String::from("id_field = \"id\"\ntime_field = \"ts\"\nlabel_field = \"class\"\n");
    text += "[[fields]]\nname = \"id\"\ntype = \"string\"\nrequired = true\n";
    text += "[[fields]]\nname = \"ts\"\ntype = \"timestamp\"\nrequired = true\n";
    for i in 1..=30 {
        text += &format!("[[fields]]\nname = \"v{i}\"\ntype = \"double\"\nrequired = true\n");
    }
    text += "[[fields]]\nname = \"class\"\ntype = \"boolean\"\n";
    let declared: SchemaConfig = toml::from_str(&text).unwrap();
    let schema = Schema::new(declared).unwrap();
    let parser = EventParser::new(schema.clone());
    let ev = events(&schema, GeneratorConfig { malformed_rate: 0.2, ..config(9, 5_000) }, 5_000);
    let mut out = Vec::new();
    let (mut valid, mut kinds) = (0, HashSet::new());
    for (payload, key, truth) in &ev {
        assert!(key.is_empty(), "no key field, no key");
        match truth.malformed {
            None => {
                parser.parse(payload, &mut out).unwrap();
                assert_eq!(out.len(), 33);
                assert!(out[2..32].iter().all(|v| matches!(v, Value::Double(_))));
                valid += 1;
            }
            Some(kind) => {
                assert_eq!(parser.parse(payload, &mut out).unwrap_err().kind, kind.rejection());
                kinds.insert(kind);
            }
        }
    }
    assert!(valid > 3_800);
    // No minimum declared: negative amounts cannot be produced, every other kind is.
    assert_eq!(kinds.len(), 6);
    assert!(!kinds.contains(&MalformedKind::NegativeAmount));
}

#[test]
fn generate_keys_are_checked() {
    let mut c = SchemaConfig::default();
    c.fields.push(FieldConfig {
        name: "x".into(),
        kind: FieldType::Double,
        required: false,
        case: None,
        length: None,
        min: None,
        generate: Some("bogus".into()),
    });
    let err = Generator::new(&Schema::new(c.clone()).unwrap(), GeneratorConfig::default()).err().unwrap();
    assert!(err.to_string().contains("schema.fields[10].generate"), "{err}");
    c.fields[10].generate = Some("country".into());
    let err = Generator::new(&Schema::new(c).unwrap(), GeneratorConfig::default()).err().unwrap();
    assert!(err.to_string().contains("fits a double"), "{err}");
}
