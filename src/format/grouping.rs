//! Grouping the tensors of a tensor-per-name file (safetensors, GGUF) into
//! layers, by the block index in their names.
//!
//! A tensor belongs to block `N` when its name contains a segment
//! `<container>.N.` whose container is one of [`BLOCK_CONTAINERS`]
//! (`model.layers.3.mlp.up_proj.weight`, `blk.3.attn_q.weight`,
//! `transformer.h.3.attn.c_attn.weight`, `encoder.layer.3.output.dense.bias`,
//! `transformer.layers.3.attention.wq.weight` …); the first such segment in
//! the name decides. The layer key is everything up to and including the
//! number, so `encoder.layer.3` and `decoder.layers.3` are different layers.
//! `docs/formats.md` ("Layer mapping") states the rules for users.
//!
//! Layers are ordered by where their first tensor lies in the files (file,
//! then offset), so a file's natural order is kept, except that the blocks
//! of one family (`model.layers.`) are then put in numeric order within the
//! places they take: writers that sort names as text store `layers.10`
//! before `layers.2`. Every tensor outside a block (embeddings, final norm,
//! head) is a layer of its own, in file order. Every tensor is in exactly
//! one layer.
//!
//! A layer's bytes are its tensors' bytes in file order. Tensors of one layer
//! that lie close together in one file are read as one range including the
//! gap between them (at most [`MAX_GAP`] bytes; alignment padding, usually),
//! so most layers are a single read.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dtype::DType;
pub use crate::index::{block_key, BLOCK_CONTAINERS};
use crate::index::{FileRange, LayerSpec, TensorSpec};

/// The largest gap between two tensors of one layer that is read through
/// rather than split into two ranges.
pub const MAX_GAP: u64 = 64 << 10;

/// A tensor as a format reader found it: where its bytes are in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileTensor {
    pub(crate) name: String,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) file: usize,
    /// Absolute offset in the file.
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Groups `tensors` into layers. The caller has validated every tensor's
/// range (inside its file, no overlaps, `dtype × shape = len`).
pub(crate) fn group(mut tensors: Vec<FileTensor>) -> Vec<LayerSpec> {
    tensors.sort_by_key(|t| (t.file, t.offset, t.len));
    // (block key, members); no key for a tensor outside any block.
    let mut order: Vec<(Option<String>, Vec<FileTensor>)> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for t in tensors {
        match block_key(&t.name) {
            Some(key) => match by_key.get(key) {
                Some(&i) => order[i].1.push(t),
                None => {
                    by_key.insert(key.to_string(), order.len());
                    order.push((Some(key.to_string()), vec![t]));
                }
            },
            None => order.push((None, vec![t])),
        }
    }
    in_numeric_order(&mut order);
    order
        .into_iter()
        .map(|(key, members)| {
            let name = key
                .or_else(|| members.first().map(|t| t.name.clone()))
                .unwrap_or_default();
            layer_of(name, members)
        })
        .collect()
}

/// Puts the blocks of each family (`model.layers.`) in numeric order within
/// the places the family's blocks take in `order`; other layers stay where
/// they are. Writers that sort names as text store `layers.10` before
/// `layers.2`; this undoes that.
fn in_numeric_order<T>(order: &mut [(Option<String>, T)]) {
    let mut families: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (key, _)) in order.iter().enumerate() {
        if let Some((family, _)) = key.as_deref().and_then(|k| k.rsplit_once('.')) {
            families.entry(family).or_default().push(i);
        }
    }
    let number = |i: usize| {
        order[i]
            .0
            .as_deref()
            .and_then(|k| k.rsplit_once('.'))
            .map_or("", |(_, n)| n)
    };
    let mut place: Vec<usize> = (0..order.len()).collect();
    for places in families.values() {
        let mut members = places.clone();
        // Stable: equal numbers (`01`, `1`) keep their file order.
        members.sort_by(|&a, &b| numeric_cmp(number(a), number(b)));
        for (&slot, &member) in places.iter().zip(&members) {
            place[slot] = member;
        }
    }
    apply_permutation(order, place);
}

/// Reorders `items` so that position `i` holds the item that was at `from[i]`
/// (`from` is a permutation).
fn apply_permutation<T>(items: &mut [T], mut from: Vec<usize>) {
    // Follow each cycle, swapping along it.
    for start in 0..items.len() {
        let mut i = start;
        while from[i] != start {
            let next = from[i];
            items.swap(i, next);
            from[i] = i;
            i = next;
        }
        from[i] = i;
    }
}

