//! Logistic regression: fit by Newton's method on internally standardised features, predict on
//! the features as given.
//!
//! In: a [`Matrix`] of features, 0/1 labels, [`FitOptions`] (L2 strength, class weights).
//! Out: a [`LogisticModel`] whose coefficients apply to the raw features.
//!
//! The objective is `Σ wᵢ·logloss(yᵢ, σ(b + xᵢ·β)) + λ/2·‖β‖²` over standardised features
//! (the intercept is not penalised), as scikit-learn's `LogisticRegression(C = 1/λ)` on
//! standardised columns. With 20–60 features the Hessian is tiny, so each Newton step costs one
//! pass over the rows (gradient and Hessian together, in blocks of rows on all cores) and the
//! fit converges in a handful of steps. Blocks are summed in a fixed order: the same data and
//! settings give the same model, whatever the number of threads. With class weights, the
//! intercept is shifted by `ln(w₊/w₋)` after the fit, so that probabilities stay calibrated.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels::{axpy_dot, dot};
use super::matrix::Matrix;

/// Rows per block: a block's standardised copy (rows × features × 8 bytes) stays in cache.
const BLOCK: usize = 2048;

/// How the two classes are weighted in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every row counts once.
    None,
    /// Each class weighs as much as the other in all: `n / (2·n_class)` per row.
    Balanced,
    /// Given weights per row of each class.
    Given { negative: f64, positive: f64 },
}

/// Settings of a fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// L2 strength λ on the standardised coefficients (scikit-learn's `1/C`).
    pub l2: f64,
    pub class_weight: ClassWeight,
    /// Newton steps at most.
    pub max_iter: u32,
    /// Stop when the largest step falls below this.
    pub tol: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { l2: 1.0, class_weight: ClassWeight::None, max_iter: 50, tol: 1e-6 }
    }
}

/// A fitted model, ready to score raw feature vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticModel {
    /// One per feature, for the raw (unstandardised) feature values.
    pub coefficients: Vec<f64>,
    /// Already corrected for class weights.
    pub intercept: f64,
    /// The standardisation used in the fit: per feature mean and standard deviation.
    pub means: Vec<f64>,
    pub stds: Vec<f64>,
    /// The coefficients on the standardised features (their sizes compare across features).
    pub standardized: Vec<f64>,
    pub iterations: u32,
    pub converged: bool,
    /// The objective at the end, per unit of weight.
    pub loss: f64,
}

/// Why a fit cannot be done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("no rows to fit")]
    NoRows,
    #[error("only one class in the labels ({positives} positives of {rows} rows)")]
    OneClass { rows: usize, positives: usize },
    #[error("labels ({labels}) and rows ({rows}) differ in number")]
    Shape { rows: usize, labels: usize },
    #[error("the Hessian is not positive definite (step {iteration}); raise the L2 strength")]
    Singular { iteration: u32 },
}

/// `1 / (1 + e^-z)`, without overflow.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl LogisticModel {
    /// The linear score `b + x·β` of one row of raw features.
    pub fn decision(&self, x: &[f32]) -> f64 {
        let mut z = self.intercept;
        for (c, &v) in self.coefficients.iter().zip(x) {
            z += c * v as f64;
        }
        z
    }

    /// The probability of the positive class for one row of raw features.
    pub fn probability(&self, x: &[f32]) -> f64 {
        sigmoid(self.decision(x))
    }

    /// Probabilities for every row of a matrix: the same arithmetic, in the same order, as
    /// [`Self::probability`] (so bit for bit the same values), done a column at a time over
    /// blocks of rows on all cores.
    pub fn probabilities(&self, x: &Matrix) -> Vec<f64> {
        const BLOCK: usize = 16_384;
        let mut z = vec![self.intercept; x.rows()];
        z.par_chunks_mut(BLOCK).enumerate().for_each(|(k, block)| {
            let start = k * BLOCK;
            let mut scratch = Vec::new();
            for (j, &c) in self.coefficients.iter().enumerate().take(x.cols()) {
                let column = x.column_values(j, start..start + block.len(), &mut scratch);
                for (zi, &v) in block.iter_mut().zip(column) {
                    *zi += c * v as f64;
                }
            }
            for zi in block.iter_mut() {
                *zi = sigmoid(*zi);
            }
        });
        z
    }

    /// Each feature's push on the score for one row: coefficient × standardised value.
    pub fn contributions(&self, x: &[f32]) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(j, &v)| self.standardized[j] * (v as f64 - self.means[j]) / self.stds[j])
            .collect()
    }
}

