//! Exact top-k search over an i8 table without reading every full row: a compact first stage
//! bounds each item's score from above, and only items whose bound reaches the k-th best score are
//! scored exactly, so the results equal a full scan's.
//!
//! Built with the table: the `dims` principal directions of its rows (subspace iteration on their
//! second moments), and per row its coordinates in them as i8 codes with a scale, the error of
//! those codes, and the norm of what the directions miss. For a unit query `q` with coordinates
//! `qp` and remainder `q_R`, each row `x`'s exact score obeys
//! `q·x ≤ qp̂·p̂ + δ·‖p̂‖ + ‖qp‖·‖p − p̂‖ + ‖q_R‖·‖x_R‖` (Cauchy–Schwarz on each part; `qp̂` is the
//! query's i16 form, `δ` its rounding), and that bound costs `dims` multiply-adds, not `dim`.

use std::borrow::Cow;

use anyhow::Result;

use crate::catalogue::{Hit, TopK};

/// Directions kept per row: a table of `dim` values keeps `dim / 8` of them, at most this many.
const MAX_DIMS: usize = 256;
/// Rows sampled to find the directions (evenly spaced through the table).
const SAMPLE_ROWS: usize = 20_000;
/// Subspace iterations: enough for the leading directions to settle; their quality only decides
/// how many rows are scored exactly, never the results.
const ITERATIONS: usize = 8;
/// Added under every square root and to every bound, covering the rounding of f32 arithmetic.
const SLACK: f32 = 1e-5;
/// Largest code of a query's i16 form: `dim × 127 × QUERY_MAX` stays inside an i32 for rows of up
/// to [`MAX_DIM`] values.
const QUERY_MAX: f32 = 2_047.0;
/// The longest rows a prefilter serves (the i32 dot products stay exact up to it).
pub const MAX_DIM: usize = 8_192;
/// Per row: code scale, code error, remainder norm, norm of the decoded coordinates.
pub const ROW_TERMS: usize = 4;

/// How many directions a table of `dim`-value rows keeps.
pub fn dims_for(dim: usize) -> usize {
    (dim / 8).clamp(1, MAX_DIMS)
}

/// The first stage of a table, as stored: `basis` is `dims × dim` (one direction per row),
/// `terms` has [`ROW_TERMS`] values per item, `codes` `dims` per item.
#[derive(Debug, Clone, Copy)]
pub struct Prefilter<'a> {
    pub dims: usize,
    pub basis: &'a [f32],
    pub terms: &'a [f32],
    pub codes: &'a [i8],
}

/// A first stage being built: owned copies of [`Prefilter`]'s parts.
pub struct Built {
    pub dims: usize,
    pub basis: Vec<f32>,
    pub terms: Vec<f32>,
    pub codes: Vec<i8>,
}

/// Builds the first stage of a table of `count` rows of `dim` values; `decode(i, out)` writes row
/// `i` as the table decodes it. Rows are decoded a chunk at a time, so the table's rows are never
/// all held in f32.
pub fn build(count: usize, dim: usize, decode: impl Fn(usize, &mut [f32])) -> Built {
    const CHUNK: usize = 1024;
    let dims = dims_for(dim);
    let step = count.div_ceil(SAMPLE_ROWS).max(1);
    let mut sample = Vec::with_capacity(count.div_ceil(step) * dim);
    let mut row = vec![0f32; dim];
    for index in (0..count).step_by(step) {
        decode(index, &mut row);
        sample.extend_from_slice(&row);
    }
    let basis = principal_directions(&sample, dim, dims);
    drop(sample);
    // The coordinates are computed in f32: each is off by at most γ·‖x‖ (γ = dim·2⁻²⁴ / (1 −
    // dim·2⁻²⁴), the bound of a dim-term f32 dot product of unit directions), so all of them by at
    // most √dims·γ·‖x‖, which the code error and the remainder norm take in.
    let unit_roundoff = dim as f64 * f64::from(f32::EPSILON) / 2.0;
    let gamma = unit_roundoff / (1.0 - unit_roundoff);
    let mut terms = Vec::with_capacity(count * ROW_TERMS);
    let mut codes = Vec::with_capacity(count * dims);
    let mut coordinates = vec![0f32; CHUNK * dims];
    let mut chunk = vec![0f32; CHUNK * dim];
    for first in (0..count).step_by(CHUNK) {
        let chunk_rows = CHUNK.min(count - first);
        let chunk = &mut chunk[..chunk_rows * dim];
        for (offset, row) in chunk.chunks_exact_mut(dim).enumerate() {
            decode(first + offset, row);
        }
        // SAFETY: chunk is chunk_rows × dim and basis dims × dim (read as its transpose), both
        // row-major; coordinates holds chunk_rows × dims.
        unsafe {
            matrixmultiply::sgemm(
                chunk_rows,
                dim,
                dims,
                1.0,
                chunk.as_ptr(),
                dim as isize,
                1,
                basis.as_ptr(),
                1,
                dim as isize,
                0.0,
                coordinates.as_mut_ptr(),
                dims as isize,
                1,
            );
        }
        for (row, coordinates) in chunk.chunks_exact(dim).zip(coordinates.chunks_exact(dims)) {
            let norm = squared_norm(row).sqrt();
            let margin = (dims as f64).sqrt() * gamma * norm;
            let max = coordinates.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            let (mut error, mut decoded_norm) = (0f64, 0f64);
            for &c in coordinates {
                let code = (c / scale).round().clamp(-127.0, 127.0);
                codes.push(code as i8);
                let decoded = f64::from(code * scale);
                error += (f64::from(c) - decoded).powi(2);
                decoded_norm += decoded * decoded;
            }
            let kept = (squared_norm(coordinates).sqrt() - margin).max(0.0);
            terms.extend_from_slice(&[
                scale,
                (error.sqrt() + margin) as f32,
                ((norm * norm - kept * kept).max(0.0) + f64::from(SLACK)).sqrt() as f32,
                decoded_norm.sqrt() as f32,
            ]);
        }
    }
    Built {
        dims,
        basis,
        terms,
        codes,
    }
}

