//! A column-major feature matrix.
//!
//! Values are `f32`: half the memory and memory traffic of `f64`, and well within the precision
//! that the features carry. Features are computed in `f64` and rounded to `f32` the same way in
//! training and scoring, so both see the same numbers; the solver accumulates in `f64`.
//!
//! Each column is a vector of its own, so a matrix is built from its columns without copying
//! them. The columns of a one-hot group (a categorical feature: exactly one 1 per row) share
//! one code per row instead of a float per row and column: a group of 13 columns takes 2 bytes
//! a row rather than 52. Readers see the same `0.0`/`1.0` values either way.

use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
enum Column {
    Dense(Vec<f32>),
    /// 1 in the rows whose code is `code`, 0 elsewhere: one column of a one-hot group.
    Indicator {
        codes: Arc<Vec<u16>>,
        code: u16,
    },
}

/// `rows × cols` values, column by column.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    columns: Vec<Column>,
}

impl Matrix {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix { rows, columns: (0..cols).map(|_| Column::Dense(vec![0.0; rows])).collect() }
    }

    /// A matrix from its columns, which must all have the same length.
    pub fn from_columns(columns: Vec<Vec<f32>>) -> Matrix {
        let rows = columns.first().map_or(0, Vec::len);
        assert!(columns.iter().all(|c| c.len() == rows), "columns of different lengths");
        Matrix { rows, columns: columns.into_iter().map(Column::Dense).collect() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.columns.len()
    }

    /// Column `j`'s values in the rows `range`: borrowed from a dense column, written into
    /// `scratch` for a column of a one-hot group.
    pub fn column_values<'a>(
        &'a self,
        j: usize,
        range: Range<usize>,
        scratch: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        match &self.columns[j] {
            Column::Dense(v) => &v[range],
            Column::Indicator { codes, code } => {
                scratch.clear();
                scratch.extend(codes[range].iter().map(|c| if c == code { 1.0 } else { 0.0 }));
                scratch
            }
        }
    }

    /// Column `j` as it is kept: values, or the codes of its one-hot group and its own code.
    pub fn column(&self, j: usize) -> ColumnRef<'_> {
        match &self.columns[j] {
            Column::Dense(v) => ColumnRef::Dense(v),
            Column::Indicator { codes, code } => ColumnRef::Indicator { codes, code: *code },
        }
    }

    /// The columns by kind: the dense ones (in column order), and each one-hot group as its
    /// codes (one per row) with the column of each code that has one. Arithmetic that knows
    /// the groups can work on a code per row instead of a value per row and column.
    pub fn layout(&self) -> Layout<'_> {
        let mut dense = Vec::new();
        let mut groups: Vec<(*const Vec<u16>, OneHot<'_>)> = Vec::new();
        for (j, c) in self.columns.iter().enumerate() {
            match c {
                Column::Dense(v) => dense.push((j, v.as_slice())),
                Column::Indicator { codes, code } => {
                    let key = Arc::as_ptr(codes);
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, g)) => g.columns.push((j, *code)),
                        None => groups.push((key, OneHot { codes, columns: vec![(j, *code)] })),
                    }
                }
            }
        }
        Layout { dense, groups: groups.into_iter().map(|(_, g)| g).collect() }
    }

    pub fn get(&self, row: usize, col: usize) -> f32 {
        match &self.columns[col] {
            Column::Dense(v) => v[row],
            Column::Indicator { codes, code } => f32::from(u8::from(codes[row] == *code)),
        }
    }

    /// The rows `range`, as a matrix of their own.
    pub fn slice_rows(&self, range: Range<usize>) -> Matrix {
        self.map_rows(range.len(), |v| v[range.clone()].to_vec(), |c| c[range.clone()].to_vec())
    }

    /// Rows picked by index, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Matrix {
        self.map_rows(
            rows.len(),
            |v| rows.iter().map(|&i| v[i]).collect(),
            |c| rows.iter().map(|&i| c[i]).collect(),
        )
    }

    fn map_rows(
        &self,
        rows: usize,
        dense: impl Fn(&[f32]) -> Vec<f32>,
        codes: impl Fn(&[u16]) -> Vec<u16>,
    ) -> Matrix {
        // Columns of one group share their codes in the copy too.
        let mut copied: Vec<(*const Vec<u16>, Arc<Vec<u16>>)> = Vec::new();
        let columns = self
            .columns
            .iter()
            .map(|c| match c {
                Column::Dense(v) => Column::Dense(dense(v)),
                Column::Indicator { codes: shared, code } => {
                    let key = Arc::as_ptr(shared);
                    let picked = match copied.iter().find(|(k, _)| *k == key) {
                        Some((_, done)) => done.clone(),
                        None => {
                            let done = Arc::new(codes(shared));
                            copied.push((key, done.clone()));
                            done
                        }
                    };
                    Column::Indicator { codes: picked, code: *code }
                }
            })
            .collect();
        Matrix { rows, columns }
    }
}