/// What one block of rows adds to the objective, gradient and Hessian.
struct Sums {
    loss: f64,
    weight: f64,
    /// d features, then the intercept.
    gradient: Vec<f64>,
    /// Upper triangle, row-major, (d + 1) × (d + 1).
    hessian: Vec<f64>,
}

/// Fits a logistic regression of `y` (0 or 1) on the columns of `x`.
pub fn fit(x: &Matrix, y: &[u8], options: &FitOptions) -> Result<LogisticModel, FitError> {
    let (n, d) = (x.rows(), x.cols());
    if n == 0 {
        return Err(FitError::NoRows);
    }
    if y.len() != n {
        return Err(FitError::Shape { rows: n, labels: y.len() });
    }
    let positives = y.iter().filter(|&&v| v != 0).count();
    if positives == 0 || positives == n {
        return Err(FitError::OneClass { rows: n, positives });
    }
    let (w_neg, w_pos) = match options.class_weight {
        ClassWeight::None => (1.0, 1.0),
        ClassWeight::Balanced => {
            (n as f64 / (2.0 * (n - positives) as f64), n as f64 / (2.0 * positives as f64))
        }
        ClassWeight::Given { negative, positive } => (negative, positive),
    };
    let (means, stds) = standardisation(x);
    let p = d + 1;
    let mut beta = vec![0.0; p];
    // Start from the intercept of the base rate.
    let base = (positives as f64 * w_pos) / (positives as f64 * w_pos + (n - positives) as f64 * w_neg);
    beta[d] = (base / (1.0 - base)).ln();
    let blocks = n.div_ceil(BLOCK);
    let pass = |beta: &[f64]| -> Sums {
        let parts: Vec<Sums> = (0..blocks)
            .into_par_iter()
            .map(|b| {
                block_sums(x, y, &means, &stds, beta, (w_neg, w_pos), b * BLOCK..((b + 1) * BLOCK).min(n))
            })
            .collect();
        let mut total = Sums { loss: 0.0, weight: 0.0, gradient: vec![0.0; p], hessian: vec![0.0; p * p] };
        for s in parts {
            total.loss += s.loss;
            total.weight += s.weight;
            total.gradient.iter_mut().zip(&s.gradient).for_each(|(a, b)| *a += b);
            total.hessian.iter_mut().zip(&s.hessian).for_each(|(a, b)| *a += b);
        }
        total
    };
    let penalised =
        |s: &Sums, beta: &[f64]| s.loss + 0.5 * options.l2 * beta[..d].iter().map(|b| b * b).sum::<f64>();
    let mut sums = pass(&beta);
    let mut objective = penalised(&sums, &beta);
    let (mut iterations, mut converged) = (0, false);
    while iterations < options.max_iter {
        iterations += 1;
        let mut g = sums.gradient.clone();
        let mut h = sums.hessian.clone();
        for j in 0..d {
            g[j] += options.l2 * beta[j];
            h[j * p + j] += options.l2;
        }
        let step = solve_cholesky(&mut h, &g, p).ok_or(FitError::Singular { iteration: iterations })?;
        // Newton's step, halved while it does not lower the objective.
        let mut scale = 1.0;
        let (next, next_sums, next_objective) = loop {
            let candidate: Vec<f64> = beta.iter().zip(&step).map(|(b, s)| b - scale * s).collect();
            let s = pass(&candidate);
            let o = penalised(&s, &candidate);
            if o <= objective * (1.0 + 1e-12) || scale < 1e-6 {
                break (candidate, s, o);
            }
            scale *= 0.5;
        };
        let largest = step.iter().map(|s| (s * scale).abs()).fold(0.0, f64::max);
        let scale_of_beta = next.iter().map(|b| b.abs()).fold(1.0, f64::max);
        let flat = (objective - next_objective).abs() <= options.tol * objective.abs().max(1e-300);
        beta = next;
        sums = next_sums;
        objective = next_objective;
        if largest <= options.tol * scale_of_beta || flat {
            converged = true;
            break;
        }
    }
    // Back to the raw features, and the class-weight shift out of the intercept.
    let standardized = beta[..d].to_vec();
    let coefficients: Vec<f64> = (0..d).map(|j| beta[j] / stds[j]).collect();
    let intercept =
        beta[d] - (0..d).map(|j| beta[j] * means[j] / stds[j]).sum::<f64>() - (w_pos / w_neg).ln();
    Ok(LogisticModel {
        coefficients,
        intercept,
        means,
        stds,
        standardized,
        iterations,
        converged,
        loss: objective / sums.weight,
    })
}

