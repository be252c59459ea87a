//! Errors of the core crate.

/// What can go wrong in the core: a schema or a setting that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The declared schema is not usable; the text names the key.
    #[error("invalid schema: {0}")]
    Schema(String),
    /// A setting has a value outside its expected form.
    #[error("invalid setting `{key}` = {value:?}: expected {expected}")]
    Config { key: String, value: String, expected: String },
}

impl Error {
    /// A setting error naming the key, the value found and the expected form.
    pub fn config(key: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        Error::Config { key: key.into(), value: value.to_string(), expected: expected.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
