//! A published model at work: one event in, its probability, predicted label and reasons out.
//!
//! The one path both scorers take (`score` on the stream, `train --batch-score` on the
//! history): the model's fitted features bound to the reading schema, the account history fed
//! in the table's order, the logistic model on the feature row. Same rows in the same order give
//! the same probabilities, bit for bit.

use crate::event::Value;
use crate::features::{Explainer, Features, History, Reasons, Seen};
use crate::model::{LogisticModel, ModelArtifact};
use crate::schema::Schema;

/// What the model says about one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub probability: f64,
    /// `probability ≥ threshold`.
    pub label: bool,
    /// Why, as [`Scorer::reason_codes`] and [`Scorer::explain`] name it.
    pub reasons: Reasons,
    /// What the account history said of the event (for its explanation).
    pub seen: Option<Seen>,
}

/// A model bound to the schema events are read with.
#[derive(Debug, Clone)]
pub struct Scorer {
    features: Features,
    model: LogisticModel,
    explainer: Explainer,
    threshold: f64,
    version: String,
    row: Vec<f32>,
}

impl Scorer {
    /// Binds `artifact` to `schema`: every field its features read must be there with a fitting
    /// type, and the model must have one coefficient per feature.
    pub fn new(artifact: &ModelArtifact, schema: &Schema) -> crate::Result<Scorer> {
        let features = artifact.features.bind(schema)?;
        let width = features.width();
        let m = &artifact.model;
        if [m.coefficients.len(), m.means.len(), m.stds.len(), m.standardized.len()]
            .iter()
            .any(|&n| n != width)
        {
            return Err(crate::Error::config(
                "model.coefficients",
                m.coefficients.len(),
                format!("{width} coefficients, means, stds (one per feature)"),
            ));
        }
        let explainer = Explainer::new(&features, &m.standardized, &m.means, &m.stds);
        Ok(Scorer {
            explainer,
            features,
            model: m.clone(),
            threshold: artifact.threshold,
            version: artifact.version.clone(),
            row: vec![0.0; width],
        })
    }

    /// The model's version id.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The feature names (columns of the feature row).
    pub fn names(&self) -> &[String] {
        self.features.names()
    }

    /// Scores one event (schema-ordered values), then adds it to the account's history.
    pub fn score(&mut self, values: &[Value<'_>], history: &mut History) -> Scored {
        let seen = self.features.row(values, history, &mut self.row);
        let probability = self.model.probability(&self.row);
        Scored {
            probability,
            label: probability >= self.threshold,
            reasons: self.explainer.reasons(&self.row),
            seen,
        }
    }

    /// The machine codes of a score's reasons (at most three, largest push first) into `out`;
    /// how many.
    pub fn reason_codes<'s>(&'s self, scored: &Scored, out: &mut [&'s str; 3]) -> usize {
        for (slot, r) in out.iter_mut().zip(scored.reasons.iter()) {
            *slot = self.explainer.code(r);
        }
        scored.reasons.len()
    }

    /// Every code this model's reasons can take (`reasons` in the serving tables).
    pub fn all_reason_codes(&self) -> impl Iterator<Item = &str> {
        self.explainer.codes()
    }

    /// A score's reasons as text with the event's values (`history`: the one it was scored
    /// with), into `out`.
    pub fn explain(&self, scored: &Scored, values: &[Value<'_>], history: &History, out: &mut String) {
        self.explainer.explain(&scored.reasons, values, scored.seen.as_ref(), history, out);
    }

    /// The field the account history is kept by (None: no history features).
    pub fn history_account(&self) -> Option<usize> {
        self.features.history_account()
    }

    /// The fields [`Self::observe`] reads (see [`Features::history_fields`]).
    pub fn history_fields(&self) -> Vec<usize> {
        self.features.history_fields()
    }

    /// What the account history this model builds depends on: the fields it reads and its
    /// window. Two models with the same key build the same history from the same events.
    pub fn history_key(&self, schema: &crate::schema::Schema) -> String {
        let fields: Vec<&str> =
            self.features.history_fields().iter().map(|&i| schema.fields()[i].name.as_str()).collect();
        match self.features.history_window_us() {
            Some(w) => format!("fields {} window {w} us", fields.join(",")),
            None => "no history".to_string(),
        }
    }

    /// Adds an event to the history without scoring it (an event before the range scored).
    pub fn observe(&mut self, values: &[Value<'_>], history: &mut History) {
        self.features.row(values, history, &mut self.row);
    }
}