/// Per column, the mean and the (population) standard deviation; 1 for a constant column.
fn standardisation(x: &Matrix) -> (Vec<f64>, Vec<f64>) {
    const CHUNK: usize = 1 << 16;
    let n = x.rows() as f64;
    let mut scratch = Vec::new();
    (0..x.cols())
        .map(|j| {
            // Sums in row order, a chunk at a time (a one-hot column is expanded chunk by chunk).
            let (mut sum, mut from) = (0.0, 0);
            while from < x.rows() {
                let to = (from + CHUNK).min(x.rows());
                sum = x.column_values(j, from..to, &mut scratch).iter().fold(sum, |a, &v| a + v as f64);
                from = to;
            }
            let mean = sum / n;
            let (mut var, mut from) = (0.0, 0);
            while from < x.rows() {
                let to = (from + CHUNK).min(x.rows());
                var = x
                    .column_values(j, from..to, &mut scratch)
                    .iter()
                    .fold(var, |a, &v| a + (v as f64 - mean).powi(2));
                from = to;
            }
            let var = var / n;
            let std = var.sqrt();
            (mean, if std > 1e-12 { std } else { 1.0 })
        })
        .unzip()
}

fn block_sums(
    x: &Matrix,
    y: &[u8],
    means: &[f64],
    stds: &[f64],
    beta: &[f64],
    (w_neg, w_pos): (f64, f64),
    rows: std::ops::Range<usize>,
) -> Sums {
    let (d, len) = (x.cols(), rows.len());
    let p = d + 1;
    // The block's standardised columns (f32, as the matrix holds them), and the linear score of
    // each row (f64, from the f64 standardised values).
    let mut xb = vec![0.0f32; d * len];
    let mut z = vec![beta[d]; len];
    let mut scratch = Vec::new();
    for j in 0..d {
        let (m, inv, bj) = (means[j], 1.0 / stds[j], beta[j]);
        let col = &mut xb[j * len..(j + 1) * len];
        let values = x.column_values(j, rows.clone(), &mut scratch);
        for ((out, zi), &v) in col.iter_mut().zip(z.iter_mut()).zip(values) {
            let s = (v as f64 - m) * inv;
            *zi += bj * s;
            *out = s as f32;
        }
    }
    let mut loss = 0.0;
    let mut weight = 0.0;
    let mut residual = vec![0.0; len];
    let mut curvature = vec![0.0; len];
    for (i, &label) in y[rows].iter().enumerate() {
        let (yi, wi) = if label != 0 { (1.0, w_pos) } else { (0.0, w_neg) };
        // σ(z) and ln(1 + eᶻ) from one exponential, e^-|z|, without overflow.
        let e = (-z[i].abs()).exp();
        let r = 1.0 / (1.0 + e);
        let pi = if z[i] >= 0.0 { r } else { e * r };
        loss += wi * (z[i].max(0.0) + e.ln_1p() - yi * z[i]);
        weight += wi;
        residual[i] = wi * (pi - yi);
        curvature[i] = wi * pi * (1.0 - pi);
    }
    let mut gradient = vec![0.0; p];
    let mut hessian = vec![0.0; p * p];
    // The Hessian's products in f32 (twice the lanes): Newton's step needs it only
    // approximately; the gradient, which decides where the fit ends, is summed in f64.
    let curvature32: Vec<f32> = curvature.iter().map(|&v| v as f32).collect();
    let mut scaled = vec![0.0f32; len];
    for j in 0..d {
        let col = &xb[j * len..(j + 1) * len];
        gradient[j] = dot(&residual, col);
        // scaled = curvature ⊙ column j; its dot with the intercept's column of ones is its sum.
        hessian[j * p + d] = axpy_dot(&curvature32, col, &mut scaled);
        for k in j..d {
            hessian[j * p + k] = dot(&scaled, &xb[k * len..(k + 1) * len]);
        }
    }
    gradient[d] = residual.iter().sum();
    hessian[d * p + d] = curvature.iter().sum();
    Sums { loss, weight, gradient, hessian }
}

