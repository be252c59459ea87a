//! The inner loops of the fit: dot products over contiguous `f64` or `f32` slices, with two
//! vector registers' worth of independent sums (8 in `f64`, 16 in `f32`) so that the compiler
//! can use them, and an AVX2 + FMA build of the same code chosen at run time where the processor
//! has it; and the sums per code of a one-hot group (rows scattered to their code's sums). The
//! summation order is fixed by the code, not by the thread or the block it runs in.

/// The two float types the kernels run on: `f64` for the gradient and the objective, `f32`
/// for the Hessian's products (twice the lanes; the Newton step only needs it approximately,
/// the gradient that decides where the fit stops stays `f64`).
pub trait Real:
    Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + Into<f64>
{
    /// `self · a + b`, fused.
    fn fma(self, a: Self, b: Self) -> Self;
}

impl Real for f64 {
    #[inline(always)]
    fn fma(self, a: f64, b: f64) -> f64 {
        self.mul_add(a, b)
    }
}

impl Real for f32 {
    #[inline(always)]
    fn fma(self, a: f32, b: f32) -> f32 {
        self.mul_add(a, b)
    }
}

/// Independent sums: two vector registers' worth of each type.
const fn lanes<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

#[inline(always)]
fn dot_portable<T: Real, U: Copy + Into<T>>(a: &[T], b: &[U]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::default(); 16];
    let lanes = lanes::<T>();
    let chunks = n / lanes;
    for c in 0..chunks {
        let (x, y) = (&a[c * lanes..(c + 1) * lanes], &b[c * lanes..(c + 1) * lanes]);
        for l in 0..lanes {
            acc[l] = x[l].fma(y[l].into(), acc[l]);
        }
    }
    let mut tail = T::default();
    for i in chunks * lanes..n {
        tail = a[i].fma(b[i].into(), tail);
    }
    acc[..lanes].iter().fold(0.0f64, |s, &v| s + v.into()) + tail.into()
}

#[inline(always)]
fn axpy_dot_portable<T: Real>(a: &[T], b: &[T], out: &mut [T]) -> f64 {
    let mut acc = [T::default(); 16];
    let lanes = lanes::<T>();
    let n = a.len().min(b.len()).min(out.len());
    let chunks = n / lanes;
    for c in 0..chunks {
        let base = c * lanes;
        let (x, y, o) = (&a[base..base + lanes], &b[base..base + lanes], &mut out[base..base + lanes]);
        for l in 0..lanes {
            let v = x[l] * y[l];
            o[l] = v;
            acc[l] = acc[l] + v;
        }
    }
    let mut tail = T::default();
    for i in chunks * lanes..n {
        let v = a[i] * b[i];
        out[i] = v;
        tail = tail + v;
    }
    acc[..lanes].iter().fold(0.0f64, |s, &v| s + v.into()) + tail.into()
}

#[inline(always)]
fn scatter_rows_portable(slots: &[u32], weights: &[f32], rows: &[f32], width: usize, acc: &mut [f32]) {
    for ((&slot, &w), row) in slots.iter().zip(weights).zip(rows.chunks_exact(width)) {
        let sums = &mut acc[slot as usize * width..(slot as usize + 1) * width];
        for (s, r) in sums.chunks_exact_mut(8).zip(row.chunks_exact(8)) {
            for l in 0..8 {
                s[l] = w.mul_add(r[l], s[l]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Real;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot<T: Real, U: Copy + Into<T>>(a: &[T], b: &[U]) -> f64 {
        super::dot_portable(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn axpy_dot<T: Real>(a: &[T], b: &[T], out: &mut [T]) -> f64 {
        super::axpy_dot_portable(a, b, out)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scatter_rows(slots: &[u32], weights: &[f32], rows: &[f32], width: usize, acc: &mut [f32]) {
        super::scatter_rows_portable(slots, weights, rows, width, acc)
    }

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
}

/// Whether the processor has AVX2 and FMA (the kernels' fast build).
#[cfg(target_arch = "x86_64")]
pub fn avx2_fma() -> bool {
    x86::available()
}

/// `Σ aᵢ·bᵢ`, each `bᵢ` widened to `T` (summed in `T`, in a fixed order; the result as `f64`).
pub fn dot<T: Real, U: Copy + Into<T>>(a: &[T], b: &[U]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// Writes `out = a ⊙ b` and returns `Σ outᵢ`.
pub fn axpy_dot<T: Real>(a: &[T], b: &[T], out: &mut [T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { x86::axpy_dot(a, b, out) };
    }
    axpy_dot_portable(a, b, out)
}

/// For each row `i` (of `width` values in `rows`, `width` a multiple of 8): adds
/// `weights[i] · row i` to the `width` sums of its slot, `acc[slots[i]·width..]`, fused, in row
/// order.
///
/// # Panics
/// When `width` is not a multiple of 8 or a slot is outside `acc`.
pub fn scatter_rows(slots: &[u32], weights: &[f32], rows: &[f32], width: usize, acc: &mut [f32]) {
    assert!(width.is_multiple_of(8) && width > 0, "rows of {width} values");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { x86::scatter_rows(slots, weights, rows, width, acc) };
    }
    scatter_rows_portable(slots, weights, rows, width, acc)
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
        // In f32: the same sums to f32's precision.
        let (a32, b32): (Vec<f32>, Vec<f32>) = a.iter().zip(&b).map(|(&x, &y)| (x as f32, y as f32)).unzip();
        assert!((dot(&a32, &b32) - plain).abs() < 1e-4);
        assert_eq!(dot(&a32, &b32), dot_portable(&a32, &b32));
        let mut out32 = vec![0.0f32; 1003];
        assert!((axpy_dot(&a32, &b32, &mut out32) - plain).abs() < 1e-4);
    }

    #[test]
    fn scattered_rows_sum_per_slot_and_both_builds_agree() {
        // 5 rows of 8 values into 3 slots.
        let rows: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let (slots, weights) = ([2u32, 0, 2, 1, 2], [0.5f32, 2.0, -1.0, 3.0, 0.25]);
        let mut acc = vec![0.0f32; 24];
        scatter_rows(&slots, &weights, &rows, 8, &mut acc);
        for slot in 0..3u32 {
            for l in 0..8 {
                let want: f32 = (0..5)
                    .filter(|&i| slots[i] == slot)
                    .fold(0.0, |s, i| weights[i].mul_add(rows[i * 8 + l], s));
                assert_eq!(acc[slot as usize * 8 + l], want, "slot {slot}, lane {l}");
            }
        }
        let mut portable = vec![0.0f32; 24];
        scatter_rows_portable(&slots, &weights, &rows, 8, &mut portable);
        assert_eq!(acc, portable);
    }
}