impl Built {
    pub fn view(&self) -> Prefilter<'_> {
        Prefilter {
            dims: self.dims,
            basis: &self.basis,
            terms: &self.terms,
            codes: &self.codes,
        }
    }
}

/// How a search went: items bounded, items scored exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchCounts {
    pub bounded: usize,
    pub scored: usize,
}

impl Prefilter<'_> {
    /// The exact top `k` among the items `allowed` accepts, best first: the same hits, in the same
    /// order, as scoring every item with `score(index)`. `row(index)` is the item's stored row (its
    /// scale and codes), from which a tight bound of its score is computed before scoring it. An
    /// error reading a row or scoring an item ends the search.
    pub fn nearest<'r>(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
        row: impl Fn(usize) -> Result<(f32, Cow<'r, [i8]>)>,
        score: impl Fn(usize) -> Result<f32>,
    ) -> Result<(Vec<Hit>, SearchCounts)> {
        let count = self.len();
        let mut counts = SearchCounts::default();
        if k == 0 {
            return Ok((Vec::new(), counts));
        }
        let coordinates = self.coordinates(query);
        let kept = squared_norm(&coordinates);
        let remainder = ((squared_norm(query) - kept).max(0.0) + f64::from(SLACK)).sqrt() as f32;
        let kept = kept.sqrt() as f32;
        let coarse = QueryCodes::new(&coordinates);
        let fine = QueryCodes::new(query);

        // Stage 1: a bound of every allowed item's score from its few codes; and the `probe`
        // items of highest bound, whose k-th best exact score only an item whose bound reaches
        // it can beat.
        let probe = 4 * k;
        let mut by_bound = TopK::new(probe);
        let mut bounds: Vec<(f32, usize)> = Vec::with_capacity(count);
        for index in 0..count {
            if !allowed(index) {
                continue;
            }
            let terms = &self.terms[index * ROW_TERMS..(index + 1) * ROW_TERMS];
            let codes = &self.codes[index * self.dims..(index + 1) * self.dims];
            let bound = coarse.bound(codes, terms[0], terms[3])
                + kept * terms[1]
                + remainder * terms[2]
                + SLACK;
            bounds.push((bound, index));
            by_bound.offer(Hit {
                index,
                score: bound,
            });
        }
        counts.bounded = bounds.len();
        let mut threshold = f32::NEG_INFINITY;
        if bounds.len() > k {
            let mut probe_top = TopK::new(k);
            for hit in by_bound.into_sorted() {
                probe_top.offer(Hit {
                    index: hit.index,
                    score: score(hit.index)?,
                });
            }
            threshold = probe_top.kth_score().unwrap_or(f32::NEG_INFINITY);
        }
        // Stage 2, in table order as a full scan goes (so ties fall the same way): a tight bound
        // from the item's whole row, then its exact score only where that bound can still enter.
        let mut top = TopK::new(k);
        for &(bound, index) in &bounds {
            let floor = top.kth_score().map_or(threshold, |kth| kth.max(threshold));
            if bound < floor {
                continue;
            }
            let (scale, codes) = row(index)?;
            let terms = &self.terms[index * ROW_TERMS..(index + 1) * ROW_TERMS];
            let row_norm = ((terms[3] + terms[1]).powi(2) + terms[2].powi(2)).sqrt();
            if fine.bound(&codes, scale, row_norm) + SLACK < floor {
                continue;
            }
            counts.scored += 1;
            top.offer(Hit {
                index,
                score: score(index)?,
            });
        }
        Ok((top.into_sorted(), counts))
    }

    /// Items in the table.
    pub fn len(&self) -> usize {
        self.terms.len() / ROW_TERMS
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// A vector's coordinates in the directions.
    pub fn coordinates(&self, vector: &[f32]) -> Vec<f32> {
        self.basis
            .chunks_exact(vector.len())
            .map(|direction| dot_f64(direction, vector) as f32)
            .collect()
    }

    /// Item `index`'s codes and their scale.
    pub fn codes(&self, index: usize) -> (&[i8], f32) {
        (
            &self.codes[index * self.dims..(index + 1) * self.dims],
            self.terms[index * ROW_TERMS],
        )
    }

    /// Item `index`'s coordinates as its codes store them, into `out` (`dims` values).
    pub fn decode_coordinates(&self, index: usize, out: &mut [f32]) {
        let scale = self.terms[index * ROW_TERMS];
        let codes = &self.codes[index * self.dims..(index + 1) * self.dims];
        for (o, c) in out.iter_mut().zip(codes) {
            *o = f32::from(*c) * scale;
        }
    }

    /// Estimates of the scores of a query with `coordinates` (from [`Prefilter::coordinates`]):
    /// the dot products with the items' decoded coordinates, for approximate search.
    pub fn estimator(&self, coordinates: &[f32]) -> Estimator<'_> {
        Estimator {
            prefilter: *self,
            query: QueryCodes::new(coordinates),
        }
    }
}

