//! Label-based quality of a table: leave-one-out precision@k per label column (each item queries
//! all the others), and agreement of a compact table's neighbour lists with a reference table.

use anyhow::{ensure, Result};
use rayon::prelude::*;
use serde::Serialize;

use kiosk_table::catalogue::Table;
use kiosk_table::labels::Labels;

/// Precision@k for one label column.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnPrecision {
    pub column: String,
    /// Mean over queries of the share of the k neighbours that share the query's label.
    pub precision: f64,
    /// Items that had a label in this column and were used as queries.
    pub queries: usize,
}

/// Leave-one-out precision@k of `table` for each of `columns`, labels from `labels` by item id
/// (items without a row, or with an empty value, are not used as queries, nor counted as matches).
pub fn precision_at_k(
    table: &Table,
    labels: &Labels,
    columns: &[String],
    k: usize,
) -> Result<Vec<ColumnPrecision>> {
    ensure!(k >= 1, "k must be at least 1");
    ensure!(
        table.len() > k,
        "table {} has {} items, too few for k = {k}",
        table.path().display(),
        table.len()
    );
    let column_at: Vec<usize> = columns
        .iter()
        .map(|c| labels.column(c))
        .collect::<Result<_>>()?;
    let item_labels: Vec<Option<Vec<String>>> = table
        .items()
        .iter()
        .map(|item| {
            labels
                .for_id(item.id)
                .map(|row| column_at.iter().map(|&c| row.values[c].clone()).collect())
        })
        .collect();
    let neighbours = all_neighbours(table, k)?;
    Ok(columns
        .iter()
        .enumerate()
        .map(|(c, column)| {
            let (sum, queries) = neighbours
                .iter()
                .enumerate()
                .filter_map(|(q, hits)| {
                    let label = item_labels[q]
                        .as_ref()
                        .map(|l| &l[c])
                        .filter(|l| !l.is_empty())?;
                    let same = hits
                        .iter()
                        .filter(|&&n| item_labels[n].as_ref().is_some_and(|l| &l[c] == label))
                        .count();
                    Some(same as f64 / k as f64)
                })
                .fold((0.0, 0usize), |(s, n), p| (s + p, n + 1));
            ColumnPrecision {
                column: column.clone(),
                precision: if queries > 0 {
                    sum / queries as f64
                } else {
                    0.0
                },
                queries,
            }
        })
        .collect())
}

/// For every item, the indices of its k nearest other items (leave-one-out), on all cores.
pub fn all_neighbours(table: &Table, k: usize) -> Result<Vec<Vec<usize>>> {
    (0..table.len())
        .into_par_iter()
        .map(|q| {
            let query = table.vector(q)?;
            Ok(table
                .nearest(&query, k, Some(q))?
                .iter()
                .map(|h| h.index)
                .collect())
        })
        .collect()
}

/// Mean share of each item's k reference neighbours (from `reference`, e.g. an f32 table of the
/// same images) that `table` also returns: how much the compact storage changes the results.
pub fn neighbour_recall(table: &Table, reference: &Table, k: usize) -> Result<f64> {
    ensure_same_items(table, reference)?;
    let ours = all_neighbours(table, k)?;
    let theirs = all_neighbours(reference, k)?;
    let hits: usize = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.iter().filter(|i| b.contains(i)).count())
        .sum();
    Ok(hits as f64 / (k * table.len()) as f64)
}

/// Mean share of each item's k neighbours in `twin` (the same images embedded by the model's
/// twin, searched with the twin's vector of the item) that `table` returns for that same query:
/// how well a table built by one form answers the other form's queries.
pub fn twin_agreement(table: &Table, twin: &Table, k: usize) -> Result<f64> {
    ensure_same_items(table, twin)?;
    let hits = (0..twin.len())
        .into_par_iter()
        .map(|q| -> Result<usize> {
            let query = twin.vector(q)?;
            let theirs = twin.nearest(&query, k, Some(q))?;
            let ours = table.nearest(&query, k, Some(q))?;
            Ok(ours
                .iter()
                .filter(|a| theirs.iter().any(|b| b.index == a.index))
                .count())
        })
        .sum::<Result<usize>>()?;
    Ok(hits as f64 / (k * table.len()) as f64)
}

