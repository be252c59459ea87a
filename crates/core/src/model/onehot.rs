//! The one-hot groups' share of a Newton pass, from their codes: a group's columns are never
//! expanded.
//!
//! A standardised group column is `(x − m)/σ` with `x` the indicator of its code, so each sum
//! over it is the sum over its code's rows less `m` times the sum over all rows, over `σ`: the
//! gradient needs the residuals summed per code, the Hessian the curvatures summed per code,
//! per pair of codes of two groups, and the curvature times each dense column summed per code.
//! Groups are taken together in clusters whose codes combined make at most [`CELLS`] cells: a
//! row adds to one cell of each cluster (one look-up, one scattered row), and the sums per code
//! and per pair of codes are read off the cells. The group of 13 and the two of 4 of the
//! default features make one cluster of 14 × 5 × 5 = 350 cells.

use std::ops::Range;

use super::kernels::scatter_rows;
use super::matrix::OneHot;

/// Cells of a cluster at most: its sums (a row of dense columns each, in `f32`) stay in the
/// processor's first cache.
const CELLS: usize = 1024;

pub(super) struct Groups<'a> {
    groups: Vec<Group<'a>>,
    /// Indices into `groups`; a row's cell is its slots in mixed radix, the first group's most
    /// significant.
    clusters: Vec<Vec<usize>>,
}

struct Group<'a> {
    codes: &'a [u16],
    /// The column of each code, by code; one more slot, last, for codes above them all.
    column: Vec<Option<usize>>,
}

impl Group<'_> {
    fn slots(&self) -> usize {
        self.column.len()
    }

    /// Its columns with their slots.
    fn columns(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.column.iter().enumerate().filter_map(|(s, c)| c.map(|j| (s, j)))
    }
}

/// What the groups need of a block beyond their codes.
pub(super) struct Block<'b> {
    pub residual: &'b [f64],
    pub curvature: &'b [f64],
    pub curvature32: &'b [f32],
    /// The standardised dense values, row by row, `width` a row (a multiple of 8).
    pub by_row: &'b [f32],
    pub width: usize,
    /// The dense columns' indices, and per dense column Σ curvature · value.
    pub dense: &'b [usize],
    pub with_ones: &'b [f64],
    pub residual_sum: f64,
    pub curvature_sum: f64,
}

/// Per group, the sums per slot.
struct PerSlot {
    residual: Vec<f64>,
    curvature: Vec<f64>,
    /// Slot-major: `width` sums of curvature × dense value per slot.
    cross: Vec<f32>,
}

