//! Where a stage finds its weights: any store of named f32 tensors. A model file is one;
//! a safetensors fixture loaded into memory is another (tests, converter).

use crate::format::FormatError;
use std::collections::BTreeMap;
use std::path::Path;

/// A store of named f32 tensors with shapes.
pub trait TensorSource {
    /// The tensor `name`, which must have exactly `shape` (PyTorch order).
    fn f32(&self, name: &str, shape: &[usize]) -> Result<&[f32], FormatError>;
    /// Whether the store holds `name`.
    fn contains(&self, name: &str) -> bool;
}

/// Tensors held in memory, keyed by name.
#[derive(Debug, Default, Clone)]
pub struct OwnedTensors {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Where they came from, for messages.
    pub origin: String,
}

impl OwnedTensors {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.tensors.insert(name.into(), (shape, data));
    }

    /// Reads every tensor of a safetensors file, converting f16/bf16/f64 to f32.
    pub fn from_safetensors_file(path: &Path) -> Result<Self, FormatError> {
        let bytes = std::fs::read(path)
            .map_err(|e| FormatError::Invalid(format!("{}: {e}", path.display())))?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_safetensors_bytes(bytes: &[u8], origin: &str) -> Result<Self, FormatError> {
        use safetensors::Dtype;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| FormatError::Invalid(format!("{origin}: not a safetensors file: {e}")))?;
        let mut out = OwnedTensors {
            origin: origin.to_string(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::I64 => raw
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
                other => {
                    return Err(FormatError::Invalid(format!(
                        "{origin}: tensor {name}: dtype {other:?} is not supported"
                    )))
                }
            };
            out.insert(name, view.shape().to_vec(), data);
        }
        Ok(out)
    }
}

impl TensorSource for OwnedTensors {
    fn f32(&self, name: &str, shape: &[usize]) -> Result<&[f32], FormatError> {
        let (have, data) = self.tensors.get(name).ok_or_else(|| {
            FormatError::Invalid(format!("{}: missing tensor {name}", self.origin))
        })?;
        if have.as_slice() != shape {
            return Err(FormatError::Invalid(format!(
                "{}: tensor {name} has shape {have:?}, the configuration needs {shape:?}",
                self.origin
            )));
        }
        Ok(data)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// One tensor to write with [`write_safetensors`]: name, shape and its data.
pub enum StTensor<'a> {
    F32(&'a str, Vec<usize>, &'a [f32]),
    U32(&'a str, Vec<usize>, &'a [u32]),
    U8(&'a str, Vec<usize>, &'a [u8]),
}

/// Writes a safetensors file (`miad extract`, `miad eval --save-predictions`).
pub fn write_safetensors(path: &Path, tensors: &[StTensor<'_>]) -> Result<(), FormatError> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype as D;
    let io_err = |reason: String| FormatError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(reason),
    };
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (name, dtype, shape, bytes): (&str, D, &Vec<usize>, &[u8]) = match t {
            StTensor::F32(n, s, d) => (n, D::F32, s, bytemuck::cast_slice(d)),
            StTensor::U32(n, s, d) => (n, D::U32, s, bytemuck::cast_slice(d)),
            StTensor::U8(n, s, d) => (n, D::U8, s, d),
        };
        let view = TensorView::new(dtype, shape.clone(), bytes)
            .map_err(|e| io_err(format!("tensor {name}: {e}")))?;
        views.push((name.to_string(), view));
    }
    safetensors::tensor::serialize_to_file(views, &None, path)
        .map_err(|e| io_err(format!("writing safetensors: {e}")))
}