fn ensure_same_items(table: &Table, other: &Table) -> Result<()> {
    ensure!(
        table
            .items()
            .iter()
            .map(|i| i.id)
            .eq(other.items().iter().map(|i| i.id)),
        "tables {} and {} do not hold the same items in the same order",
        table.path().display(),
        other.path().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_table::catalogue::{Element, Item, TableBuilder};
    use kiosk_util::digest::Fingerprint;

    /// Four items on two axes: a1, a2 near the x axis, b1, b2 near y. Colours: a1 and b1 red,
    /// a2 and b2 blue. With k = 1 every item's neighbour is its own kind but the other colour.
    fn fixture(dir: &std::path::Path, element: Element) -> (Table, Labels) {
        let items = [
            ("a1", [1.0, 0.1]),
            ("a2", [1.0, 0.2]),
            ("b1", [0.1, 1.0]),
            ("b2", [0.2, 1.0]),
        ];
        let table = table_of(
            &dir.join(format!("{}.fkt", element.name())),
            &items,
            element,
        );
        let csv = dir.join("labels.csv");
        std::fs::write(
            &csv,
            "id,kind,colour\na1,a,red\na2,a,blue\nb1,b,red\nb2,b,\n",
        )
        .unwrap();
        (table, Labels::load(&csv).unwrap())
    }

    /// A table at `path` of 2-d items (normalised), stored as `element`.
    fn table_of(path: &std::path::Path, items: &[(&str, [f32; 2])], element: Element) -> Table {
        let mut builder = TableBuilder::new(Fingerprint([1; 32]), 2, vec![]);
        for (id, v) in items {
            let mut v = v.to_vec();
            kiosk_table::catalogue::normalise(&mut v);
            let item = Item {
                id: id.to_string(),
                source: format!("{id}.jpg"),
                digest: String::new(),
                metadata: vec![],
            };
            builder.push(item, &v).unwrap();
        }
        builder.write(path, element).unwrap();
        Table::load(path).unwrap()
    }

    #[test]
    fn precision_counts_neighbours_sharing_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let (table, labels) = fixture(dir.path(), Element::F32);
        let columns = vec!["kind".to_string(), "colour".to_string()];
        let result = precision_at_k(&table, &labels, &columns, 1).unwrap();
        assert_eq!(result[0].precision, 1.0);
        assert_eq!(result[0].queries, 4);
        // b2 has no colour: not a query; a2's neighbour a1 is red, a1's is a2 (blue), b1's is b2 (none).
        assert_eq!(result[1].queries, 3);
        assert_eq!(result[1].precision, 0.0);
        let two = precision_at_k(&table, &labels, &columns, 2).unwrap();
        assert!((two[0].precision - 0.5).abs() < 1e-9, "{two:?}");
        assert!(precision_at_k(&table, &labels, &["size".to_string()], 1).is_err());
    }

    #[test]
    fn neighbour_recall_is_one_for_the_same_vectors_in_another_storage() {
        let dir = tempfile::tempdir().unwrap();
        let (f32_table, _) = fixture(dir.path(), Element::F32);
        let (i8_table, _) = fixture(dir.path(), Element::I8);
        assert_eq!(neighbour_recall(&i8_table, &f32_table, 1).unwrap(), 1.0);
    }

    #[test]
    fn twin_agreement_compares_both_tables_answers_to_the_twins_queries() {
        let dir = tempfile::tempdir().unwrap();
        let (table, _) = fixture(dir.path(), Element::F32);
        let (same, _) = fixture(dir.path(), Element::I8);
        assert_eq!(twin_agreement(&table, &same, 1).unwrap(), 1.0);
        // A "twin" that puts the a items where the b items are and back: its query for a1 sits on
        // b1 in the table, while its own neighbour of a1 is a2.
        let swapped = table_of(
            &dir.path().join("swapped.fkt"),
            &[
                ("a1", [0.1, 1.0]),
                ("a2", [0.2, 1.0]),
                ("b1", [1.0, 0.1]),
                ("b2", [1.0, 0.2]),
            ],
            Element::F32,
        );
        assert_eq!(twin_agreement(&table, &swapped, 1).unwrap(), 0.0);
    }
}

/// A label column's figure for the visual list and for the re-ranked one.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    pub column: String,
    pub visual: f64,
    pub ranked: f64,
}

