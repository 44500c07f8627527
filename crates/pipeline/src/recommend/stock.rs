//! A store's stock file: which catalogue items are out of stock. A CSV with a header naming `id`
//! and either `in_stock` (true/false, yes/no, 1/0) or `quantity` (a whole number; 0 = out of
//! stock). Items the file does not name are taken to be in stock; ids the catalogue does not
//! hold are counted and logged. A malformed row is an error naming its line.
//!
//! An id on several rows (a stock export with a row per size or per stock room): with
//! `quantity`, the rows add up (negative counts as 0), so the item is out of stock only when
//! every row is 0; with `in_stock`, rows that disagree are an error naming both lines.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use kiosk_table::catalogue::Table;

/// The items out of stock (by index in the table).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stock {
    out: HashSet<usize>,
    /// Rows naming an id the catalogue does not hold.
    pub unknown_ids: usize,
    /// Rows read.
    pub rows: usize,
}

impl Stock {
    /// Whether item `index` may be recommended.
    pub fn in_stock(&self, index: usize) -> bool {
        !self.out.contains(&index)
    }

    /// Items marked out of stock.
    pub fn out_of_stock(&self) -> usize {
        self.out.len()
    }

    /// A stock with the items at `indexes` out (for tests of the rules).
    #[cfg(test)]
    pub fn default_with_out(indexes: &[usize]) -> Self {
        Stock {
            out: indexes.iter().copied().collect(),
            ..Stock::default()
        }
    }

    /// Reads `path` against `table`.
    pub fn load(path: &Path, table: &Table) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read stock file {}", path.display()))?;
        Self::parse(&bytes, table).with_context(|| format!("stock file {}", path.display()))
    }

    fn parse(bytes: &[u8], table: &Table) -> Result<Self> {
        let index = table.positions();
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let header = reader.headers().context("line 1: no header")?.clone();
        let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let id_column = column("id").context("line 1: no `id` column")?;
        let (value_column, quantity) = match (column("in_stock"), column("quantity")) {
            (Some(c), _) => (c, false),
            (None, Some(c)) => (c, true),
            (None, None) => bail!("line 1: no `in_stock` or `quantity` column"),
        };
        let mut stock = Stock::default();
        // Per id: the first line naming it, and whether any of its rows is available.
        let mut seen: HashMap<String, (usize, bool)> = HashMap::new();
        for (n, record) in reader.records().enumerate() {
            let line = n + 2;
            let record = record.with_context(|| format!("line {line}: not a CSV row"))?;
            let id = record.get(id_column).unwrap_or("");
            let value = record
                .get(value_column)
                .with_context(|| format!("line {line}: too few fields"))?;
            if id.is_empty() {
                bail!("line {line}: empty id");
            }
            let available = if quantity {
                value.parse::<i64>().map(|q| q > 0).map_err(|_| {
                    anyhow::anyhow!("line {line}: quantity {value:?} is not a whole number")
                })?
            } else {
                match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => bail!("line {line}: in_stock {value:?} is not true/false, yes/no or 1/0"),
                }
            };
            stock.rows += 1;
            let (first_line, any_available) = match seen.get(id) {
                Some(&(first, before)) => {
                    if !quantity && before != available {
                        bail!(
                            "line {line}: id {id:?} is in_stock {value:?}, line {first} said \
                             otherwise: give each id one row"
                        );
                    }
                    (first, before || available)
                }
                None => {
                    if !index.contains_key(id) {
                        stock.unknown_ids += 1;
                    }
                    (line, available)
                }
            };
            seen.insert(id.to_string(), (first_line, any_available));
        }
        stock.out = seen
            .iter()
            .filter(|(_, &(_, available))| !available)
            .filter_map(|(id, _)| index.get(id.as_str()).copied())
            .collect();
        Ok(stock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_table::catalogue::{Element, Item, TableBuilder};
    use kiosk_util::digest::Fingerprint;

    fn table(ids: &[&str]) -> Table {
        let mut builder = TableBuilder::new(Fingerprint([1; 32]), 2, vec![]);
        for (i, id) in ids.iter().enumerate() {
            let item = Item {
                id: id.to_string(),
                source: format!("{id}.jpg"),
                digest: String::new(),
                metadata: vec![],
            };
            builder.push(item, &[1.0, i as f32]).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.fkt");
        builder.write(&path, Element::F32).unwrap();
        Table::load(&path).unwrap()
    }

    #[test]
    fn out_of_stock_items_are_known_by_either_column_and_unknown_ids_counted() {
        let t = table(&["a", "b", "c"]);
        let stock = Stock::parse(b"id,in_stock\na,true\nb,no\nzz,false\n", &t).unwrap();
        assert!(stock.in_stock(0) && !stock.in_stock(1) && stock.in_stock(2));
        assert_eq!(
            (stock.rows, stock.unknown_ids, stock.out_of_stock()),
            (3, 1, 1)
        );
        let stock = Stock::parse(b"quantity,id\n0,c\n4,a\n", &t).unwrap();
        assert!(stock.in_stock(0) && stock.in_stock(1) && !stock.in_stock(2));
    }

    #[test]
    fn an_id_on_several_rows_adds_up_its_quantities_and_must_agree_on_in_stock() {
        let t = table(&["a", "b", "c"]);
        // A row per size: `a` has 2 left in one size, `b` none in any, `c` a negative count.
        let stock = Stock::parse(b"id,quantity\na,0\nb,0\na,2\nb,0\nc,-1\nc,0\n", &t).unwrap();
        assert!(stock.in_stock(0) && !stock.in_stock(1) && !stock.in_stock(2));
        assert_eq!((stock.rows, stock.out_of_stock()), (6, 2));
        let stock = Stock::parse(b"id,in_stock\na,no\na,no\nzz,1\nzz,1\n", &t).unwrap();
        assert!(!stock.in_stock(0));
        assert_eq!(stock.unknown_ids, 1, "an unknown id counted once");
        let err = format!(
            "{:#}",
            Stock::parse(b"id,in_stock\na,yes\nb,no\na,no\n", &t).unwrap_err()
        );
        assert!(err.contains("line 4") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_malformed_row_is_an_error_naming_its_line() {
        let t = table(&["a", "b"]);
        for (text, expected) in [
            (
                &b"id,quantity\na,3\nb,many\n"[..],
                "line 3: quantity \"many\"",
            ),
            (b"id,in_stock\na,maybe\n", "line 2: in_stock \"maybe\""),
            (b"id,colour\na,red\n", "line 1: no `in_stock` or `quantity`"),
            (b"sku,in_stock\na,1\n", "line 1: no `id`"),
            (b"id,in_stock\n,1\n", "line 2: empty id"),
            (b"id,in_stock\na,1,extra\n", "line 2"),
        ] {
            let err = format!("{:#}", Stock::parse(text, &t).unwrap_err());
            assert!(err.contains(expected), "{err}");
        }
    }
}
