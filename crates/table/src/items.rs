//! The items of a loaded table, packed: every id, source and digest back to back in one string,
//! and each metadata value as an index into one dictionary of distinct values. A million items
//! take ~150 bytes each instead of the ~800 of a million `Item`s with their own strings.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use crate::catalogue::Item;

/// Packed items (see the module doc); read from a table's records by deserialising.
#[derive(Debug, Default)]
pub struct Items {
    /// Each item's id, source and digest, back to back.
    text: String,
    /// Where each of those strings ends in `text`: three per item.
    ends: Vec<u32>,
    /// Metadata values per item (the same for every item).
    width: usize,
    /// `width` dictionary indices per item.
    values: Vec<u32>,
    /// The distinct metadata values, back to back, and where each ends.
    dictionary: String,
    dictionary_ends: Vec<u32>,
}

/// One item of [`Items`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef<'a> {
    pub id: &'a str,
    /// The image file (relative to the catalogue folder) the vector was made from.
    pub source: &'a str,
    /// SHA-256 (hex) of that file's bytes when it was embedded.
    pub digest: &'a str,
    items: &'a Items,
    index: usize,
}

impl<'a> ItemRef<'a> {
    /// The item's value in metadata column `column`, if the table has that column.
    pub fn metadata(&self, column: usize) -> Option<&'a str> {
        (column < self.items.width).then(|| {
            let value = self.items.values[self.index * self.items.width + column];
            self.items.value(value as usize)
        })
    }

    /// The item's metadata values, one per column.
    pub fn metadata_values(&self) -> impl Iterator<Item = &'a str> + 'a {
        let (items, index) = (self.items, self.index);
        (0..items.width)
            .map(move |column| items.value(items.values[index * items.width + column] as usize))
    }

    pub fn to_item(&self) -> Item {
        Item {
            id: self.id.to_string(),
            source: self.source.to_string(),
            digest: self.digest.to_string(),
            metadata: self.metadata_values().map(str::to_string).collect(),
        }
    }
}

impl Items {
    pub fn len(&self) -> usize {
        self.ends.len() / 3
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Metadata values per item.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Item `index`. Panics if there is no such item, as slice indexing does.
    pub fn get(&self, index: usize) -> ItemRef<'_> {
        ItemRef {
            id: nth(&self.text, &self.ends, index * 3),
            source: nth(&self.text, &self.ends, index * 3 + 1),
            digest: nth(&self.text, &self.ends, index * 3 + 2),
            items: self,
            index,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = ItemRef<'_>> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }

    fn value(&self, value: usize) -> &str {
        nth(&self.dictionary, &self.dictionary_ends, value)
    }
}

/// String `n` of `text`, which holds strings back to back, each ending where `ends` says.
fn nth<'a>(text: &'a str, ends: &[u32], n: usize) -> &'a str {
    let start = if n == 0 { 0 } else { ends[n - 1] as usize };
    &text[start..ends[n] as usize]
}

/// Builds [`Items`] one item at a time.
struct Packer {
    items: Items,
    known: HashMap<String, u32>,
}

impl Packer {
    fn push(&mut self, item: Item) -> Result<(), String> {
        let items = &mut self.items;
        if items.is_empty() {
            items.width = item.metadata.len();
        } else if item.metadata.len() != items.width {
            return Err(format!(
                "item {} has {} metadata values, the items before it {}",
                item.id,
                item.metadata.len(),
                items.width
            ));
        }
        for field in [&item.id, &item.source, &item.digest] {
            items.text.push_str(field);
            items.ends.push(end(items.text.len())?);
        }
        for value in item.metadata {
            let next = self.known.len();
            let index = match self.known.get(&value) {
                Some(&index) => index,
                None => {
                    let index = u32::try_from(next).map_err(|_| "too many distinct values")?;
                    items.dictionary.push_str(&value);
                    items.dictionary_ends.push(end(items.dictionary.len())?);
                    self.known.insert(value, index);
                    index
                }
            };
            items.values.push(index);
        }
        Ok(())
    }
}

fn end(len: usize) -> Result<u32, String> {
    u32::try_from(len).map_err(|_| "the item records are over 4 GiB".to_string())
}

impl<'de> Deserialize<'de> for Items {
    /// From a JSON array of items, packed as they are read (no `Vec<Item>` of them all).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut packer = Packer {
                    items: Items::default(),
                    known: HashMap::new(),
                };
                while let Some(item) = seq.next_element::<Item>()? {
                    packer.push(item).map_err(de::Error::custom)?;
                }
                let mut items = packer.items;
                items.text.shrink_to_fit();
                items.ends.shrink_to_fit();
                items.values.shrink_to_fit();
                items.dictionary.shrink_to_fit();
                items.dictionary_ends.shrink_to_fit();
                Ok(items)
            }
        }
        deserializer.deserialize_seq(ItemsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, metadata: &[&str]) -> Item {
        Item {
            id: id.into(),
            source: format!("{id}.jpg"),
            digest: format!("d{id}"),
            metadata: metadata.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn packed_items_read_back_as_they_were_written() {
        let written = vec![
            item("7", &["red", "shirt"]),
            item("", &["", "red"]),
            item("ünï", &["red", "shirt"]),
        ];
        let json = serde_json::to_string(&written).unwrap();
        let items: Items = serde_json::from_str(&json).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items.width(), 2);
        let read: Vec<Item> = items.iter().map(|i| i.to_item()).collect();
        assert_eq!(read, written);
        assert_eq!(items.get(2).metadata(1), Some("shirt"));
        assert_eq!(items.get(2).metadata(2), None);
        // "red", "shirt" and "" are stored once each.
        assert_eq!(items.dictionary_ends.len(), 3);
    }

    #[test]
    fn items_of_unequal_metadata_are_refused_naming_the_item() {
        let json = serde_json::to_string(&[item("a", &["x"]), item("b", &[])]).unwrap();
        let err = serde_json::from_str::<Items>(&json).unwrap_err();
        assert!(
            err.to_string().contains("item b has 0 metadata values"),
            "{err}"
        );
    }
}
