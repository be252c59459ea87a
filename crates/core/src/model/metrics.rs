//! How good a model's probabilities are, on rows it was not fitted on.
//!
//! In: probabilities and 0/1 labels. Out: AUC-ROC (ties count half), AUC-PR as average
//! precision (scikit-learn's `average_precision_score`), log loss, Brier score, the counts at a
//! threshold, and a threshold chosen for a target (best F1, or the lowest threshold whose
//! precision reaches P, which gives the most recall at that precision).

use serde::{Deserialize, Serialize};

/// What the decision threshold is chosen for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdTarget {
    BestF1,
    /// The most recall with precision at least this.
    Precision(f64),
}

/// Counts and rates at one threshold (a row is flagged when its probability is ≥ it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AtThreshold {
    pub threshold: f64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The scores of one evaluation slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub rows: u64,
    pub positives: u64,
    pub auc_roc: f64,
    pub auc_pr: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub at_threshold: AtThreshold,
}

/// Evaluates `p` against `y` at `threshold`.
pub fn evaluate(p: &[f64], y: &[u8], threshold: f64) -> Evaluation {
    let positives = y.iter().filter(|&&v| v != 0).count() as u64;
    // One sort for both areas.
    let (mut roc, mut pr) = (Roc::default(), Precision::new(positives as f64));
    runs(p, y, |run| {
        roc.add(run);
        pr.add(run);
    });
    Evaluation {
        rows: p.len() as u64,
        positives,
        auc_roc: roc.area(),
        auc_pr: pr.ap,
        log_loss: log_loss(p, y),
        brier: brier(p, y),
        at_threshold: at_threshold(p, y, threshold),
    }
}

/// Runs of equal probability, highest first: `each` gets (probability, positives, negatives)
/// per run. The counts of a run do not depend on the order of its rows, so an unstable parallel
/// sort gives the same runs every time. The rows are sorted as 8 bytes each (a probability is
/// not negative, so its sign bit can carry the label), and the runs are not kept.
fn runs(p: &[f64], y: &[u8], mut each: impl FnMut((f64, u64, u64))) {
    use rayon::slice::ParallelSliceMut;
    const SIGN: u64 = 1 << 63;
    if p.iter().any(|v| v.is_sign_negative()) {
        // Not probabilities: sorted as pairs.
        let mut pairs: Vec<(f64, bool)> = p.iter().copied().zip(y.iter().map(|&v| v != 0)).collect();
        pairs.par_sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        return fold_runs(pairs.into_iter(), each);
    }
    let mut packed: Vec<u64> =
        p.iter().zip(y).map(|(&pi, &yi)| pi.to_bits() | if yi != 0 { SIGN } else { 0 }).collect();
    // For floats that are not negative, the order of the bits is the order of the values.
    packed.par_sort_unstable_by(|a, b| (b & !SIGN).cmp(&(a & !SIGN)));
    fold_runs(packed.into_iter().map(|v| (f64::from_bits(v & !SIGN), v & SIGN != 0)), &mut each)
}

fn fold_runs(sorted: impl Iterator<Item = (f64, bool)>, mut each: impl FnMut((f64, u64, u64))) {
    let mut run: Option<(f64, u64, u64)> = None;
    for (pi, yi) in sorted {
        let pos = u64::from(yi);
        match &mut run {
            Some(r) if r.0 == pi => {
                r.1 += pos;
                r.2 += 1 - pos;
            }
            _ => {
                if let Some(done) = run.take() {
                    each(done);
                }
                run = Some((pi, pos, 1 - pos));
            }
        }
    }
    if let Some(done) = run {
        each(done);
    }
}

/// The area under the ROC curve, a run at a time.
#[derive(Default)]
struct Roc {
    tp: f64,
    fp: f64,
    area: f64,
}

impl Roc {
    fn add(&mut self, (_, pos, neg): (f64, u64, u64)) {
        // Trapezoid over the run: negatives of the run against positives above plus half of
        // the run's own positives.
        self.area += neg as f64 * (self.tp + pos as f64 / 2.0);
        self.tp += pos as f64;
        self.fp += neg as f64;
    }

    fn area(&self) -> f64 {
        self.area / (self.tp * self.fp)
    }
}

/// Average precision, a run at a time.
struct Precision {
    positives: f64,
    tp: f64,
    flagged: f64,
    ap: f64,
}

impl Precision {
    fn new(positives: f64) -> Precision {
        Precision { positives, tp: 0.0, flagged: 0.0, ap: 0.0 }
    }

    fn add(&mut self, (_, pos, neg): (f64, u64, u64)) {
        self.tp += pos as f64;
        self.flagged += (pos + neg) as f64;
        self.ap += (pos as f64 / self.positives) * (self.tp / self.flagged);
    }
}

/// The area under the ROC curve: the chance that a random positive scores above a random
/// negative, ties counting half. NaN with only one class.
pub fn auc_roc(p: &[f64], y: &[u8]) -> f64 {
    let mut roc = Roc::default();
    runs(p, y, |run| roc.add(run));
    roc.area()
}

/// Average precision: Σ (recallₖ − recallₖ₋₁) · precisionₖ over the distinct thresholds.
pub fn average_precision(p: &[f64], y: &[u8]) -> f64 {
    let mut pr = Precision::new(y.iter().filter(|&&v| v != 0).count() as f64);
    runs(p, y, |run| pr.add(run));
    pr.ap
}

