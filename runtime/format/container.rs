//! The container shared by model and bank files: a fixed header, an rkyv manifest, and
//! tensor data aligned to 4096 bytes. Byte-by-byte description: weights/FORMAT.md.

use super::error::FormatError;
use crate::config::{BankConfig, ModelConfig};
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"MIAD\0FMT";
/// The version this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Written as a little-endian u32; read back as another value on a big-endian writer.
pub const ENDIAN_MARKER: u32 = 0x0102_0304;
pub const HEADER_LEN: usize = 80;
/// Where the manifest starts (aligned for rkyv).
pub const MANIFEST_OFFSET: u64 = 128;
/// Alignment of every tensor's first byte.
pub const TENSOR_ALIGN: u64 = 4096;

/// Element types a tensor may have.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum Dtype {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    U32 = 3,
    I64 = 4,
    U8 = 5,
    I32 = 6,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::U32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            Dtype::U32 => "u32",
            Dtype::I64 => "i64",
            Dtype::U8 => "u8",
            Dtype::I32 => "i32",
        }
    }
}

/// Element types that tensors can be borrowed as.
pub trait Element: bytemuck::Pod {
    const DTYPE: Dtype;
}
impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::BF16;
}
impl Element for u32 {
    const DTYPE: Dtype = Dtype::U32;
}
impl Element for i64 {
    const DTYPE: Dtype = Dtype::I64;
}
impl Element for u8 {
    const DTYPE: Dtype = Dtype::U8;
}
impl Element for i32 {
    const DTYPE: Dtype = Dtype::I32;
}

/// One tensor's entry in the manifest.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte offset from the start of the file (a multiple of 4096).
    pub offset: u64,
    pub nbytes: u64,
    /// xxh3-64 of the tensor's bytes.
    pub checksum: u64,
}

impl TensorEntry {
    pub fn shape_usize(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }
}

/// What the file is, with its configuration.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum FileConfig {
    Model(ModelConfig),
    Bank(BankConfig),
}

impl FileConfig {
    pub fn kind_name(&self) -> &'static str {
        match self {
            FileConfig::Model(_) => "model",
            FileConfig::Bank(_) => "bank",
        }
    }
    fn kind_code(&self) -> u32 {
        match self {
            FileConfig::Model(_) => 1,
            FileConfig::Bank(_) => 2,
        }
    }
}

/// The manifest: configuration, tensor table, provenance.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Manifest {
    pub config: FileConfig,
    pub tensors: Vec<TensorEntry>,
    /// Free-form (key, value) pairs: tool version, sources, date, command line.
    pub provenance: Vec<(String, String)>,
}

/// Options for opening a file.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Verify every tensor's checksum (default). Skipping it boots faster.
    pub verify_checksums: bool,
    /// Read the whole file into memory owned by the container instead of mapping it:
    /// later changes to the file (even in place) cannot affect it. Costs the file's size
    /// in memory.
    pub in_memory: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_checksums: true,
            in_memory: false,
        }
    }
}