/// Scores items from their codes alone: see [`Prefilter::estimator`].
pub struct Estimator<'a> {
    prefilter: Prefilter<'a>,
    query: QueryCodes,
}

impl Estimator<'_> {
    /// The estimated score of item `index`: what the leading directions see of it.
    pub fn estimate(&self, index: usize) -> f32 {
        let p = &self.prefilter;
        let codes = &p.codes[index * p.dims..(index + 1) * p.dims];
        self.estimate_codes(codes, p.terms[index * ROW_TERMS])
    }

    /// A coarser estimate from the first `codes.len()` of an item's codes and its code scale:
    /// what the few leading directions see of it.
    pub fn estimate_codes(&self, codes: &[i8], scale: f32) -> f32 {
        dot_i8_i16(codes, &self.query.codes[..codes.len()]) as f32 * self.query.scale * scale
    }
}

/// A vector in i16 form, `values ≈ scale · codes`, for integer dot products with i8 rows.
struct QueryCodes {
    codes: Vec<i16>,
    scale: f32,
    /// `‖values − scale · codes‖`.
    rounding: f32,
}

impl QueryCodes {
    fn new(values: &[f32]) -> Self {
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / QUERY_MAX } else { 1.0 };
        let codes: Vec<i16> = values.iter().map(|v| (v / scale).round() as i16).collect();
        let rounding = values
            .iter()
            .zip(&codes)
            .map(|(v, c)| f64::from(v - f32::from(*c) * scale).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        Self {
            codes,
            scale,
            rounding,
        }
    }

    /// An upper bound of `values · (row_scale · row)`, for a row of Euclidean norm at most
    /// `row_norm` once scaled.
    fn bound(&self, row: &[i8], row_scale: f32, row_norm: f32) -> f32 {
        dot_i8_i16(row, &self.codes) as f32 * self.scale * row_scale + self.rounding * row_norm
    }
}

fn squared_norm(values: &[f32]) -> f64 {
    values.iter().map(|v| f64::from(*v).powi(2)).sum()
}

/// `Σ a[i]·b[i]` accumulated in f64 (its rounding is negligible beside the bounds' slack), in
/// independent lanes so that the compiler vectorises it.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += f64::from(x[i]) * f64::from(y[i]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ codes[i]·query[i]` in i32 (exact: the caller keeps `len × 127 × |query|` inside an i32), with
/// AVX2 on x86_64 where the CPU has it and NEON on aarch64.
pub fn dot_i8_i16(codes: &[i8], query: &[i16]) -> i32 {
    assert_eq!(codes.len(), query.len(), "dot of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { simd::dot_avx2(codes, query) };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of every aarch64 CPU.
        return unsafe { simd::dot_neon(codes, query) };
    }
    #[allow(unreachable_code)]
    dot_i8_i16_scalar(codes, query)
}

