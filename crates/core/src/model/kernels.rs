//! The inner loops of the fit: dot products over contiguous `f64` slices, with eight
//! independent sums so that the compiler can use vector registers, and an AVX2 + FMA build of
//! the same code chosen at run time where the processor has it. The summation order is fixed by
//! the code, not by the thread or the block it runs in.

const LANES: usize = 8;

#[inline(always)]
fn dot_portable(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; LANES];
    let chunks = n / LANES;
    for c in 0..chunks {
        let (x, y) = (&a[c * LANES..(c + 1) * LANES], &b[c * LANES..(c + 1) * LANES]);
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut tail = 0.0;
    for i in chunks * LANES..n {
        tail = a[i].mul_add(b[i], tail);
    }
    acc.iter().sum::<f64>() + tail
}

#[inline(always)]
fn axpy_dot_portable(a: &[f64], b: &[f64], out: &mut [f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let n = a.len().min(b.len()).min(out.len());
    let chunks = n / LANES;
    for c in 0..chunks {
        let base = c * LANES;
        for (l, sum) in acc.iter_mut().enumerate() {
            let i = base + l;
            out[i] = a[i] * b[i];
            *sum += out[i];
        }
    }
    let mut tail = 0.0;
    for i in chunks * LANES..n {
        out[i] = a[i] * b[i];
        tail += out[i];
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
        super::dot_portable(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn axpy_dot(a: &[f64], b: &[f64], out: &mut [f64]) -> f64 {
        super::axpy_dot_portable(a, b, out)
    }

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
}

/// `Σ aᵢ·bᵢ`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// Writes `out = a ⊙ b` and returns `Σ outᵢ`.
pub fn axpy_dot(a: &[f64], b: &[f64], out: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { x86::axpy_dot(a, b, out) };
    }
    axpy_dot_portable(a, b, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_match_the_plain_sum_and_both_builds_agree() {
        let a: Vec<f64> = (0..1003).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..1003).map(|i| (i as f64 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-9);
        assert_eq!(dot(&a, &b), dot_portable(&a, &b), "mul_add is fused in both builds");
        let mut out = vec![0.0; 1003];
        let s = axpy_dot(&a, &b, &mut out);
        assert!((s - plain).abs() < 1e-9);
        assert_eq!(out[1002], a[1002] * b[1002]);
    }
}
