//! Deterministic synthetic models, for the demo, tests and benchmarks.
//!
//! Layer `i` of a [`SynthSpec`] holds one matrix tensor
//! `layers.{i}.weight` of shape `[rows, 256]` and, when the layer size is not
//! a whole number of rows, a vector `layers.{i}.tail` with the rest. Values
//! come from a SplitMix64 stream seeded by the spec's seed and the layer
//! index, so any layer's bytes can be regenerated to check a read exactly.
//! Floats lie in ±[0.125, 0.5) so arithmetic over them stays finite.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::tmai::{LayerDecl, TensorDecl, TmaiWriter};

/// Elements per matrix row.
pub const ROW: u64 = 256;

/// What synthetic model to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSpec {
    /// Number of layers.
    pub layers: usize,
    /// Bytes per layer; a multiple of the element size.
    pub layer_size: u64,
    /// Bits per weight: 8 (`I8`), 16 (`F16`), 32 (`F32`) or 64 (`F64`).
    pub precision: u32,
    /// Seed of the content.
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            layers: 16,
            layer_size: 1 << 20,
            precision: 32,
            seed: 0x4859_5045_5249_4f4e,
        }
    }
}

impl SynthSpec {
    /// The dtype of the weights.
    pub fn dtype(&self) -> Result<DType> {
        match self.precision {
            8 => Ok(DType::I8),
            16 => Ok(DType::F16),
            32 => Ok(DType::F32),
            64 => Ok(DType::F64),
            p => Err(Error::InvalidArgument(format!(
                "synthetic precision must be 8, 16, 32 or 64 bits, not {p}"
            ))),
        }
    }

    /// The tensors of layer `layer`.
    pub fn layer_decl(&self, layer: usize) -> Result<LayerDecl> {
        let dtype = self.dtype()?;
        let size = u64::from(dtype.bits() / 8);
        if self.layer_size == 0 || self.layer_size % size != 0 {
            return Err(Error::InvalidArgument(format!(
                "layer size {} is not a positive multiple of the {}-byte element size",
                self.layer_size, size
            )));
        }
        let elements = self.layer_size / size;
        let rows = elements / ROW;
        let tail = elements % ROW;
        let mut tensors = Vec::new();
        if rows > 0 {
            tensors.push(TensorDecl {
                name: format!("layers.{layer}.weight"),
                dtype,
                shape: vec![rows, ROW],
            });
        }
        if tail > 0 {
            tensors.push(TensorDecl {
                name: format!("layers.{layer}.tail"),
                dtype,
                shape: vec![tail],
            });
        }
        Ok(LayerDecl {
            tensors,
            precision: Some(self.precision),
        })
    }

    /// Fills `out` with the tensor bytes of layer `layer`, starting
    /// `element` elements into the layer (so a layer can be generated in pieces).
    /// `out.len()` must be a multiple of the element size.
    pub fn fill(&self, layer: usize, element: u64, out: &mut [u8]) {
        let size = (self.precision / 8) as usize;
        let mut rng = SplitMix::at(
            self.seed ^ (layer as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            element,
        );
        for chunk in out.chunks_exact_mut(size) {
            let r = rng.next();
            match size {
                1 => chunk[0] = r as u8,
                2 => chunk.copy_from_slice(&(((r as u16) & 0x83ff) | 0x3000).to_le_bytes()),
                4 => chunk.copy_from_slice(&unit_f32(r).to_le_bytes()),
                _ => chunk.copy_from_slice(&f64::from(unit_f32(r)).to_le_bytes()),
            }
        }
    }

    /// The tensor bytes of layer `layer`, as the loader must return them.
    ///
    /// Tensors of synthetic layers are packed without padding (rows of 256
    /// elements keep the tail 64-byte aligned), so this is also the layer's
    /// byte image.
    pub fn layer_bytes(&self, layer: usize) -> Vec<u8> {
        let mut out = vec![0; self.layer_size as usize];
        self.fill(layer, 0, &mut out);
        out
    }
}

/// Writes the model `spec` describes to `path`, generating one piece at a time.
pub fn write(path: &Path, spec: &SynthSpec) -> Result<()> {
    let decls = (0..spec.layers)
        .map(|i| spec.layer_decl(i))
        .collect::<Result<Vec<_>>>()?;
    let mut writer = TmaiWriter::create(path, decls)?;
    let elem = u64::from(spec.precision / 8);
    let piece = (4u64 << 20).min(spec.layer_size) as usize;
    let mut buf = vec![0u8; piece];
    for layer in 0..spec.layers {
        let mut done = 0u64;
        while done < spec.layer_size {
            let n = piece.min((spec.layer_size - done) as usize);
            spec.fill(layer, done / elem, &mut buf[..n]);
            writer.write(&buf[..n])?;
            done += n as u64;
        }
    }
    writer.finish()
}

/// A float in ±[0.125, 0.5) from 64 random bits.
fn unit_f32(r: u64) -> f32 {
    let magnitude = 0.125 + 0.375 * ((r >> 40) as f32 / (1u64 << 24) as f32);
    if r & 1 == 0 {
        magnitude
    } else {
        -magnitude
    }
}

/// SplitMix64, which can start at any position of its stream.
struct SplitMix {
    state: u64,
}

impl SplitMix {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    fn at(seed: u64, position: u64) -> Self {
        SplitMix {
            state: seed.wrapping_add(position.wrapping_mul(Self::GAMMA)),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_match_the_whole() {
        let spec = SynthSpec {
            layer_size: 4096 + 12,
            ..SynthSpec::default()
        };
        let whole = spec.layer_bytes(3);
        let mut piece = vec![0u8; 12];
        spec.fill(3, 1024, &mut piece);
        assert_eq!(&whole[4096..], &piece[..]);
        assert_ne!(spec.layer_bytes(2), whole);
    }

    #[test]
    fn floats_are_finite_and_bounded() {
        let spec = SynthSpec::default();
        let bytes = spec.layer_bytes(0);
        let values: &[f32] = bytemuck::cast_slice(&bytes);
        assert!(values
            .iter()
            .all(|v| v.is_finite() && v.abs() >= 0.125 && v.abs() < 0.5));
    }
}