/// The portable form of [`dot_i8_i16`], which the SIMD forms are tested against.
pub fn dot_i8_i16_scalar(codes: &[i8], query: &[i16]) -> i32 {
    codes
        .iter()
        .zip(query)
        .map(|(c, q)| i32::from(*c) * i32::from(*q))
        .sum()
}

mod simd {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_avx2(codes: &[i8], query: &[i16]) -> i32 {
        use std::arch::x86_64::*;
        let chunks = codes.len() / 16;
        let mut acc = _mm256_setzero_si256();
        for i in 0..chunks {
            // 16 codes widened to i16, multiplied pairwise with 16 query values and summed in pairs
            // into 8 i32 lanes (VPMADDWD).
            let c = _mm_loadu_si128(codes.as_ptr().add(i * 16).cast());
            let q = _mm256_loadu_si256(query.as_ptr().add(i * 16).cast());
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepi8_epi16(c), q));
        }
        let lanes = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256(acc, 1),
        );
        let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32(lanes, 0b01_00_11_10));
        let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32(lanes, 0b10_11_00_01));
        _mm_cvtsi128_si32(lanes)
            + super::dot_i8_i16_scalar(&codes[chunks * 16..], &query[chunks * 16..])
    }

    #[cfg(target_arch = "aarch64")]
    pub unsafe fn dot_neon(codes: &[i8], query: &[i16]) -> i32 {
        use std::arch::aarch64::*;
        // 32 codes an iteration (two loads of 16, widened to i16 by SXTL), multiply-accumulated
        // into i32 lanes (SMLAL/SMLAL2): fewer loop instructions per code than 16 at a time.
        let chunks = codes.len() / 32;
        let (mut low, mut high) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for i in 0..chunks {
            let c = codes.as_ptr().add(i * 32);
            let q = query.as_ptr().add(i * 32);
            for half in 0..2 {
                let c = vld1q_s8(c.add(half * 16));
                let q = q.add(half * 16);
                let (c_low, c_high) = (vmovl_s8(vget_low_s8(c)), vmovl_high_s8(c));
                let (q_low, q_high) = (vld1q_s16(q), vld1q_s16(q.add(8)));
                low = vmlal_s16(low, vget_low_s16(c_low), vget_low_s16(q_low));
                high = vmlal_high_s16(high, c_low, q_low);
                low = vmlal_s16(low, vget_low_s16(c_high), vget_low_s16(q_high));
                high = vmlal_high_s16(high, c_high, q_high);
            }
        }
        vaddvq_s32(vaddq_s32(low, high))
            + super::dot_i8_i16_scalar(&codes[chunks * 32..], &query[chunks * 32..])
    }
}

/// The `dims` leading eigenvectors of the second-moment matrix of `sample`'s rows, orthonormal,
/// as `dims × dim`.
fn principal_directions(sample: &[f32], dim: usize, dims: usize) -> Vec<f32> {
    let sampled = sample.len() / dim;
    // moments = sampleᵀ · sample (dim × dim), plus a small ridge so that every direction has
    // weight and the iteration never meets a zero column in a table of few rows.
    let mut moments = vec![0f32; dim * dim];
    // SAFETY: the pointers and strides describe `sample` (sampled × dim, row-major) read as its
    // transpose and `moments` (dim × dim, row-major), all in bounds.
    unsafe {
        matrixmultiply::sgemm(
            dim,
            sampled,
            dim,
            1.0,
            sample.as_ptr(),
            1,
            dim as isize,
            sample.as_ptr(),
            dim as isize,
            1,
            0.0,
            moments.as_mut_ptr(),
            dim as isize,
            1,
        );
    }
    let trace: f32 = (0..dim).map(|i| moments[i * dim + i]).sum();
    let ridge = (trace / dim as f32).max(f32::MIN_POSITIVE) * 1e-4;
    for i in 0..dim {
        moments[i * dim + i] += ridge;
    }
    // Subspace iteration on `directions` (dim × dims, column j = direction j), seeded fixedly.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut directions: Vec<f32> = (0..dim * dims)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    orthonormalise_columns(&mut directions, dim, dims);
    let mut product = vec![0f32; dim * dims];
    for _ in 0..ITERATIONS {
        // SAFETY: moments is dim × dim, directions and product dim × dims, all row-major.
        unsafe {
            matrixmultiply::sgemm(
                dim,
                dim,
                dims,
                1.0,
                moments.as_ptr(),
                dim as isize,
                1,
                directions.as_ptr(),
                dims as isize,
                1,
                0.0,
                product.as_mut_ptr(),
                dims as isize,
                1,
            );
        }
        std::mem::swap(&mut directions, &mut product);
        orthonormalise_columns(&mut directions, dim, dims);
    }
    // Transposed to one direction per row.
    let mut basis = vec![0f32; dims * dim];
    for (i, row) in directions.chunks_exact(dims).enumerate() {
        for (j, value) in row.iter().enumerate() {
            basis[j * dim + i] = *value;
        }
    }
    basis
}

