//! Cells for approximate search in a large i8 table: k-means centroids in the space of its
//! prefilter's leading directions, and the items grouped by nearest centroid, with the first few
//! of each item's prefilter codes copied in cell order. A search ranks the items of the cells
//! nearest the query by those few codes (read in sequence), the best of them by all their codes,
//! and scores the best of those exactly from their full rows: it reads a few percent of the table.

use anyhow::{ensure, Result};

use crate::catalogue::{dot, Hit, TopK};
use crate::prefilter::{Prefilter, SearchCounts};

/// Tables of this many items or more get cells unless told otherwise.
pub const DEFAULT_FROM: usize = 200_000;
/// Sampled rows per cell that place the centroids.
const SAMPLE_PER_CELL: usize = 32;
/// Rounds of k-means on the sample.
const ITERATIONS: usize = 12;
/// A search visits this share of the cells, nearest first (and at least [`MIN_PROBED`]).
const PROBED_PER_THOUSAND: usize = 30;
const MIN_PROBED: usize = 8;
/// Leading codes per item copied in cell order, for the first ranking.
pub const SHORT_DIMS: usize = 64;
/// Items ranked by all their codes per search: the best of the first ranking.
const SHORTLISTED: usize = 2048;
/// Items re-scored exactly from their full rows per search: the best of the second ranking.
const RESCORED: usize = 256;
/// Rows per block when assigning rows to cells.
const BLOCK: usize = 4096;

/// How many cells a table of `count` items gets: about twice the square root.
pub fn cells_for(count: usize) -> usize {
    ((2.0 * (count as f64).sqrt()).round() as usize).clamp(1, count.max(1))
}

/// How many of `cells` cells a search visits.
fn probed(cells: usize) -> usize {
    (cells * PROBED_PER_THOUSAND)
        .div_ceil(1000)
        .max(MIN_PROBED)
        .min(cells)
}

/// How many leading codes per item a table of `dims`-code prefilter rows copies in cell order.
pub fn short_dims(dims: usize) -> usize {
    SHORT_DIMS.min(dims)
}

/// The cells of a table, as stored: `centroids` is `cells × dims`; the items of cell `c` are
/// `members[offsets[c]..offsets[c + 1]]`, in table order. `short_scales` and `short_codes` hold,
/// member by member, each item's code scale and its first [`short_dims`] codes.
#[derive(Debug, Clone, Copy)]
pub struct Cells<'a> {
    pub centroids: &'a [f32],
    pub offsets: &'a [u32],
    pub members: &'a [u32],
    pub short_scales: &'a [f32],
    pub short_codes: &'a [i8],
}

/// Cells being built: owned copies of [`Cells`]' parts.
pub struct Built {
    pub centroids: Vec<f32>,
    pub offsets: Vec<u32>,
    pub members: Vec<u32>,
    pub short_scales: Vec<f32>,
    pub short_codes: Vec<i8>,
}