/// An opened, validated container: the mapping and its manifest.
pub struct Container {
    path: PathBuf,
    map: memmap2::Mmap,
    /// The open file and what it was when opened (mapped files only), to detect a file
    /// changed in place under the mapping.
    watch: Option<super::file::Watch>,
    manifest: Manifest,
    by_name: BTreeMap<String, usize>,
    id: [u8; 16],
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("path", &self.path)
            .field("kind", &self.manifest.config.kind_name())
            .field("tensors", &self.manifest.tensors.len())
            .finish()
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Container {
    /// Maps and validates a file: header, manifest, tensor table (bounds, alignment,
    /// overlaps, sizes) and, unless skipped, every tensor's checksum.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self, FormatError> {
        let p = || path.to_path_buf();
        let (file, stat) = super::file::open_regular(path)?;
        let file_len = stat.len;
        if file_len < MANIFEST_OFFSET {
            return Err(FormatError::Truncated {
                path: p(),
                what: "the header",
                needed: MANIFEST_OFFSET,
                actual: file_len,
            });
        }
        let (map, watch) = if opts.in_memory {
            (super::file::read_owned(path, &file, file_len)?, None)
        } else {
            // SAFETY: the file is mapped read-only. miad's files are written once (to a
            // temporary name, then renamed) and never modified in place; a file changed in
            // place under a running engine is detected before each inspection where the
            // size or time stamp shows it (`Container::check_unchanged`), and
            // `in_memory` avoids the mapping altogether.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|source| FormatError::Io { path: p(), source })?;
            (map, Some(super::file::Watch::new(file, stat)))
        };
        if map.len() as u64 != file_len {
            return Err(FormatError::Changed {
                path: p(),
                what: format!(
                    "it was {file_len} bytes when opened and {} bytes when read",
                    map.len()
                ),
            });
        }
        let b = &map[..];
        if b[..8] != MAGIC {
            return Err(FormatError::BadMagic { path: p() });
        }
        // Tensors are borrowed in place as little-endian values: a big-endian host
        // cannot serve them.
        if read_u32(b, 12) != ENDIAN_MARKER || cfg!(target_endian = "big") {
            return Err(FormatError::WrongEndianness { path: p() });
        }
        let version = read_u32(b, 8);
        if version > FORMAT_VERSION {
            return Err(FormatError::NewerVersion {
                path: p(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if xxhash_rust::xxh3::xxh3_64(&b[..72]) != read_u64(b, 72) {
            return Err(FormatError::HeaderChecksum { path: p() });
        }
        let kind = read_u32(b, 16);
        let manifest_offset = read_u64(b, 24);
        let manifest_len = read_u64(b, 32);
        let manifest_checksum = read_u64(b, 40);
        let recorded_len = read_u64(b, 48);
        if recorded_len > file_len {
            return Err(FormatError::Truncated {
                path: p(),
                what: "the file",
                needed: recorded_len,
                actual: file_len,
            });
        }
        if recorded_len < file_len {
            return Err(FormatError::TrailingBytes {
                path: p(),
                recorded: recorded_len,
                actual: file_len,
            });
        }
        let manifest_end = manifest_offset.saturating_add(manifest_len);
        if manifest_offset != MANIFEST_OFFSET || manifest_end > file_len {
            return Err(FormatError::Truncated {
                path: p(),
                what: "the manifest",
                needed: manifest_end,
                actual: file_len,
            });
        }
        let manifest_bytes = &b[manifest_offset as usize..manifest_end as usize];
        if xxhash_rust::xxh3::xxh3_64(manifest_bytes) != manifest_checksum {
            return Err(FormatError::InvalidManifest {
                path: p(),
                reason: "manifest checksum mismatch".into(),
            });
        }
        let manifest: Manifest = rkyv::from_bytes::<Manifest, rkyv::rancor::Error>(manifest_bytes)
            .map_err(|e| FormatError::InvalidManifest {
                path: p(),
                reason: e.to_string(),
            })?;
        if manifest.config.kind_code() != kind {
            return Err(FormatError::InvalidManifest {
                path: p(),
                reason: format!(
                    "header kind {kind} contradicts a {} manifest",
                    manifest.config.kind_name()
                ),
            });
        }
        let by_name = validate_table(path, &manifest, manifest_end, file_len)?;
        let id = xxhash_rust::xxh3::xxh3_128(manifest_bytes).to_le_bytes();
        let container = Container {
            path: p(),
            map,
            watch,
            manifest,
            by_name,
            id,
        };
        if opts.verify_checksums {
            container.verify_checksums()?;
        }
        Ok(container)
    }

    /// Recomputes every tensor's checksum.
    pub fn verify_checksums(&self) -> Result<(), FormatError> {
        for t in &self.manifest.tensors {
            if xxhash_rust::xxh3::xxh3_64(self.bytes_of(t)) != t.checksum {
                return Err(FormatError::ChecksumMismatch {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                });
            }
        }
        Ok(())
    }

    fn bytes_of(&self, t: &TensorEntry) -> &[u8] {
        // Bounds were validated when the file was opened.
        &self.map[t.offset as usize..(t.offset + t.nbytes) as usize]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Fails when the mapped file was changed in place since it was opened (size,
    /// modification time or inode differ): reading the mapping then could fault (SIGBUS) or give
    /// other data. One `fstat`, no allocation on success. Always passes for a container
    /// read into memory.
    pub fn check_unchanged(&self) -> Result<(), FormatError> {
        match &self.watch {
            Some(w) => w.check(&self.path),
            None => Ok(()),
        }
    }
    /// Whether the file was read into memory (`OpenOptions::in_memory`).
    pub fn is_in_memory(&self) -> bool {
        self.watch.is_none()
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Identity of the file: xxh3-128 of its manifest (which holds every tensor checksum).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }
    /// The whole mapping (for tests that check tensors are views into it).
    pub fn mapped_bytes(&self) -> &[u8] {
        &self.map
    }
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.manifest.tensors[i])
    }

    /// The raw bytes of tensor `name`.
    pub fn raw(&self, name: &str) -> Result<(&TensorEntry, &[u8]), FormatError> {
        let t = self.entry(name).ok_or_else(|| FormatError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        Ok((t, self.bytes_of(t)))
    }

    /// Tensor `name` borrowed as `&[T]` without copying; dtype and, when given, shape checked.
    pub fn typed<T: Element>(
        &self,
        name: &str,
        shape: Option<&[usize]>,
    ) -> Result<&[T], FormatError> {
        let (t, bytes) = self.raw(name)?;
        if t.dtype != T::DTYPE {
            return Err(FormatError::DtypeMismatch {
                path: self.path.clone(),
                tensor: name.to_string(),
                found: t.dtype.name(),
                expected: T::DTYPE.name(),
            });
        }
        if let Some(shape) = shape {
            if t.shape.len() != shape.len()
                || t.shape.iter().zip(shape).any(|(&a, &b)| a != b as u64)
            {
                return Err(FormatError::ShapeMismatch {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    found: t.shape_usize(),
                    expected: shape.to_vec(),
                });
            }
        }
        // Offsets are 4096-aligned and the mapping is page-aligned, so the cast cannot fail
        // on alignment; sizes were validated against dtype × shape at open.
        bytemuck::try_cast_slice(bytes).map_err(|e| FormatError::InvalidManifest {
            path: self.path.clone(),
            reason: format!("tensor {name}: {e}"),
        })
    }
}

/// Bounds, alignment, sizes, duplicates and overlaps of the tensor table.
fn validate_table(
    path: &Path,
    manifest: &Manifest,
    manifest_end: u64,
    file_len: u64,
) -> Result<BTreeMap<String, usize>, FormatError> {
    let p = || path.to_path_buf();
    let mut by_name = BTreeMap::new();
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(manifest.tensors.len());
    for (i, t) in manifest.tensors.iter().enumerate() {
        if by_name.insert(t.name.clone(), i).is_some() {
            return Err(FormatError::DuplicateTensor {
                path: p(),
                tensor: t.name.clone(),
            });
        }
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        if expected != t.nbytes {
            return Err(FormatError::SizeMismatch {
                path: p(),
                tensor: t.name.clone(),
                bytes: t.nbytes,
                expected,
            });
        }
        if t.offset % TENSOR_ALIGN != 0 {
            return Err(FormatError::Misaligned {
                path: p(),
                tensor: t.name.clone(),
                offset: t.offset,
                align: TENSOR_ALIGN,
            });
        }
        let end = t.offset.saturating_add(t.nbytes);
        if t.offset < manifest_end || end > file_len {
            return Err(FormatError::OutOfBounds {
                path: p(),
                tensor: t.name.clone(),
                offset: t.offset,
                end,
                file_len,
            });
        }
        spans.push((t.offset, end, i));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(FormatError::Overlap {
                path: p(),
                tensor: manifest.tensors[w[1].2].name.clone(),
                other: manifest.tensors[w[0].2].name.clone(),
            });
        }
    }
    Ok(by_name)
}

/// Writes model and bank files.
pub struct Writer {
    config: FileConfig,
    tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)>,
    provenance: Vec<(String, String)>,
}

impl Writer {
    pub fn model(config: ModelConfig) -> Self {
        Self::new(FileConfig::Model(config))
    }
    pub fn bank(config: BankConfig) -> Self {
        Self::new(FileConfig::Bank(config))
    }
    fn new(config: FileConfig) -> Self {
        Writer {
            config,
            tensors: Vec::new(),
            provenance: vec![(
                "writer".into(),
                format!("miad {}", env!("CARGO_PKG_VERSION")),
            )],
        }
    }
    pub fn provenance(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.provenance.push((key.into(), value.into()));
        self
    }
    /// Adds a tensor of raw little-endian bytes.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        dtype: Dtype,
        shape: &[usize],
        bytes: &[u8],
    ) -> &mut Self {
        self.tensors.push((
            name.into(),
            dtype,
            shape.iter().map(|&d| d as u64).collect(),
            bytes.to_vec(),
        ));
        self
    }
    pub fn add_typed<T: Element>(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: &[T],
    ) -> &mut Self {
        self.add(name, T::DTYPE, shape, bytemuck::cast_slice(data))
    }
    pub fn add_f32(&mut self, name: impl Into<String>, shape: &[usize], data: &[f32]) -> &mut Self {
        self.add_typed(name, shape, data)
    }

    /// Lays the file out and writes it to `path` through a temporary file renamed at the
    /// end, so a crash never leaves a half-written file under the final name. Returns the
    /// file's identity.
    pub fn write(&self, path: &Path) -> Result<[u8; 16], FormatError> {
        let (bytes_head, layout) = self.layout()?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let result = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
            f.write_all(&bytes_head).map_err(io)?;
            let mut pos = bytes_head.len() as u64;
            for ((_, _, _, data), &offset) in self.tensors.iter().zip(&layout.offsets) {
                f.write_all(&vec![0u8; (offset - pos) as usize])
                    .map_err(io)?;
                f.write_all(data).map_err(io)?;
                pos = offset + data.len() as u64;
            }
            let file = f.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|_| layout.id)
    }

    /// Header + manifest bytes, and the tensor offsets.
    fn layout(&self) -> Result<(Vec<u8>, Layout), FormatError> {
        // Refuse to write what `open` would refuse: duplicate names, sizes that do not
        // match dtype × shape.
        let mut seen = std::collections::BTreeSet::new();
        for (name, dtype, shape, data) in &self.tensors {
            if !seen.insert(name.as_str()) {
                return Err(FormatError::Invalid(format!(
                    "writer: tensor {name} added twice"
                )));
            }
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(data.len() as u64) {
                return Err(FormatError::Invalid(format!(
                    "writer: tensor {name}: {} bytes given, dtype {} and shape {shape:?} need {}",
                    data.len(),
                    dtype.name(),
                    expected.map_or("more than 2^64".to_string(), |e| e.to_string())
                )));
            }
        }
        // Offsets depend on the manifest's length, which depends on the offsets' encoding
        // only through fixed-width integers: lay out with a first pass, then fix up.
        let mut entries: Vec<TensorEntry> = self
            .tensors
            .iter()
            .map(|(name, dtype, shape, data)| TensorEntry {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                offset: 0,
                nbytes: data.len() as u64,
                checksum: xxhash_rust::xxh3::xxh3_64(data),
            })
            .collect();
        let mut manifest = Manifest {
            config: self.config.clone(),
            tensors: entries.clone(),
            provenance: self.provenance.clone(),
        };
        let encode = |m: &Manifest| {
            rkyv::to_bytes::<rkyv::rancor::Error>(m)
                .map_err(|e| FormatError::Invalid(format!("manifest: {e}")))
        };
        let first_len = encode(&manifest)?.len() as u64;
        let data_start = (MANIFEST_OFFSET + first_len).next_multiple_of(TENSOR_ALIGN);
        let mut pos = data_start;
        for e in &mut entries {
            e.offset = pos;
            pos = (pos + e.nbytes).next_multiple_of(TENSOR_ALIGN);
        }
        let file_len = entries.last().map_or(data_start, |e| e.offset + e.nbytes);
        manifest.tensors = entries;
        let manifest_bytes = encode(&manifest)?;
        if manifest_bytes.len() as u64 != first_len {
            return Err(FormatError::Invalid(
                "manifest length changed during layout".into(),
            ));
        }
        let mut head = vec![0u8; MANIFEST_OFFSET as usize];
        head[..8].copy_from_slice(&MAGIC);
        head[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&ENDIAN_MARKER.to_le_bytes());
        head[16..20].copy_from_slice(&self.config.kind_code().to_le_bytes());
        head[24..32].copy_from_slice(&MANIFEST_OFFSET.to_le_bytes());
        head[32..40].copy_from_slice(&(manifest_bytes.len() as u64).to_le_bytes());
        head[40..48].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&manifest_bytes).to_le_bytes());
        head[48..56].copy_from_slice(&file_len.to_le_bytes());
        head[56..64].copy_from_slice(&data_start.to_le_bytes());
        let header_sum = xxhash_rust::xxh3::xxh3_64(&head[..72]);
        head[72..80].copy_from_slice(&header_sum.to_le_bytes());
        head.extend_from_slice(&manifest_bytes);
        let id = xxhash_rust::xxh3::xxh3_128(&manifest_bytes).to_le_bytes();
        let offsets = manifest.tensors.iter().map(|e| e.offset).collect();
        Ok((head, Layout { offsets, id }))
    }
}

struct Layout {
    offsets: Vec<u64>,
    id: [u8; 16],
}