/// Solves `H·x = g` for a symmetric positive definite `H` given by its upper triangle
/// (row-major, `p × p`); None when it is not positive definite.
fn solve_cholesky(h: &mut [f64], g: &[f64], p: usize) -> Option<Vec<f64>> {
    // Mirror the upper triangle, then factor H = L·Lᵀ in place (lower triangle).
    for i in 0..p {
        for j in 0..i {
            h[i * p + j] = h[j * p + i];
        }
    }
    for j in 0..p {
        let mut diag = h[j * p + j];
        for k in 0..j {
            diag -= h[j * p + k] * h[j * p + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return None;
        }
        let l = diag.sqrt();
        h[j * p + j] = l;
        for i in j + 1..p {
            let mut v = h[i * p + j];
            for k in 0..j {
                v -= h[i * p + k] * h[j * p + k];
            }
            h[i * p + j] = v / l;
        }
    }
    let mut x = g.to_vec();
    for i in 0..p {
        for k in 0..i {
            x[i] -= h[i * p + k] * x[k];
        }
        x[i] /= h[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            x[i] -= h[k * p + i] * x[k];
        }
        x[i] /= h[i * p + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Rows from a known logistic model over standard-normal features of the given scales.
    fn known(n: usize, scales: &[f64], beta: &[f64], intercept: f64, seed: u64) -> (Matrix, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut columns: Vec<Vec<f32>> = scales.iter().map(|_| Vec::with_capacity(n)).collect();
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let mut z = intercept;
            for (j, s) in scales.iter().enumerate() {
                let v = normal(&mut rng) * s;
                columns[j].push(v as f32);
                z += beta[j] * v as f32 as f64;
            }
            y.push(u8::from(rng.random::<f64>() < sigmoid(z)));
        }
        (Matrix::from_columns(columns), y)
    }

    fn normal(rng: &mut impl Rng) -> f64 {
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    #[test]
    fn recovers_a_known_model() {
        let (x, y) = known(200_000, &[1.0, 2.0, 0.5], &[1.0, -0.5, 2.0], -2.0, 7);
        let m = fit(&x, &y, &FitOptions { l2: 1e-6, ..FitOptions::default() }).unwrap();
        assert!(m.converged && m.iterations < 15, "{m:?}");
        for (got, want) in m.coefficients.iter().zip([1.0, -0.5, 2.0]) {
            assert!((got - want).abs() < 0.05, "{:?}", m.coefficients);
        }
        assert!((m.intercept + 2.0).abs() < 0.03, "{}", m.intercept);
        // The gradient at the optimum is zero: the model's mean probability is the base rate.
        let p = m.probabilities(&x);
        let mean_p = p.iter().sum::<f64>() / p.len() as f64;
        let base = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean_p - base).abs() < 1e-6, "{mean_p} vs {base}");
    }

    #[test]
    fn probabilities_of_a_matrix_equal_row_by_row_scores_bit_for_bit() {
        let (x, y) = known(40_000, &[1.0, 3.0, 0.2], &[0.7, 0.2, -1.5], -1.0, 9);
        let m = fit(&x, &y, &FitOptions::default()).unwrap();
        let all = m.probabilities(&x);
        let mut row = vec![0f32; x.cols()];
        for (i, &p) in all.iter().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = x.get(i, j);
            }
            assert_eq!(p.to_bits(), m.probability(&row).to_bits(), "row {i}");
        }
    }

    #[test]
    fn the_same_data_gives_the_same_model_bit_for_bit() {
        let (x, y) = known(30_000, &[1.0, 3.0], &[0.7, 0.2], -1.0, 8);
        let a = fit(&x, &y, &FitOptions::default()).unwrap();
        let b = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| fit(&x, &y, &FitOptions::default()).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn balanced_weights_keep_probabilities_calibrated() {
        // About 5 % positives.
        let (x, y) = known(200_000, &[1.0, 1.0], &[1.5, -1.0], -3.5, 9);
        let plain = fit(&x, &y, &FitOptions { l2: 1e-6, ..FitOptions::default() }).unwrap();
        let weighted = fit(
            &x,
            &y,
            &FitOptions { l2: 1e-6, class_weight: ClassWeight::Balanced, ..FitOptions::default() },
        )
        .unwrap();
        // The slopes barely move; the corrected intercept lands near the unweighted one.
        for (a, b) in plain.coefficients.iter().zip(&weighted.coefficients) {
            assert!((a - b).abs() < 0.1, "{plain:?} {weighted:?}");
        }
        assert!(
            (plain.intercept - weighted.intercept).abs() < 0.15,
            "{} vs {}",
            plain.intercept,
            weighted.intercept
        );
    }

    #[test]
    fn a_constant_column_and_strong_l2_are_handled() {
        let (x, y) = known(5_000, &[1.0, 1.0], &[1.0, 1.0], 0.0, 10);
        let mut scratch = Vec::new();
        let x =
            Matrix::from_columns(vec![x.column_values(0, 0..5_000, &mut scratch).to_vec(), vec![3.0; 5_000]]);
        let m = fit(&x, &y, &FitOptions::default()).unwrap();
        assert_eq!(m.coefficients[1], 0.0);
        let strong = fit(&x, &y, &FitOptions { l2: 1e9, ..FitOptions::default() }).unwrap();
        assert!(strong.coefficients[0].abs() < 1e-4, "{strong:?}");
    }

    #[test]
    fn one_hot_groups_kept_as_codes_fit_and_score_bit_for_bit_as_dense_columns() {
        use crate::model::MatrixBuilder;
        let (x, y) = known(20_000, &[1.0, 2.0], &[0.7, -0.4], -2.0, 11);
        // Two numeric columns, then a one-hot group of 4 that moves the odds of its category.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (i, &label) in y.iter().enumerate() {
            let category = (i * 7 + usize::from(label) * (i % 3)) % 4;
            let mut row = vec![x.get(i, 0), x.get(i, 1), 0.0, 0.0, 0.0, 0.0];
            row[2 + category] = 1.0;
            rows.push(row);
            labels.push(label);
        }
        let mut built = MatrixBuilder::new(6, std::slice::from_ref(&(2..6)), rows.len());
        rows.iter().for_each(|r| built.push(r));
        let compact = built.finish();
        let dense = Matrix::from_columns((0..6).map(|j| rows.iter().map(|r| r[j]).collect()).collect());
        let options = FitOptions { class_weight: ClassWeight::Balanced, ..FitOptions::default() };
        let (a, b) = (fit(&compact, &labels, &options).unwrap(), fit(&dense, &labels, &options).unwrap());
        assert_eq!(a, b);
        assert!(a.coefficients[2..].iter().any(|c| c.abs() > 1e-3), "{a:?}");
        let (pa, pb) = (a.probabilities(&compact), a.probabilities(&dense));
        assert_eq!(pa, pb);
        assert_eq!(pa[7], a.probability(&rows[7]));
    }

    #[test]
    fn refusals_say_why() {
        let x = Matrix::from_columns(vec![vec![1.0, 2.0, 3.0]]);
        assert_eq!(
            fit(&x, &[0, 0, 0], &FitOptions::default()),
            Err(FitError::OneClass { rows: 3, positives: 0 })
        );
        assert_eq!(fit(&x, &[0, 1], &FitOptions::default()), Err(FitError::Shape { rows: 3, labels: 2 }));
        assert_eq!(fit(&Matrix::zeros(0, 2), &[], &FitOptions::default()), Err(FitError::NoRows));
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0]
        let mut h = vec![4.0, 2.0, 0.0, 3.0];
        let x = solve_cholesky(&mut h, &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        let mut not_pd = vec![1.0, 2.0, 0.0, 1.0];
        assert_eq!(solve_cholesky(&mut not_pd, &[1.0, 1.0], 2), None);
    }
}