/// Mean negative log-likelihood, probabilities clipped to [1e-15, 1 − 1e-15].
pub fn log_loss(p: &[f64], y: &[u8]) -> f64 {
    let sum: f64 = p
        .iter()
        .zip(y)
        .map(|(&pi, &yi)| {
            let q = pi.clamp(1e-15, 1.0 - 1e-15);
            if yi != 0 { -q.ln() } else { -(1.0 - q).ln() }
        })
        .sum();
    sum / p.len() as f64
}

/// Mean squared error of the probabilities.
pub fn brier(p: &[f64], y: &[u8]) -> f64 {
    p.iter().zip(y).map(|(&pi, &yi)| (pi - yi as f64).powi(2)).sum::<f64>() / p.len() as f64
}

fn rates(threshold: f64, tp: u64, fp: u64, positives: u64) -> AtThreshold {
    let fn_ = positives - tp;
    let precision = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
    let recall = if positives == 0 { 0.0 } else { tp as f64 / positives as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    AtThreshold {
        threshold,
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
        precision,
        recall,
        f1,
    }
}

/// The counts when rows with probability ≥ `threshold` are flagged.
pub fn at_threshold(p: &[f64], y: &[u8], threshold: f64) -> AtThreshold {
    let positives = y.iter().filter(|&&v| v != 0).count() as u64;
    let (mut tp, mut fp) = (0, 0);
    for (&pi, &yi) in p.iter().zip(y) {
        if pi >= threshold {
            if yi != 0 { tp += 1 } else { fp += 1 }
        }
    }
    rates(threshold, tp, fp, positives)
}

/// The threshold that best meets `target` on these rows, among the distinct probabilities.
/// With a precision target that no threshold reaches, the one of best F1.
pub fn choose_threshold(p: &[f64], y: &[u8], target: ThresholdTarget) -> AtThreshold {
    let positives = y.iter().filter(|&&v| v != 0).count() as u64;
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut best_f1: Option<AtThreshold> = None;
    let mut best_precise: Option<AtThreshold> = None;
    runs(p, y, |(threshold, pos, neg)| {
        tp += pos;
        fp += neg;
        let at = rates(threshold, tp, fp, positives);
        if best_f1.is_none_or(|b| at.f1 > b.f1) {
            best_f1 = Some(at);
        }
        if let ThresholdTarget::Precision(min) = target
            && at.precision >= min
        {
            // Lower thresholds come later: the last one that qualifies has the most recall.
            best_precise = Some(at);
        }
    });
    let fallback = || rates(1.0, 0, 0, positives);
    match target {
        ThresholdTarget::BestF1 => best_f1.unwrap_or_else(fallback),
        ThresholdTarget::Precision(_) => best_precise.or(best_f1).unwrap_or_else(fallback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_packed_rows_are_the_runs_of_sorted_pairs() {
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 11
        };
        // Probabilities with many ties, 0 and 1 among them.
        let p: Vec<f64> = (0..5000).map(|_| (next() % 101) as f64 / 100.0).collect();
        let y: Vec<u8> = (0..5000).map(|_| (next() % 3 == 0) as u8).collect();
        let mut packed = Vec::new();
        runs(&p, &y, |r| packed.push(r));
        let mut pairs: Vec<(f64, bool)> = p.iter().copied().zip(y.iter().map(|&v| v != 0)).collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut reference = Vec::new();
        fold_runs(pairs.into_iter(), |r| reference.push(r));
        assert_eq!(packed.len(), 101);
        assert_eq!(packed, reference);
    }

    #[test]
    fn auc_counts_pairs_and_ties_half() {
        assert_eq!(auc_roc(&[0.9, 0.8, 0.3, 0.1], &[1, 1, 0, 0]), 1.0);
        // Positives at 0.1 and 0.8, negatives at 0.3 and 0.9: one pair of four won.
        assert_eq!(auc_roc(&[0.1, 0.8, 0.3, 0.9], &[1, 1, 0, 0]), 0.25);
        // One positive tied with one negative: 3 pairs won, 1 tied, of 4.
        assert_eq!(auc_roc(&[0.9, 0.5, 0.5, 0.1], &[1, 1, 0, 0]), 0.875);
        assert!(auc_roc(&[0.5, 0.4], &[1, 1]).is_nan());
    }

    #[test]
    fn average_precision_as_scikit_learn_computes_it() {
        // sklearn.metrics.average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333…
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]);
        assert!((ap - 0.833_333_333_333_333_4).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn losses() {
        let (p, y) = ([0.8, 0.3], [1, 0]);
        assert!((log_loss(&p, &y) - (-(0.8f64.ln()) - 0.7f64.ln()) / 2.0).abs() < 1e-12);
        assert!((brier(&p, &y) - (0.04 + 0.09) / 2.0).abs() < 1e-12);
        assert!(log_loss(&[0.0], &[1]).is_finite());
    }

    #[test]
    fn thresholds_for_f1_and_for_precision() {
        let p = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];
        let y = [1, 1, 0, 1, 0, 1, 0, 0];
        let f1 = choose_threshold(&p, &y, ThresholdTarget::BestF1);
        // At 0.5: 4 of 4 positives with 2 false: F1 0.8; at 0.7: 3 and 1: F1 0.75.
        assert_eq!((f1.threshold, f1.true_positives, f1.false_positives), (0.5, 4, 2));
        let precise = choose_threshold(&p, &y, ThresholdTarget::Precision(0.75));
        assert_eq!((precise.threshold, precise.true_positives, precise.false_positives), (0.7, 3, 1));
        let unreachable = choose_threshold(&[0.5, 0.4], &[0, 1], ThresholdTarget::Precision(0.99));
        assert_eq!(unreachable.threshold, 0.4, "best F1 when no threshold is that precise");
        assert_eq!(at_threshold(&p, &y, 0.7), precise);
    }
}
