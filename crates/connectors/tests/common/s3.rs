//! The S3 store of the tests.

use std::collections::BTreeMap;

/// The S3 store of `scripts/services up s3` (TXPIPE_TEST_S3 overrides the endpoint): a fresh
/// prefix of its bucket, and the storage options that reach it.
pub fn s3_location(name: &str) -> (String, BTreeMap<String, String>) {
    let port = std::env::var("TXPIPE_S3_PORT").unwrap_or_else(|_| "8333".into());
    let endpoint = std::env::var("TXPIPE_TEST_S3").unwrap_or_else(|_| format!("http://127.0.0.1:{port}"));
    let bucket = std::env::var("TXPIPE_S3_BUCKET").unwrap_or_else(|_| "lake".into());
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let options = BTreeMap::from([
        ("AWS_ENDPOINT_URL".to_string(), endpoint),
        ("AWS_ACCESS_KEY_ID".to_string(), env("AWS_ACCESS_KEY_ID", "txpipe")),
        ("AWS_SECRET_ACCESS_KEY".to_string(), env("AWS_SECRET_ACCESS_KEY", "txpipe-secret")),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
    ]);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (format!("s3://{bucket}/test-{name}-{}-{nanos}", std::process::id()), options)
}