/// Modified Gram–Schmidt in f64 on the columns of `matrix` (rows × columns, row-major).
fn orthonormalise_columns(matrix: &mut [f32], rows: usize, columns: usize) {
    let mut column_major: Vec<Vec<f64>> = (0..columns)
        .map(|j| {
            (0..rows)
                .map(|i| f64::from(matrix[i * columns + j]))
                .collect()
        })
        .collect();
    for j in 0..columns {
        let (done, rest) = column_major.split_at_mut(j);
        let current = &mut rest[0];
        for _ in 0..2 {
            for previous in done.iter() {
                let projection: f64 = previous
                    .iter()
                    .zip(current.iter())
                    .map(|(a, b)| a * b)
                    .sum();
                for (c, p) in current.iter_mut().zip(previous) {
                    *c -= projection * p;
                }
            }
        }
        let norm = current.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 1e-12 {
            current.iter_mut().for_each(|v| *v /= norm);
        } else {
            // A column the others span: any unit vector orthogonal to them will do.
            current.iter_mut().for_each(|v| *v = 0.0);
            let free = (0..rows)
                .find(|&i| done.iter().all(|p| p[i].abs() < 1e-9))
                .unwrap_or(j % rows);
            current[free] = 1.0;
        }
    }
    for (j, column) in column_major.iter().enumerate() {
        for (i, value) in column.iter().enumerate() {
            matrix[i * columns + j] = *value as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded stream of values in [-1, 1).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_simd_dot_equals_the_scalar_one_at_every_length() {
        let codes: Vec<i8> = values(3, 300).iter().map(|v| (v * 127.0) as i8).collect();
        let query: Vec<i16> = values(4, 300)
            .iter()
            .map(|v| (v * QUERY_MAX) as i16)
            .collect();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 256, 300] {
            assert_eq!(
                dot_i8_i16(&codes[..len], &query[..len]),
                dot_i8_i16_scalar(&codes[..len], &query[..len]),
                "length {len}"
            );
        }
        let extremes = vec![-127i8; 256];
        let query = vec![-(QUERY_MAX as i16); 256];
        assert_eq!(dot_i8_i16(&extremes, &query), 256 * 127 * QUERY_MAX as i32);
    }

    #[test]
    fn the_directions_are_orthonormal_and_find_where_the_rows_lie() {
        // Rows in a 3-d subspace of 64-d space, with little noise beside it.
        let (dim, count) = (64, 400);
        let coefficients = values(5, count * 3);
        let noise = values(6, count * dim);
        let axes = [0usize, 10, 40];
        let mut rows = vec![0f32; count * dim];
        for r in 0..count {
            for (a, axis) in axes.iter().enumerate() {
                rows[r * dim + axis] = coefficients[r * 3 + a];
            }
            for i in 0..dim {
                rows[r * dim + i] += 0.001 * noise[r * dim + i];
            }
        }
        let basis = principal_directions(&rows, dim, 8);
        for i in 0..8 {
            for j in 0..8 {
                let d = dot_f64(
                    &basis[i * dim..(i + 1) * dim],
                    &basis[j * dim..(j + 1) * dim],
                );
                assert!(
                    (d - f64::from(u8::from(i == j))).abs() < 1e-5,
                    "{i}·{j} = {d}"
                );
            }
        }
        // The leading directions span the three axes: each axis is kept whole.
        for axis in [0, 10, 40] {
            let kept: f64 = basis
                .chunks_exact(dim)
                .take(3)
                .map(|d| f64::from(d[axis]).powi(2))
                .sum();
            assert!(kept > 0.999, "axis {axis} kept {kept}");
        }
    }
}
