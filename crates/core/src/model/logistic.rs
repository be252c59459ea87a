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
use super::matrix::{ColumnRef, Matrix};
use super::onehot::{Block, Groups};

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
    #[error("reading the spilled feature matrix: {0}")]
    Read(String),
}

impl From<std::io::Error> for FitError {
    fn from(e: std::io::Error) -> Self {
        FitError::Read(e.to_string())
    }
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
            let rows = start..start + block.len();
            for (j, &c) in self.coefficients.iter().enumerate().take(x.cols()) {
                match x.column(j) {
                    ColumnRef::Dense(values) => {
                        for (zi, &v) in block.iter_mut().zip(&values[rows.clone()]) {
                            *zi += c * v as f64;
                        }
                    }
                    // `c · 0` adds nothing: only the rows of the column's code add `c · 1`.
                    ColumnRef::Indicator { codes, code } => {
                        for (zi, &k) in block.iter_mut().zip(&codes[rows.clone()]) {
                            if k == code {
                                *zi += c;
                            }
                        }
                    }
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

/// A matrix and its labels read a chunk of rows at a time, in row order: one chunk for a
/// matrix in memory, many for one spilled to a file. Every chunk but the last holds a multiple
/// of [`CHUNK_MULTIPLE`] rows, so the fit's blocks of rows and its sums in 8 lanes fall as they
/// do over one matrix: a fit over chunks is the fit over the whole, bit for bit.
pub trait Chunks: Sync {
    /// Rows in all.
    fn rows(&self) -> usize;
    /// Calls `each` with the chunks in row order.
    fn each(&self, each: &mut dyn FnMut(&Matrix, &[u8])) -> std::io::Result<()>;
}

/// Chunks other than the last hold a multiple of this many rows.
pub const CHUNK_MULTIPLE: usize = 16_384;

/// A matrix in memory and its labels: one chunk.
impl Chunks for (&Matrix, &[u8]) {
    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn each(&self, each: &mut dyn FnMut(&Matrix, &[u8])) -> std::io::Result<()> {
        each(self.0, self.1);
        Ok(())
    }
}

/// Fits a logistic regression of `y` (0 or 1) on the columns of `x`.
pub fn fit(x: &Matrix, y: &[u8], options: &FitOptions) -> Result<LogisticModel, FitError> {
    if y.len() != x.rows() {
        return Err(FitError::Shape { rows: x.rows(), labels: y.len() });
    }
    fit_chunks(&(x, y), options)
}

/// [`fit`] over a matrix read in chunks (see [`Chunks`]).
pub fn fit_chunks(x: &dyn Chunks, options: &FitOptions) -> Result<LogisticModel, FitError> {
    let n = x.rows();
    if n == 0 {
        return Err(FitError::NoRows);
    }
    let (mut positives, mut d) = (0, 0);
    x.each(&mut |m, y| {
        positives += y.iter().filter(|&&v| v != 0).count();
        d = m.cols();
    })?;
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
    let (means, stds) = standardisation(x, d, n)?;
    let p = d + 1;
    let mut beta = vec![0.0; p];
    // Start from the intercept of the base rate.
    let base = (positives as f64 * w_pos) / (positives as f64 * w_pos + (n - positives) as f64 * w_neg);
    beta[d] = (base / (1.0 - base)).ln();
    // Each block's sums on all cores, added to the total in block order.
    let pass = |beta: &[f64]| -> Result<Sums, FitError> {
        let mut total = Sums { loss: 0.0, weight: 0.0, gradient: vec![0.0; p], hessian: vec![0.0; p * p] };
        x.each(&mut |m, y| {
            let (rows, shape) = (m.rows(), Shape::of(m));
            let parts: Vec<Sums> = (0..rows.div_ceil(BLOCK))
                .into_par_iter()
                .map(|b| {
                    block_sums(
                        &shape,
                        y,
                        &means,
                        &stds,
                        beta,
                        (w_neg, w_pos),
                        b * BLOCK..((b + 1) * BLOCK).min(rows),
                    )
                })
                .collect();
            for s in parts {
                total.loss += s.loss;
                total.weight += s.weight;
                total.gradient.iter_mut().zip(&s.gradient).for_each(|(a, b)| *a += b);
                total.hessian.iter_mut().zip(&s.hessian).for_each(|(a, b)| *a += b);
            }
        })?;
        Ok(total)
    };
    let penalised =
        |s: &Sums, beta: &[f64]| s.loss + 0.5 * options.l2 * beta[..d].iter().map(|b| b * b).sum::<f64>();
    let mut sums = pass(&beta)?;
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
            let s = pass(&candidate)?;
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
/// Columns side by side on all cores; each sum in 8 lanes in a fixed order, whether the column
/// is kept as values or as codes (a 0/1 column gives the same bits either way), carried from
/// chunk to chunk.
fn standardisation(x: &dyn Chunks, d: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>), FitError> {
    let rows = n as f64;
    // Σ v, then Σ (v − mean)²: two passes.
    let mut sums = vec![Lanes::default(); d];
    x.each(&mut |m, _| {
        sums.par_iter_mut().enumerate().for_each(|(j, l)| match m.column(j) {
            ColumnRef::Dense(v) => l.add(v, |v| v as f64),
            ColumnRef::Indicator { codes, code } => l.add(codes, |c| if c == code { 1.0 } else { 0.0 }),
        })
    })?;
    let means: Vec<f64> = sums.iter().map(|l| l.total() / rows).collect();
    let mut squares = vec![Lanes::default(); d];
    x.each(&mut |m, _| {
        squares.par_iter_mut().enumerate().for_each(|(j, l)| {
            let mean = means[j];
            match m.column(j) {
                ColumnRef::Dense(v) => l.add(v, |v| (v as f64 - mean).powi(2)),
                ColumnRef::Indicator { codes, code } => {
                    l.add(codes, |c| (if c == code { 1.0 } else { 0.0 } - mean).powi(2))
                }
            }
        })
    })?;
    let stds = squares
        .iter()
        .map(|l| {
            let std = (l.total() / rows).sqrt();
            if std > 1e-12 { std } else { 1.0 }
        })
        .collect();
    Ok((means, stds))
}

/// `Σ term(v)` in 8 lanes, summed in lane order, then the tail; over values that come in
/// pieces, every piece but the last a whole number of 8 values.
#[derive(Debug, Clone, Copy, Default)]
struct Lanes {
    lanes: [f64; 8],
    tail: f64,
}

impl Lanes {
    fn add<T: Copy>(&mut self, values: &[T], term: impl Fn(T) -> f64) {
        let chunks = values.chunks_exact(8);
        self.tail = chunks.remainder().iter().fold(0.0, |s, &v| s + term(v));
        for c in chunks {
            for (l, &v) in self.lanes.iter_mut().zip(c) {
                *l += term(v);
            }
        }
    }

    fn total(&self) -> f64 {
        self.lanes.iter().sum::<f64>() + self.tail
    }
}

/// How the fit reads a matrix: its dense columns a block of rows at a time, standardised into
/// a copy; its one-hot groups through their codes (see [`Groups`]).
struct Shape<'a> {
    dense: Vec<(usize, &'a [f32])>,
    groups: Groups<'a>,
}

impl<'a> Shape<'a> {
    fn of(x: &'a Matrix) -> Shape<'a> {
        let layout = x.layout();
        Shape { dense: layout.dense, groups: Groups::of(layout.groups) }
    }
}

/// What one block of rows adds: [`block_sums_portable`], built for AVX2 and FMA where the
/// processor has them (the same arithmetic: no sum is fused but those written `mul_add`).
fn block_sums(
    shape: &Shape<'_>,
    y: &[u8],
    means: &[f64],
    stds: &[f64],
    beta: &[f64],
    weights: (f64, f64),
    rows: std::ops::Range<usize>,
) -> Sums {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::avx2_fma() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { block_sums_avx2(shape, y, means, stds, beta, weights, rows) };
    }
    block_sums_portable(shape, y, means, stds, beta, weights, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_sums_avx2(
    shape: &Shape<'_>,
    y: &[u8],
    means: &[f64],
    stds: &[f64],
    beta: &[f64],
    weights: (f64, f64),
    rows: std::ops::Range<usize>,
) -> Sums {
    block_sums_portable(shape, y, means, stds, beta, weights, rows)
}

#[inline(always)]
fn block_sums_portable(
    shape: &Shape<'_>,
    y: &[u8],
    means: &[f64],
    stds: &[f64],
    beta: &[f64],
    (w_neg, w_pos): (f64, f64),
    rows: std::ops::Range<usize>,
) -> Sums {
    let (d, len, dn) = (means.len(), rows.len(), shape.dense.len());
    let p = d + 1;
    // The block's standardised dense columns (f32, as the matrix holds them), and the linear
    // score of each row (f64, from the f64 standardised values). Columns `stride` apart: not a
    // multiple of 4 KiB, so that reading them side by side (row by row, below) does not make
    // them evict each other from the cache.
    let stride = len + 16;
    let mut xb = vec![0.0f32; dn * stride];
    let mut z = vec![beta[d] + shape.groups.offset(beta, means, stds); len];
    for (jj, &(j, values)) in shape.dense.iter().enumerate() {
        let (m, inv, bj) = (means[j], 1.0 / stds[j], beta[j]);
        let col = &mut xb[jj * stride..jj * stride + len];
        for ((out, zi), &v) in col.iter_mut().zip(z.iter_mut()).zip(&values[rows.clone()]) {
            let s = (v as f64 - m) * inv;
            *zi += bj * s;
            *out = s as f32;
        }
    }
    let cells = shape.groups.cells(rows.clone());
    shape.groups.add_scores(&cells, beta, stds, &mut z);
    // The loss is Σ w·(max(z, 0) + ln(1 + e^-|z|) − y·z). The logarithms are summed as the
    // logarithm of their product, per class (two weights) and per run of at most `RUN` rows
    // (a product of RUN factors in (1, 2] stays far from overflow): one logarithm per run
    // instead of one per row, to within a few units of the last place of each run's sum.
    const RUN: usize = 256;
    let mut linear = 0.0;
    let (mut logs, mut products) = ([0.0f64; 2], [1.0f64; 2]);
    let mut weight = 0.0;
    let mut residual = vec![0.0; len];
    let mut curvature = vec![0.0; len];
    for (i, &label) in y[rows].iter().enumerate() {
        let class = usize::from(label != 0);
        let (yi, wi) = if class == 1 { (1.0, w_pos) } else { (0.0, w_neg) };
        // σ(z) and ln(1 + eᶻ) from one exponential, e^-|z|, without overflow.
        let e = (-z[i].abs()).exp();
        let r = 1.0 / (1.0 + e);
        let pi = if z[i] >= 0.0 { r } else { e * r };
        linear += wi * (z[i].max(0.0) - yi * z[i]);
        products[class] *= 1.0 + e;
        if i % RUN == RUN - 1 {
            for (l, q) in logs.iter_mut().zip(&mut products) {
                *l += q.ln();
                *q = 1.0;
            }
        }
        weight += wi;
        residual[i] = wi * (pi - yi);
        curvature[i] = wi * pi * (1.0 - pi);
    }
    let loss = linear + w_neg * (logs[0] + products[0].ln()) + w_pos * (logs[1] + products[1].ln());
    let mut gradient = vec![0.0; p];
    let mut hessian = vec![0.0; p * p];
    // The Hessian's products in f32 (twice the lanes): Newton's step needs it only
    // approximately; the gradient, which decides where the fit ends, is summed in f64.
    let curvature32: Vec<f32> = curvature.iter().map(|&v| v as f32).collect();
    let mut scaled = vec![0.0f32; len];
    // Per dense column, Σ curvature · value: its product with the intercept's column of ones.
    let mut with_ones = vec![0.0; dn];
    for (jj, &(j, _)) in shape.dense.iter().enumerate() {
        let col = &xb[jj * stride..jj * stride + len];
        gradient[j] = dot(&residual, col);
        with_ones[jj] = axpy_dot(&curvature32, col, &mut scaled);
        hessian[j * p + d] = with_ones[jj];
        for (kk, &(k, _)) in shape.dense.iter().enumerate().skip(jj) {
            // Dense columns come in column order: k ≥ j.
            hessian[j * p + k] = dot(&scaled, &xb[kk * stride..kk * stride + len]);
        }
    }
    let (r_all, c_all): (f64, f64) = (residual.iter().sum(), curvature.iter().sum());
    gradient[d] = r_all;
    hessian[d * p + d] = c_all;
    if shape.groups.is_empty() {
        return Sums { loss, weight, gradient, hessian };
    }
    // The dense values row by row, padded to whole vectors, for the sums per code.
    let width = dn.div_ceil(8).max(1) * 8;
    let mut by_row = vec![0.0f32; len * width];
    for (i, row) in by_row.chunks_exact_mut(width).enumerate() {
        for (jj, v) in row[..dn].iter_mut().enumerate() {
            *v = xb[jj * stride + i];
        }
    }
    let dense: Vec<usize> = shape.dense.iter().map(|&(j, _)| j).collect();
    let block = Block {
        residual: &residual,
        curvature: &curvature,
        curvature32: &curvature32,
        by_row: &by_row,
        width,
        dense: &dense,
        with_ones: &with_ones,
        residual_sum: r_all,
        curvature_sum: c_all,
    };
    shape.groups.add_sums(&cells, &block, means, stds, &mut gradient, &mut hessian);
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

    fn standardise(x: &Matrix) -> (Vec<f64>, Vec<f64>) {
        standardisation(&(x, &[][..]), x.cols(), x.rows()).unwrap()
    }
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

    /// Two numeric columns, then one-hot groups of the given sizes whose categories move the
    /// odds: the rows as values, and as a matrix that keeps each group as codes.
    fn with_groups(n: usize, seed: u64, sizes: &[usize]) -> (Vec<Vec<f32>>, Vec<u8>, Matrix) {
        use crate::model::MatrixBuilder;
        let (x, y) = known(n, &[1.0, 2.0], &[0.7, -0.4], -2.0, seed);
        let width = 2 + sizes.iter().sum::<usize>();
        let mut ranges = Vec::new();
        for &k in sizes {
            let start = ranges.last().map_or(2, |r: &std::ops::Range<usize>| r.end);
            ranges.push(start..start + k);
        }
        let mut rows = Vec::new();
        for (i, &label) in y.iter().enumerate() {
            let mut row = vec![0.0; width];
            row[..2].copy_from_slice(&[x.get(i, 0), x.get(i, 1)]);
            let mut category = 0;
            for (g, r) in ranges.iter().enumerate() {
                category = (i / (g + 1) * 7 + usize::from(label) * (i % (g + 3)) + category) % r.len();
                row[r.start + category] = 1.0;
            }
            rows.push(row);
        }
        let mut built = MatrixBuilder::new(width, &ranges, rows.len());
        rows.iter().for_each(|r| built.push(r));
        (rows, y, built.finish())
    }

    fn dense(rows: &[Vec<f32>]) -> Matrix {
        Matrix::from_columns((0..rows[0].len()).map(|j| rows.iter().map(|r| r[j]).collect()).collect())
    }

    #[test]
    fn sums_over_codes_equal_the_sums_over_expanded_columns() {
        // Groups of 4 and 3 make one cluster of cells; 40 and 30 two (5 × 41 × 31 is too many).
        for sizes in [&[4, 3][..], &[40, 30, 4]] {
            sums_over_codes_equal_the_sums_over_expanded_columns_for(sizes);
        }
    }

    fn sums_over_codes_equal_the_sums_over_expanded_columns_for(sizes: &[usize]) {
        let (rows, y, compact) = with_groups(5_000, 12, sizes);
        let expanded = dense(&rows);
        let (means, stds) = standardise(&compact);
        assert_eq!((means.clone(), stds.clone()), standardise(&expanded));
        let p = compact.cols() + 1;
        let beta: Vec<f64> =
            (0..p).map(|j| if j + 1 == p { -1.5 } else { ((j * 37 % 11) as f64 - 5.0) / 20.0 }).collect();
        let (a, b) = (Shape::of(&compact), Shape::of(&expanded));
        assert_eq!(
            (a.dense.len(), a.groups.is_empty(), b.dense.len(), b.groups.is_empty()),
            (2, false, p - 1, true)
        );
        for range in [0..2048, 2048..5_000] {
            let sa = block_sums(&a, &y, &means, &stds, &beta, (1.0, 3.0), range.clone());
            let sb = block_sums(&b, &y, &means, &stds, &beta, (1.0, 3.0), range);
            assert!((sa.loss - sb.loss).abs() <= 1e-12 * sb.loss, "{} vs {}", sa.loss, sb.loss);
            assert_eq!(sa.weight, sb.weight);
            let scale = sb.hessian.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (k, (ga, gb)) in sa.gradient.iter().zip(&sb.gradient).enumerate() {
                // The expanded columns' gradient sums f32-rounded values; the codes' are exact.
                assert!((ga - gb).abs() <= 1e-6 * scale, "{sizes:?}: gradient {k}: {ga} vs {gb}");
            }
            for (k, (ha, hb)) in sa.hessian.iter().zip(&sb.hessian).enumerate() {
                assert!(
                    (ha - hb).abs() <= 1e-5 * scale,
                    "{sizes:?}: hessian ({}, {}): {ha} vs {hb}",
                    k / p,
                    k % p
                );
            }
        }
    }

    #[test]
    fn a_blocks_loss_is_the_sum_of_its_rows_logistic_losses() {
        let (x, y) = known(5_000, &[1.0, 3.0], &[0.7, 2.0], -1.0, 13);
        let (means, stds) = standardise(&x);
        let beta = [0.9, 5.5, -1.2];
        let sums = block_sums(&Shape::of(&x), &y, &means, &stds, &beta, (1.0, 3.0), 0..5_000);
        let mut want = 0.0;
        for (i, &label) in y.iter().enumerate() {
            let s: Vec<f64> = (0..2).map(|j| (x.get(i, j) as f64 - means[j]) / stds[j]).collect();
            let z = beta[2] + beta[0] * s[0] + beta[1] * s[1];
            let p = sigmoid(z);
            want -= if label == 1 { 3.0 * p.ln() } else { (1.0 - p).ln() };
        }
        assert!((sums.loss - want).abs() <= 1e-12 * want, "{} vs {want}", sums.loss);
    }

    #[test]
    fn one_hot_groups_kept_as_codes_fit_as_dense_columns_and_score_bit_for_bit() {
        let (rows, labels, compact) = with_groups(20_000, 11, &[4, 3]);
        let dense = dense(&rows);
        let options = FitOptions { class_weight: ClassWeight::Balanced, ..FitOptions::default() };
        let (a, b) = (fit(&compact, &labels, &options).unwrap(), fit(&dense, &labels, &options).unwrap());
        // The same model to the fit's tolerance: the codes' sums are exact where the expanded
        // columns' use f32-rounded standardised values.
        assert_eq!(
            (a.means.clone(), a.stds.clone(), a.iterations),
            (b.means.clone(), b.stds.clone(), b.iterations)
        );
        for (x, y) in a.standardized.iter().zip(&b.standardized) {
            assert!((x - y).abs() <= 1e-6, "{a:?}\n{b:?}");
        }
        assert!((a.intercept - b.intercept).abs() <= 1e-6, "{a:?}\n{b:?}");
        assert!(a.coefficients[2..].iter().any(|c| c.abs() > 1e-3), "{a:?}");
        // Scoring reads codes and values alike, bit for bit.
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
