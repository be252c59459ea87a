//! The model in use, and how a new one is noticed: the model directory's pointer is looked at
//! every `model_poll_interval`; a new version is loaded and bound to the schema, and used from
//! the next micro-batch. A version that does not load or does not fit the schema is refused
//! with a warning (and not tried again); the current model stays.

use std::time::{Duration, Instant};

use txpipe_core::model::{ModelArtifact, Scorer};
use txpipe_core::schema::Schema;

use crate::Result;
use crate::models::ModelStore;
use crate::telemetry::names;

/// A loaded model: never absent once a [`ModelWatch`] exists.
pub(super) struct ModelWatch {
    store: ModelStore,
    id: String,
    scorer: Scorer,
    /// The id of a model refused, not to be tried again.
    refused: Option<String>,
    checked: Instant,
}

/// Looks at the pointer; loads the model it names unless it is `current` or `refused` (its id
/// and scorer; None: nothing new that loads).
fn look(
    store: &ModelStore,
    schema: &Schema,
    current: Option<&str>,
    refused: &mut Option<String>,
) -> Option<(String, Scorer)> {
    let id = match store.current_id() {
        Ok(Some(id)) => id,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "reading the model pointer failed; keeping the current model");
            return None;
        }
    };
    if current == Some(id.as_str()) || refused.as_deref() == Some(id.as_str()) {
        return None;
    }
    let loaded: Result<(ModelArtifact, Scorer)> = store.load(&id).and_then(|artifact| {
        let scorer = Scorer::new(&artifact, schema)?;
        Ok((artifact, scorer))
    });
    match loaded {
        Ok((artifact, scorer)) => {
            tracing::info!(model = %id, holdout_auc = artifact.metrics.holdout.auc_roc, previous = ?current, "scoring with model");
            metrics::counter!(names::SCORE_MODEL_LOADS).increment(1);
            if let Some(old) = current {
                metrics::gauge!(names::SCORE_MODEL_INFO, "version" => old.to_string()).set(0.0);
            }
            metrics::gauge!(names::SCORE_MODEL_INFO, "version" => id.clone()).set(1.0);
            Some((id, scorer))
        }
        Err(e) => {
            tracing::warn!(model = %id, error = %e, current = ?current, "refusing this model; keeping the current one");
            metrics::counter!(names::SCORE_MODEL_REFUSALS).increment(1);
            *refused = Some(id);
            None
        }
    }
}

impl ModelWatch {
    /// The model the pointer names now, if it loads (None: none published yet, or refused).
    pub(super) fn try_first(
        store: &ModelStore,
        schema: &Schema,
        refused: &mut Option<String>,
    ) -> Option<ModelWatch> {
        let (id, scorer) = look(store, schema, None, refused)?;
        Some(ModelWatch {
            store: store.clone(),
            id,
            scorer,
            refused: refused.take(),
            checked: Instant::now(),
        })
    }

    /// Whether a look at the pointer is due (one every `every`).
    pub(super) fn due(&self, every: Duration) -> bool {
        self.checked.elapsed() >= every
    }

    /// Looks at the pointer (at most every `every`) and switches to a new model. True when the
    /// model changed.
    pub(super) fn check(&mut self, schema: &Schema, every: Duration) -> bool {
        if !self.due(every) {
            return false;
        }
        self.checked = Instant::now();
        let Some((id, scorer)) = look(&self.store, schema, Some(&self.id), &mut self.refused) else {
            return false;
        };
        self.id = id;
        self.scorer = scorer;
        true
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    pub(super) fn scorer_mut(&mut self) -> &mut Scorer {
        &mut self.scorer
    }
}