impl<'a> Groups<'a> {
    pub(super) fn of(groups: Vec<OneHot<'a>>) -> Groups<'a> {
        let groups: Vec<Group<'a>> = groups
            .into_iter()
            .map(|g| {
                let top = g.columns.iter().map(|&(_, code)| usize::from(code)).max().unwrap_or(0);
                let mut column = vec![None; top + 2];
                for (j, code) in g.columns {
                    column[usize::from(code)] = Some(j);
                }
                Group { codes: g.codes, column }
            })
            .collect();
        let mut clusters: Vec<(Vec<usize>, usize)> = Vec::new();
        for (k, g) in groups.iter().enumerate() {
            match clusters.last_mut() {
                Some((members, cells)) if *cells * g.slots() <= CELLS => {
                    members.push(k);
                    *cells *= g.slots();
                }
                _ => clusters.push((vec![k], g.slots())),
            }
        }
        Groups { groups, clusters: clusters.into_iter().map(|(m, _)| m).collect() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Each row's cell in each cluster.
    pub(super) fn cells(&self, rows: Range<usize>) -> Vec<Vec<u32>> {
        self.clusters
            .iter()
            .map(|members| {
                let mut cells = vec![0u32; rows.len()];
                for &k in members {
                    let g = &self.groups[k];
                    let (n, last) = (g.slots() as u32, g.slots() as u32 - 1);
                    for (cell, &code) in cells.iter_mut().zip(&g.codes[rows.clone()]) {
                        *cell = *cell * n + u32::from(code).min(last);
                    }
                }
                cells
            })
            .collect()
    }

    /// Each slot of each group of a cluster, for every cell.
    fn decode(&self, members: &[usize]) -> Vec<Vec<usize>> {
        let cells: usize = members.iter().map(|&k| self.groups[k].slots()).product();
        (0..cells)
            .map(|cell| {
                let mut rest = cell;
                let mut slots = vec![0; members.len()];
                for (m, &k) in members.iter().enumerate().rev() {
                    let n = self.groups[k].slots();
                    slots[m] = rest % n;
                    rest /= n;
                }
                slots
            })
            .collect()
    }

    /// The part of the linear score that does not depend on the row: each group column's
    /// coefficient times its standardised 0, `−β·m/σ`.
    pub(super) fn offset(&self, beta: &[f64], means: &[f64], stds: &[f64]) -> f64 {
        self.groups.iter().flat_map(|g| g.columns()).map(|(_, j)| -beta[j] * means[j] / stds[j]).sum()
    }

    /// Adds to each row's score its hot columns' `β/σ`: one look-up per cluster.
    pub(super) fn add_scores(&self, cells: &[Vec<u32>], beta: &[f64], stds: &[f64], z: &mut [f64]) {
        for (members, cells) in self.clusters.iter().zip(cells) {
            let add: Vec<f64> = self
                .decode(members)
                .iter()
                .map(|slots| {
                    members.iter().zip(slots).fold(0.0, |sum, (&k, &s)| {
                        sum + self.groups[k].column[s].map_or(0.0, |j| beta[j] / stds[j])
                    })
                })
                .collect();
            for (zi, &cell) in z.iter_mut().zip(cells) {
                *zi += add[cell as usize];
            }
        }
    }

    /// Writes the group columns' gradient and Hessian entries of a block.
    pub(super) fn add_sums(
        &self,
        cells: &[Vec<u32>],
        b: &Block<'_>,
        means: &[f64],
        stds: &[f64],
        gradient: &mut [f64],
        hessian: &mut [f64],
    ) {
        let p = gradient.len();
        let d = p - 1;
        let put = |h: &mut [f64], a: usize, c: usize, v: f64| h[a.min(c) * p + a.max(c)] = v;
        let mut per_slot: Vec<PerSlot> = self
            .groups
            .iter()
            .map(|g| PerSlot {
                residual: vec![0.0; g.slots()],
                curvature: vec![0.0; g.slots()],
                cross: vec![0.0; g.slots() * b.width],
            })
            .collect();
        // Pairs of groups of one cluster: from its cells; of two clusters: row by row.
        let mut joint: Vec<((usize, usize), Vec<f64>)> = Vec::new();
        for (members, cells) in self.clusters.iter().zip(cells) {
            let n = members.iter().map(|&k| self.groups[k].slots()).product::<usize>();
            let (mut res, mut cur, mut cross) = (vec![0.0; n], vec![0.0; n], vec![0.0f32; n * b.width]);
            for ((&c, &r), &w) in cells.iter().zip(b.residual).zip(b.curvature) {
                res[c as usize] += r;
                cur[c as usize] += w;
            }
            scatter_rows(cells, b.curvature32, b.by_row, b.width, &mut cross);
            let decoded = self.decode(members);
            for (m, &g) in members.iter().enumerate() {
                let to = &mut per_slot[g];
                for (cell, slots) in decoded.iter().enumerate() {
                    let s = slots[m];
                    to.residual[s] += res[cell];
                    to.curvature[s] += cur[cell];
                    let (from, into) = (
                        &cross[cell * b.width..(cell + 1) * b.width],
                        &mut to.cross[s * b.width..(s + 1) * b.width],
                    );
                    into.iter_mut().zip(from).for_each(|(i, f)| *i += f);
                }
                for (m2, &h) in members.iter().enumerate().skip(m + 1) {
                    let nh = self.groups[h].slots();
                    let mut sums = vec![0.0; self.groups[g].slots() * nh];
                    for (cell, slots) in decoded.iter().enumerate() {
                        sums[slots[m] * nh + slots[m2]] += cur[cell];
                    }
                    joint.push(((g, h), sums));
                }
            }
        }
        for (ci, members) in self.clusters.iter().enumerate() {
            for &g in members {
                for (cj, others) in self.clusters.iter().enumerate().skip(ci + 1) {
                    for &h in others {
                        let nh = self.groups[h].slots();
                        let mut sums = vec![0.0; self.groups[g].slots() * nh];
                        let (sg, sh) =
                            (self.slots_of(g, &cells[ci], members), self.slots_of(h, &cells[cj], others));
                        for ((&s, &t), &w) in sg.iter().zip(&sh).zip(b.curvature) {
                            sums[s * nh + t] += w;
                        }
                        joint.push(((g, h), sums));
                    }
                }
            }
        }
        let (r_all, c_all) = (b.residual_sum, b.curvature_sum);
        for (g, sums) in self.groups.iter().zip(&per_slot) {
            for (s, a) in g.columns() {
                let (m, sd) = (means[a], stds[a]);
                gradient[a] = (sums.residual[s] - m * r_all) / sd;
                hessian[a * p + d] = (sums.curvature[s] - m * c_all) / sd;
                for (jj, &j) in b.dense.iter().enumerate() {
                    let v = (f64::from(sums.cross[s * b.width + jj]) - m * b.with_ones[jj]) / sd;
                    put(hessian, a, j, v);
                }
                // Two columns of one group are never both 1.
                for (t, c) in g.columns().filter(|&(t, _)| t >= s) {
                    let both = if s == t { sums.curvature[s] } else { 0.0 };
                    let v =
                        both - means[c] * sums.curvature[s] - m * sums.curvature[t] + m * means[c] * c_all;
                    put(hessian, a, c, v / (sd * stds[c]));
                }
            }
        }
        for ((g, h), sums) in joint {
            let (cg, ch) = (&per_slot[g].curvature, &per_slot[h].curvature);
            let nh = self.groups[h].slots();
            for (s, a) in self.groups[g].columns() {
                for (t, c) in self.groups[h].columns() {
                    let v =
                        sums[s * nh + t] - means[c] * cg[s] - means[a] * ch[t] + means[a] * means[c] * c_all;
                    put(hessian, a, c, v / (stds[a] * stds[c]));
                }
            }
        }
    }

    /// Group `g`'s slot of each row, from its cluster's cells.
    fn slots_of(&self, g: usize, cells: &[u32], members: &[usize]) -> Vec<usize> {
        let at = members.iter().position(|&k| k == g).expect("a member of its cluster");
        let below: usize = members[at + 1..].iter().map(|&k| self.groups[k].slots()).product();
        let n = self.groups[g].slots();
        cells.iter().map(|&c| c as usize / below % n).collect()
    }
}