impl Matrix {
    /// The rows of several matrices of the same columns, interleaved: row `i` is the next row
    /// of matrix `picks[i]`. The parts are consumed a column at a time, so the whole takes
    /// about one column more memory than the parts.
    ///
    /// # Panics
    /// When the parts differ in columns or kinds, or `picks` does not take every row of every
    /// part exactly once.
    pub fn interleave(parts: Vec<Matrix>, picks: &[u8]) -> Matrix {
        let mut counts = vec![0usize; parts.len()];
        for &p in picks {
            counts[usize::from(p)] += 1;
        }
        assert!(
            parts.iter().zip(&counts).all(|(m, &n)| m.rows == n),
            "picks take {counts:?} rows of parts of {:?}",
            parts.iter().map(|m| m.rows).collect::<Vec<_>>()
        );
        let cols = parts.first().map_or(0, Matrix::cols);
        assert!(parts.iter().all(|m| m.cols() == cols), "parts of different widths");
        let mut parts: Vec<Vec<Option<Column>>> =
            parts.into_iter().map(|m| m.columns.into_iter().map(Some).collect()).collect();
        // A group's codes are merged once, for its first column, and shared by the others.
        let mut merged_codes: Vec<(*const Vec<u16>, Arc<Vec<u16>>)> = Vec::new();
        let mut columns = Vec::with_capacity(cols);
        for j in 0..cols {
            let taken: Vec<Column> =
                parts.iter_mut().map(|p| p[j].take().expect("each column taken once")).collect();
            columns.push(match &taken[0] {
                Column::Dense(_) => {
                    let values: Vec<&Vec<f32>> = taken
                        .iter()
                        .map(|c| match c {
                            Column::Dense(v) => v,
                            Column::Indicator { .. } => panic!("column {j} is dense in one part only"),
                        })
                        .collect();
                    Column::Dense(interleave(&values, picks))
                }
                Column::Indicator { codes: first, code } => {
                    let key = Arc::as_ptr(first);
                    let codes = match merged_codes.iter().find(|(k, _)| *k == key) {
                        Some((_, done)) => done.clone(),
                        None => {
                            let codes: Vec<&Vec<u16>> = taken
                                .iter()
                                .map(|c| match c {
                                    Column::Indicator { codes, .. } => &**codes,
                                    Column::Dense(_) => panic!("column {j} is one-hot in one part only"),
                                })
                                .collect();
                            let done = Arc::new(interleave(&codes, picks));
                            merged_codes.push((key, done.clone()));
                            done
                        }
                    };
                    Column::Indicator { codes, code: *code }
                }
            });
        }
        Matrix { rows: picks.len(), columns }
    }
}

/// `picks.len()` values: the next value of part `picks[i]` each time.
pub fn interleave<T: Copy>(parts: &[&Vec<T>], picks: &[u8]) -> Vec<T> {
    let mut at = vec![0usize; parts.len()];
    picks
        .iter()
        .map(|&p| {
            let p = usize::from(p);
            let v = parts[p][at[p]];
            at[p] += 1;
            v
        })
        .collect()
}

/// One column as it is kept (see [`Matrix::column`]).
#[derive(Debug, Clone, Copy)]
pub enum ColumnRef<'a> {
    Dense(&'a [f32]),
    /// 1 in the rows whose code is `code`, 0 elsewhere.
    Indicator {
        codes: &'a [u16],
        code: u16,
    },
}

/// A matrix's columns by kind (see [`Matrix::layout`]).
#[derive(Debug)]
pub struct Layout<'a> {
    /// Column index and values.
    pub dense: Vec<(usize, &'a [f32])>,
    pub groups: Vec<OneHot<'a>>,
}