/// Compares two strings of ASCII digits as numbers, whatever their length.
fn numeric_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn layer_of(name: String, members: Vec<FileTensor>) -> LayerSpec {
    let mut ranges: Vec<FileRange> = Vec::new();
    let mut tensors = Vec::with_capacity(members.len());
    let mut size = 0u64;
    let mut bytes_by_dtype: HashMap<DType, u64> = HashMap::new();
    for t in &members {
        *bytes_by_dtype.entry(t.dtype).or_default() += t.len;
        let extend = ranges
            .last()
            .filter(|r| r.file == t.file && t.offset >= r.end() && t.offset - r.end() <= MAX_GAP)
            .is_some();
        if extend {
            let r = ranges.last_mut().expect("checked above");
            let grow = t.offset + t.len - r.end();
            r.len += grow;
            size += grow;
        } else {
            ranges.push(FileRange {
                file: t.file,
                offset: t.offset,
                len: t.len,
            });
            size += t.len;
        }
        tensors.push(TensorSpec::new(
            t.name.clone(),
            t.dtype,
            t.shape.clone(),
            size - t.len,
            t.len,
        ));
    }
    let precision = bytes_by_dtype
        .iter()
        .max_by_key(|(d, bytes)| (**bytes, std::cmp::Reverse(d.code())))
        .map_or(8, |(d, _)| d.bits());
    LayerSpec {
        name,
        ranges,
        size,
        precision,
        checksum: None,
        tensors: Arc::from(tensors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_of_common_names() {
        let cases = [
            (
                "model.layers.12.mlp.up_proj.weight",
                Some("model.layers.12"),
            ),
            ("layers.0.attention.wq.weight", Some("layers.0")),
            ("blk.7.attn_q.weight", Some("blk.7")),
            ("h.3.attn.c_attn.weight", Some("h.3")),
            ("transformer.h.11.mlp.c_fc.bias", Some("transformer.h.11")),
            ("encoder.layer.5.output.dense.bias", Some("encoder.layer.5")),
            (
                "model.decoder.layers.2.fc1.weight",
                Some("model.decoder.layers.2"),
            ),
            (
                "transformer.layers.7.attention.wq.weight",
                Some("transformer.layers.7"),
            ),
            (
                "decoder.layers.0.self_attn.k_proj.weight",
                Some("decoder.layers.0"),
            ),
            // The first container followed by a number decides.
            (
                "encoder.block.0.layer.1.DenseReluDense.wi.weight",
                Some("encoder.block.0"),
            ),
            (
                "model.layers.10.mlp.experts.3.w1.weight",
                Some("model.layers.10"),
            ),
            ("model.layers.x.blk.2.w", Some("model.layers.x.blk.2")),
            ("model.embed_tokens.weight", None),
            ("lm_head.weight", None),
            ("token_embd.weight", None),
            ("layers.x.weight", None),
            ("layers.3", None),
        ];
        for (name, key) in cases {
            assert_eq!(block_key(name), key, "{name}");
        }
    }

    fn t(name: &str, offset: u64, len: u64) -> FileTensor {
        FileTensor {
            name: name.into(),
            dtype: DType::U8,
            shape: vec![len],
            file: 0,
            offset,
            len,
        }
    }

    #[test]
    fn tensors_group_by_block_in_file_order() {
        let layers = group(vec![
            t("model.norm.weight", 300, 10),
            t("model.layers.1.b", 200, 50),
            t("model.layers.0.a", 0, 40),
            t("model.layers.1.a", 150, 50),
            t("model.layers.0.b", 64, 36),
            t("model.embed.weight", 100, 50),
        ]);
        let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.layers.0",
                "model.embed.weight",
                "model.layers.1",
                "model.norm.weight"
            ]
        );
        // Layer 0: two tensors with a 24-byte gap, read as one range.
        let l0 = &layers[0];
        assert_eq!(
            l0.ranges,
            [FileRange {
                file: 0,
                offset: 0,
                len: 100
            }]
        );
        assert_eq!(l0.size, 100);
        assert_eq!((l0.tensors[1].offset, l0.tensors[1].len), (64, 36));
        let l1 = &layers[2];
        assert_eq!(
            l1.ranges,
            [FileRange {
                file: 0,
                offset: 150,
                len: 100
            }]
        );
        assert_eq!(
            l1.tensors
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["model.layers.1.a", "model.layers.1.b"]
        );
        let total: usize = layers.iter().map(|l| l.tensors.len()).sum();
        assert_eq!(total, 6);
    }

    #[test]
    fn blocks_stored_in_text_order_come_out_in_numeric_order() {
        // As a writer that sorts names as text stores them.
        let mut tensors = Vec::new();
        let mut at = 0;
        for name in [
            "lm_head.weight",
            "model.embed.weight",
            "model.layers.0.a",
            "model.layers.1.a",
            "model.layers.10.a",
            "model.layers.11.a",
            "model.layers.2.a",
            "model.layers.3.a",
            "model.norm.weight",
            "vision.blocks.02.a",
            "vision.blocks.1.a",
            "layers.3",
            "layers.0.a",
        ] {
            tensors.push(t(name, at, 4));
            at += 4;
        }
        let names: Vec<String> = group(tensors).into_iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "lm_head.weight",
                "model.embed.weight",
                "model.layers.0",
                "model.layers.1",
                "model.layers.2",
                "model.layers.3",
                "model.layers.10",
                "model.layers.11",
                "model.norm.weight",
                "vision.blocks.1",
                "vision.blocks.02",
                "layers.3",
                "layers.0",
            ]
        );
        assert_eq!(numeric_cmp("007", "7"), std::cmp::Ordering::Equal);
        let mut v = vec!['a', 'b', 'c', 'd', 'e'];
        apply_permutation(&mut v, vec![3, 0, 4, 1, 2]);
        assert_eq!(v, ['d', 'a', 'e', 'b', 'c']);
        assert_eq!(
            numeric_cmp("99999999999999999999999", "100000000000000000000000"),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn far_apart_or_cross_file_tensors_become_separate_ranges() {
        let mut far = t("blk.0.b", 1 << 20, 8);
        let mut other_file = t("blk.0.c", 0, 8);
        other_file.file = 1;
        far.dtype = DType::F32;
        far.shape = vec![2];
        let layers = group(vec![t("blk.0.a", 0, 8), far, other_file]);
        assert_eq!(layers.len(), 1);
        let l = &layers[0];
        assert_eq!(l.ranges.len(), 3);
        assert_eq!(l.size, 24);
        assert_eq!(
            l.tensors.iter().map(|t| t.offset).collect::<Vec<_>>(),
            [0, 8, 16]
        );
    }
}