/// Places `cells` centroids by k-means on an even sample of the items' decoded coordinates, then
/// puts every item in the cell of its nearest centroid.
pub fn build(prefilter: &Prefilter, cells: usize) -> Built {
    let (dims, count) = (prefilter.dims, prefilter.len());
    let cells = cells.clamp(1, count.max(1));
    let step = count.div_ceil(cells * SAMPLE_PER_CELL).max(1);
    let mut sample = Vec::with_capacity(count.div_ceil(step) * dims);
    let mut row = vec![0f32; dims];
    for index in (0..count).step_by(step) {
        prefilter.decode_coordinates(index, &mut row);
        sample.extend_from_slice(&row);
    }
    let sampled = sample.len() / dims;
    // Seeded with sampled rows spread evenly through the sample.
    let mut centroids: Vec<f32> = (0..cells)
        .flat_map(|c| {
            let at = c * sampled / cells;
            sample[at * dims..(at + 1) * dims].to_vec()
        })
        .collect();
    for _ in 0..ITERATIONS {
        let assignment = nearest_centroids(&sample, &centroids, dims);
        let mut sums = vec![0f64; cells * dims];
        let mut sizes = vec![0usize; cells];
        for (point, &cell) in sample.chunks_exact(dims).zip(&assignment) {
            let cell = cell as usize;
            sizes[cell] += 1;
            for (s, v) in sums[cell * dims..(cell + 1) * dims].iter_mut().zip(point) {
                *s += f64::from(*v);
            }
        }
        // An emptied cell keeps its centroid.
        for (cell, size) in sizes.iter().enumerate().filter(|(_, size)| **size > 0) {
            for (c, s) in centroids[cell * dims..(cell + 1) * dims]
                .iter_mut()
                .zip(&sums[cell * dims..(cell + 1) * dims])
            {
                *c = (*s / *size as f64) as f32;
            }
        }
    }
    drop(sample);
    let mut cell_of = Vec::with_capacity(count);
    let mut block = vec![0f32; BLOCK * dims];
    for first in (0..count).step_by(BLOCK) {
        let rows = BLOCK.min(count - first);
        for (offset, row) in block[..rows * dims].chunks_exact_mut(dims).enumerate() {
            prefilter.decode_coordinates(first + offset, row);
        }
        cell_of.extend(nearest_centroids(&block[..rows * dims], &centroids, dims));
    }
    // Counting sort: each cell's members in table order.
    let mut offsets = vec![0u32; cells + 1];
    for &cell in &cell_of {
        offsets[cell as usize + 1] += 1;
    }
    for c in 0..cells {
        offsets[c + 1] += offsets[c];
    }
    let mut next = offsets.clone();
    let mut members = vec![0u32; count];
    for (index, &cell) in cell_of.iter().enumerate() {
        members[next[cell as usize] as usize] = index as u32;
        next[cell as usize] += 1;
    }
    let short = short_dims(dims);
    let mut short_scales = Vec::with_capacity(count);
    let mut short_codes = Vec::with_capacity(count * short);
    for &member in &members {
        let (codes, scale) = prefilter.codes(member as usize);
        short_scales.push(scale);
        short_codes.extend_from_slice(&codes[..short]);
    }
    Built {
        centroids,
        offsets,
        members,
        short_scales,
        short_codes,
    }
}

/// The nearest centroid (Euclidean) of each of `points` (`n × dims`): the largest
/// `point · centroid − ‖centroid‖² / 2`, by blocks of one matrix product each.
fn nearest_centroids(points: &[f32], centroids: &[f32], dims: usize) -> Vec<u32> {
    let cells = centroids.len() / dims;
    let half_norms: Vec<f32> = centroids
        .chunks_exact(dims)
        .map(|c| dot(c, c) / 2.0)
        .collect();
    let mut nearest = Vec::with_capacity(points.len() / dims);
    let mut products = vec![0f32; BLOCK * cells];
    for block in points.chunks(BLOCK * dims) {
        let rows = block.len() / dims;
        // SAFETY: block is rows × dims and centroids cells × dims (read as its transpose), both
        // row-major; products holds rows × cells.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                dims,
                cells,
                1.0,
                block.as_ptr(),
                dims as isize,
                1,
                centroids.as_ptr(),
                1,
                dims as isize,
                0.0,
                products.as_mut_ptr(),
                cells as isize,
                1,
            );
        }
        for row in products[..rows * cells].chunks_exact(cells) {
            let (mut best, mut best_score) = (0, f32::NEG_INFINITY);
            for (cell, (product, half_norm)) in row.iter().zip(&half_norms).enumerate() {
                let score = product - half_norm;
                if score > best_score {
                    (best, best_score) = (cell, score);
                }
            }
            nearest.push(best as u32);
        }
    }
    nearest
}