/// The columns of one one-hot group: column `j` is 1 in the rows whose code is its code.
/// A code without a column is 0 in every column of the group.
#[derive(Debug)]
pub struct OneHot<'a> {
    pub codes: &'a [u16],
    /// Column index and code, in column order.
    pub columns: Vec<(usize, u16)>,
}

/// Builds a [`Matrix`] a row at a time. The column ranges given as one-hot groups must hold
/// exactly one 1 (the rest 0) in every row; they are kept as one code per row.
pub struct MatrixBuilder {
    width: usize,
    dense: Vec<(usize, Vec<f32>)>,
    groups: Vec<(Range<usize>, Vec<u16>)>,
}

impl MatrixBuilder {
    /// For rows of `width` values, room for `capacity` rows.
    ///
    /// # Panics
    /// When a group reaches past `width`, overlaps another or has more than 65,535 columns.
    pub fn new(width: usize, one_hot_groups: &[Range<usize>], capacity: usize) -> MatrixBuilder {
        let mut in_group = vec![false; width];
        for g in one_hot_groups {
            assert!(
                g.end <= width && g.len() < usize::from(u16::MAX),
                "one-hot group {g:?} of a row of {width}"
            );
            for j in g.clone() {
                assert!(!in_group[j], "one-hot groups overlap at column {j}");
                in_group[j] = true;
            }
        }
        MatrixBuilder {
            width,
            dense: (0..width).filter(|&j| !in_group[j]).map(|j| (j, Vec::with_capacity(capacity))).collect(),
            groups: one_hot_groups.iter().map(|g| (g.clone(), Vec::with_capacity(capacity))).collect(),
        }
    }

    /// Adds a row of `width` values.
    ///
    /// # Panics
    /// When the row has another width, or a group of it is not exactly one 1 among 0s.
    pub fn push(&mut self, row: &[f32]) {
        assert_eq!(row.len(), self.width, "a row of {} values for a matrix of {}", row.len(), self.width);
        for (j, column) in &mut self.dense {
            column.push(row[*j]);
        }
        for (range, codes) in &mut self.groups {
            let values = &row[range.clone()];
            let hot = values.iter().position(|&v| v == 1.0);
            assert!(
                hot.is_some() && values.iter().filter(|&&v| v != 0.0).count() == 1,
                "columns {range:?} are not one-hot: {values:?}"
            );
            codes.push(hot.unwrap_or_default() as u16);
        }
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.dense.first().map(|(_, c)| c.len()).or(self.groups.first().map(|(_, c)| c.len())).unwrap_or(0)
    }

    /// Writes the rows pushed so far and empties the builder: each dense column's values, then
    /// each group's codes, little-endian ([`Self::fill_from`] reads them back).
    pub fn drain_to(&mut self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for (_, column) in &mut self.dense {
            bytes.clear();
            bytes.extend(column.iter().flat_map(|v| v.to_le_bytes()));
            w.write_all(&bytes)?;
            column.clear();
        }
        for (_, codes) in &mut self.groups {
            bytes.clear();
            bytes.extend(codes.iter().flat_map(|v| v.to_le_bytes()));
            w.write_all(&bytes)?;
            codes.clear();
        }
        Ok(())
    }