/// What re-ranking does to the lists of a catalogue (each item scanned in turn).
#[derive(Debug, Clone, Serialize)]
pub struct RerankFigures {
    /// Lists compared (one per item scanned).
    pub lists: usize,
    pub k: usize,
    /// Share of the k recommendations (after the scanned item itself) that share its label.
    pub precision: Vec<Compared>,
    /// Distinct values per list of k.
    pub distinct: Vec<Compared>,
    /// Share of recommendations that break a filter (another gender, out of stock).
    pub violations: Compared,
    /// Re-ranking time per scan, median and 99th percentile, milliseconds.
    pub rank_ms_median: f64,
    pub rank_ms_p99: f64,
}

/// Each `step`-th item of `table` scanned (its own vector as the query): its visual list and
/// its re-ranked list under `recommender`, the k items after the best match (the item itself,
/// or a byte-identical copy), compared by the label `columns` of the table's metadata.
pub fn rerank(
    table: &Table,
    recommender: &crate::recommend::Recommender,
    columns: &[String],
    k: usize,
    step: usize,
) -> Result<RerankFigures> {
    ensure!(
        k >= 1 && table.len() > k,
        "the table is too small for k = {k}"
    );
    let column_at: Vec<usize> = columns
        .iter()
        .map(|c| {
            table.column(c).ok_or_else(|| {
                anyhow::anyhow!("the table {} has no column {c}", table.path().display())
            })
        })
        .collect::<Result<_>>()?;
    let candidates = recommender.candidates().max(k + 1);
    let per_item: Vec<_> = (0..table.len())
        .step_by(step.max(1))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&item| -> Result<_> {
            let query = table.vector(item)?;
            let hits = table.nearest(&query, candidates, None)?;
            // The scanned item is the best match (the item itself, or a byte-identical copy).
            let anchor = hits[0].index;
            let visual: Vec<usize> = hits.iter().skip(1).take(k).map(|h| h.index).collect();
            let start = std::time::Instant::now();
            let ranked = recommender.rank(table, &query, &hits, k + 1);
            let took = start.elapsed().as_secs_f64() * 1000.0;
            let ranked: Vec<usize> = ranked
                .iter()
                .map(|r| r.index)
                .filter(|&i| i != anchor)
                .take(k)
                .collect();
            Ok((anchor, visual, ranked, took))
        })
        .collect::<Result<_>>()?;
    let value = |i: usize, c: usize| table.item(i).metadata(c).unwrap_or_default();
    let lists = per_item.len() as f64;
    let mean_over = |f: &dyn Fn(&[usize], usize) -> f64, pick_ranked: bool| -> f64 {
        per_item
            .iter()
            .map(|(item, visual, ranked, _)| f(if pick_ranked { ranked } else { visual }, *item))
            .sum::<f64>()
            / lists
    };
    let mut precision = Vec::new();
    let mut distinct = Vec::new();
    for (name, &c) in columns.iter().zip(&column_at) {
        let share = |list: &[usize], item: usize| {
            list.iter()
                .filter(|&&i| value(i, c) == value(item, c))
                .count() as f64
                / list.len().max(1) as f64
        };
        let kinds = |list: &[usize], _item: usize| {
            list.iter()
                .map(|&i| value(i, c))
                .collect::<std::collections::HashSet<_>>()
                .len() as f64
        };
        precision.push(Compared {
            column: name.clone(),
            visual: mean_over(&share, false),
            ranked: mean_over(&share, true),
        });
        distinct.push(Compared {
            column: name.clone(),
            visual: mean_over(&kinds, false),
            ranked: mean_over(&kinds, true),
        });
    }
    let broken = |list: &[usize], item: usize| {
        list.iter()
            .filter(|&&i| !recommender.allowed(table, item, i))
            .count() as f64
            / list.len().max(1) as f64
    };
    let mut times: Vec<f64> = per_item.iter().map(|p| p.3).collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(RerankFigures {
        lists: per_item.len(),
        k,
        precision,
        distinct,
        violations: Compared {
            column: "filters".into(),
            visual: mean_over(&broken, false),
            ranked: mean_over(&broken, true),
        },
        rank_ms_median: at(0.5),
        rank_ms_p99: at(0.99),
    })
}