impl Cells<'_> {
    /// Number of cells.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the cells hold each of `count` items exactly once and that the centroids are
    /// finite numbers. Their short codes are copies: they change only what is estimated.
    pub fn validate(&self, count: usize) -> Result<()> {
        ensure!(
            self.offsets.first() == Some(&0)
                && self.offsets.windows(2).all(|w| w[0] <= w[1])
                && self.offsets.last().map(|&end| end as usize) == Some(count)
                && self.members.len() == count,
            "the cells' item ranges do not cover the {count} items"
        );
        let mut seen = vec![false; count];
        for &member in self.members {
            let member = member as usize;
            ensure!(
                member < count && !seen[member],
                "the cells list item {member} twice or past the {count} items"
            );
            seen[member] = true;
        }
        ensure!(
            self.centroids.iter().all(|c| c.is_finite()),
            "a cell's centroid is not a finite number"
        );
        Ok(())
    }

    /// The approximate top `k` among the items `allowed` accepts, best first: the items of the
    /// cells nearest the query are ranked by their first codes, the best [`SHORTLISTED`] of them
    /// by all their codes, and the best [`RESCORED`] of those are scored exactly with
    /// `score(index)`.
    pub fn nearest(
        &self,
        prefilter: &Prefilter,
        query: &[f32],
        k: usize,
        allowed: impl Fn(usize) -> bool,
        score: impl Fn(usize) -> Result<f32>,
    ) -> Result<(Vec<Hit>, SearchCounts)> {
        let mut counts = SearchCounts::default();
        if k == 0 || self.is_empty() {
            return Ok((Vec::new(), counts));
        }
        let dims = prefilter.dims;
        let short = short_dims(dims);
        let coordinates = prefilter.coordinates(query);
        let mut by_distance: Vec<(f32, usize)> = self
            .centroids
            .chunks_exact(dims)
            .enumerate()
            .map(|(cell, centroid)| {
                (
                    dot(&coordinates, centroid) - dot(centroid, centroid) / 2.0,
                    cell,
                )
            })
            .collect();
        keep_best(&mut by_distance, probed(self.len()));
        let estimator = prefilter.estimator(&coordinates);
        let mut candidates: Vec<(f32, usize)> = Vec::new();
        for &(_, cell) in &by_distance {
            let (start, end) = (self.offsets[cell] as usize, self.offsets[cell + 1] as usize);
            let codes = self.short_codes[start * short..end * short].chunks_exact(short);
            for ((&member, &scale), codes) in self.members[start..end]
                .iter()
                .zip(&self.short_scales[start..end])
                .zip(codes)
            {
                let index = member as usize;
                if allowed(index) {
                    candidates.push((estimator.estimate_codes(codes, scale), index));
                }
            }
        }
        counts.bounded = candidates.len();
        keep_best(&mut candidates, SHORTLISTED.max(k));
        for candidate in &mut candidates {
            candidate.0 = estimator.estimate(candidate.1);
        }
        keep_best(&mut candidates, RESCORED.max(k));
        // In table order, as a full scan goes, so that ties fall the same way.
        candidates.sort_unstable_by_key(|&(_, index)| index);
        let mut top = TopK::new(k);
        for &(_, index) in &candidates {
            top.offer(Hit {
                index,
                score: score(index)?,
            });
        }
        counts.scored = candidates.len();
        Ok((top.into_sorted(), counts))
    }
}

/// Keeps the `n` entries of highest score (in no particular order).
fn keep_best(entries: &mut Vec<(f32, usize)>, n: usize) {
    if n < entries.len() {
        entries.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
        entries.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_n_items_gets_about_twice_root_n_cells_and_a_search_visits_a_few() {
        assert_eq!(cells_for(1), 1);
        assert_eq!(cells_for(100_000), 632);
        assert_eq!(cells_for(1_000_000), 2000);
        assert_eq!(probed(4), 4);
        assert_eq!(probed(632), 19);
        assert_eq!(probed(2000), 60);
    }

    #[test]
    fn validation_refuses_cells_that_lose_or_repeat_an_item() {
        let centroids = [0.0f32; 4];
        let good = Cells {
            centroids: &centroids,
            offsets: &[0, 2, 3],
            members: &[0, 2, 1],
            short_scales: &[1.0; 3],
            short_codes: &[0; 6],
        };
        good.validate(3).unwrap();
        for (offsets, members) in [
            (&[0u32, 2, 3][..], &[0u32, 2, 2][..]),
            (&[0, 2, 3], &[0, 2, 3]),
            (&[0, 3, 2], &[0, 2, 1]),
            (&[1, 2, 3], &[0, 2, 1]),
            (&[0, 2, 4], &[0, 2, 1]),
        ] {
            let bad = Cells {
                offsets,
                members,
                ..good
            };
            assert!(bad.validate(3).is_err(), "{offsets:?} {members:?}");
        }
        let nan = [f32::NAN; 4];
        assert!(Cells {
            centroids: &nan,
            ..good
        }
        .validate(3)
        .is_err());
    }
}