    /// Reads `rows` rows written by [`Self::drain_to`] of a builder of the same shape into
    /// this (empty) one.
    pub fn fill_from(&mut self, rows: usize, r: &mut impl std::io::Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for (_, column) in &mut self.dense {
            bytes.resize(rows * 4, 0);
            r.read_exact(&mut bytes)?;
            column.clear();
            column.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        for (_, codes) in &mut self.groups {
            bytes.resize(rows * 2, 0);
            r.read_exact(&mut bytes)?;
            codes.clear();
            codes.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
        }
        Ok(())
    }

    pub fn finish(self) -> Matrix {
        let rows = self.rows();
        let mut columns: Vec<Option<Column>> = (0..self.width).map(|_| None).collect();
        for (j, c) in self.dense {
            columns[j] = Some(Column::Dense(c));
        }
        for (range, codes) in self.groups {
            let codes = Arc::new(codes);
            for (k, j) in range.enumerate() {
                columns[j] = Some(Column::Indicator { codes: codes.clone(), code: k as u16 });
            }
        }
        let columns: Vec<Column> = columns.into_iter().flatten().collect();
        Matrix { rows, columns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_groups_read_back_as_the_values_pushed() {
        let rows: Vec<[f32; 5]> =
            vec![[0.5, 1.0, 0.0, 0.0, -2.0], [1.5, 0.0, 0.0, 1.0, 3.0], [2.5, 0.0, 1.0, 0.0, 0.25]];
        let mut b = MatrixBuilder::new(5, std::slice::from_ref(&(1..4)), 2);
        for r in &rows {
            b.push(r);
        }
        let m = b.finish();
        let dense = Matrix::from_columns((0..5).map(|j| rows.iter().map(|r| r[j]).collect()).collect());
        assert_eq!((m.rows(), m.cols()), (3, 5));
        let mut scratch = Vec::new();
        for j in 0..5 {
            let mut other = Vec::new();
            assert_eq!(m.column_values(j, 0..3, &mut scratch), dense.column_values(j, 0..3, &mut other));
            assert_eq!(
                m.column_values(j, 1..3, &mut scratch),
                &dense.column_values(j, 0..3, &mut other)[1..]
            );
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(m.get(i, j), r[j]);
            }
        }
        let picked = m.select_rows(&[2, 0]);
        assert_eq!(picked.get(0, 2), 1.0);
        assert_eq!(picked.get(1, 1), 1.0);
        assert_eq!(picked.get(1, 2), 0.0);
        assert_eq!(m.slice_rows(1..3).get(0, 3), 1.0);
    }

    #[test]
    fn rows_drained_to_bytes_read_back_as_the_same_matrix() {
        let push = |b: &mut MatrixBuilder, i: usize| {
            let mut r = [i as f32 * 0.25, 0.0, 0.0, 0.0, -(i as f32)];
            r[1 + i % 3] = 1.0;
            b.push(&r);
        };
        let groups = std::slice::from_ref(&(1..4));
        let mut written = MatrixBuilder::new(5, groups, 0);
        let mut bytes = Vec::new();
        for i in 0..7 {
            push(&mut written, i);
        }
        written.drain_to(&mut bytes).unwrap();
        assert_eq!((written.rows(), bytes.len()), (0, 7 * (2 * 4 + 2)));
        let mut read = MatrixBuilder::new(5, groups, 0);
        read.fill_from(7, &mut bytes.as_slice()).unwrap();
        let mut whole = MatrixBuilder::new(5, groups, 7);
        for i in 0..7 {
            push(&mut whole, i);
        }
        assert_eq!(read.finish(), whole.finish());
    }

    #[test]
    fn interleaved_parts_are_the_rows_in_the_order_picked() {
        let rows: Vec<[f32; 4]> = (0..9)
            .map(|i| {
                let mut r = [i as f32 * 0.5, 0.0, 0.0, 0.0];
                r[1 + i % 3] = 1.0;
                r
            })
            .collect();
        let picks: Vec<u8> = vec![0, 1, 1, 2, 0, 2, 2, 1, 0];
        let build = |part: Option<u8>| {
            let mut b = MatrixBuilder::new(4, std::slice::from_ref(&(1..4)), 9);
            for (r, &p) in rows.iter().zip(&picks) {
                if part.is_none_or(|q| q == p) {
                    b.push(r);
                }
            }
            b.finish()
        };
        let whole = Matrix::interleave(vec![build(Some(0)), build(Some(1)), build(Some(2))], &picks);
        assert_eq!(whole, build(None));
        // The group's columns still share one vector of codes.
        assert_eq!(whole.layout().groups.len(), 1);
    }

    #[test]
    #[should_panic(expected = "picks take")]
    fn picks_that_miss_a_row_are_refused() {
        let m = Matrix::from_columns(vec![vec![1.0, 2.0]]);
        Matrix::interleave(vec![m.clone(), m], &[0, 1, 1]);
    }

    #[test]
    #[should_panic(expected = "not one-hot")]
    fn a_group_without_exactly_one_hot_value_is_refused() {
        MatrixBuilder::new(3, std::slice::from_ref(&(0..3)), 1).push(&[1.0, 1.0, 0.0]);
    }
}
