//! The safetensors files of a Hugging Face checkpoint directory, read one
//! tensor at a time as the model asks for it.
//!
//! candle's memory-mapped loader is an `unsafe fn` (the files must not
//! change while mapped), and the workspace forbids `unsafe`. Reading each
//! tensor's byte range when the model builds that layer gives the same
//! peak: the converted weights plus one tensor in its stored format. The
//! loader it replaces read every shard whole first, then converted, so it
//! held the stored checkpoint and the converted one at once.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use serde::Deserialize;
use serde_json::Value;

use crate::inference::error::{InferenceError, Result};

/// Hugging Face's name for the map from tensor names to shard files.
const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint's name.
const SINGLE_FILE: &str = "model.safetensors";

/// The files that hold the weights, in order: the ones the index names
/// when there is an index, else `model.safetensors`, else every
/// `*.safetensors` file. A file the index names that is not there is an
/// error naming it; so is a gap in `model-0000i-of-0000n` numbering.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    let names = if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| InferenceError::Io {
            path: index.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| InferenceError::Metadata(format!("{}: {e}", index.display())))?;
        indexed_files(&json)
            .map_err(|e| InferenceError::Metadata(format!("{}: {e}", index.display())))?
    } else if dir.join(SINGLE_FILE).is_file() {
        vec![SINGLE_FILE.to_owned()]
    } else {
        let entries = std::fs::read_dir(dir).map_err(|source| InferenceError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        names.sort();
        names
    };
    if names.is_empty() {
        return Err(InferenceError::ModelMissing {
            path: dir.join("*.safetensors"),
        });
    }
    if let Some(missing) = missing_shard(&names) {
        return Err(InferenceError::ShardMissing {
            path: dir.join(missing),
            named_by: "the model-0000i-of-0000n numbering".into(),
        });
    }
    for name in &names {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(InferenceError::ShardMissing {
                path,
                named_by: INDEX_FILE.into(),
            });
        }
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The distinct files an index's `weight_map` names, sorted.
fn indexed_files(index: &Value) -> std::result::Result<Vec<String>, String> {
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or("no weight_map object")?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map[{tensor}] is not a file name"))?;
        // The index may only name files beside it.
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(format!(
                "weight_map[{tensor}] names `{file}` outside the directory"
            ));
        }
        files.insert(file.to_owned());
    }
    Ok(files.into_iter().collect())
}

/// The first `model-0000i-of-0000n.safetensors` name missing from `names`
/// when they are shards of that pattern (every one of the `n` must be
/// there, whatever named them).
fn missing_shard(names: &[String]) -> Option<String> {
    let parse = |name: &str| -> Option<(usize, usize, usize)> {
        let rest = name.strip_prefix("model-")?.strip_suffix(".safetensors")?;
        let (i, n) = rest.split_once("-of-")?;
        if i.len() != n.len() {
            return None;
        }
        Some((i.parse().ok()?, n.parse().ok()?, i.len()))
    };
    let (_, total, width) = names.iter().find_map(|n| parse(n))?;
    (1..=total)
        .map(|i| format!("model-{i:0width$}-of-{total:0width$}.safetensors"))
        .find(|want| !names.contains(want))
}

/// A tensor's entry in a safetensors header.
#[derive(Debug, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Where one tensor's bytes are.
#[derive(Debug)]
struct Located {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    start: u64,
    len: usize,
}

/// Every tensor of a checkpoint's files by name, read on demand.
pub struct Checkpoint {
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, Located>,
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

impl Checkpoint {
    /// Reads the headers of `paths` (a few KiB each); no tensor data yet.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let io = |source| InferenceError::Io {
                path: path.clone(),
                source,
            };
            let bad =
                |what: String| InferenceError::Metadata(format!("{}: {what}", path.display()));
            let file = File::open(path).map_err(io)?;
            let file_len = file.metadata().map_err(io)?.len();
            let mut len = [0u8; 8];
            file.read_exact_at(&mut len, 0).map_err(io)?;
            let header_len = u64::from_le_bytes(len);
            if header_len.saturating_add(8) > file_len {
                return Err(bad(format!(
                    "header of {header_len} bytes in a file of {file_len}"
                )));
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact_at(&mut header, 8).map_err(io)?;
            let header: HashMap<String, Value> = serde_json::from_slice(&header)
                .map_err(|e| bad(format!("safetensors header: {e}")))?;
            let data_start = 8 + header_len;
            for (name, entry) in header {
                if name == "__metadata__" {
                    continue;
                }
                let entry: Entry = serde_json::from_value(entry)
                    .map_err(|e| bad(format!("tensor {name}: {e}")))?;
                let dtype = dtype_of(&entry.dtype).ok_or_else(|| {
                    bad(format!("tensor {name}: unsupported dtype {}", entry.dtype))
                })?;
                let [begin, end] = entry.data_offsets;
                let elements: usize = entry.shape.iter().product();
                let expected = elements as u64 * dtype.size_in_bytes() as u64;
                if end < begin || end - begin != expected || data_start + end > file_len {
                    return Err(bad(format!(
                        "tensor {name}: bytes {begin}..{end} do not hold {:?} {} in a file of {file_len}",
                        entry.shape, entry.dtype
                    )));
                }
                let located = Located {
                    file: index,
                    dtype,
                    shape: entry.shape,
                    start: data_start + begin,
                    len: expected as usize,
                };
                if tensors.insert(name.clone(), located).is_some() {
                    return Err(bad(format!("tensor {name} is in more than one file")));
                }
            }
            files.push((path.clone(), file));
        }
        Ok(Self { files, tensors })
    }

    /// Reads tensor `name` from its file, converts it to `dtype` and puts
    /// it on `device`.
    fn read(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            })?;
        let (path, file) = &self.files[t.file];
        let mut bytes = vec![0u8; t.len];
        file.read_exact_at(&mut bytes, t.start)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {name}: {e}", path.display())))?;
        let stored = Tensor::from_raw_buffer(&bytes, t.dtype, &t.shape, &Device::Cpu)?;
        drop(bytes);
        // Converted on the device: a GPU narrows bf16/f32 far faster than
        // the CPU, and the CPU then holds one stored tensor at a time.
        stored.to_device(device)?.to_dtype(dtype)
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.read(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.read(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_gap_in_shard_numbering_names_the_missing_shard() {
        let all = names(&[
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
        ]);
        assert_eq!(missing_shard(&all), None);
        assert_eq!(
            missing_shard(&[all[0].clone(), all[2].clone()]),
            Some("model-00002-of-00003.safetensors".into())
        );
        assert_eq!(missing_shard(&names(&["model.safetensors"])), None);
        assert_eq!(missing_shard(&names(&["weights.safetensors"])), None);
    }

    #[test]
    fn an_index_names_each_file_once_and_only_beside_it() {
        let index = json!({"metadata": {}, "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"
        }});
        assert_eq!(
            indexed_files(&index).unwrap(),
            names(&[
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
        assert!(indexed_files(&json!({"weight_map": {"a": "../x.safetensors"}})).is_err());
        assert!(indexed_files(&json!({"weight_map": {"a": 3}})).is_err());
        assert!(indexed_files(&json!({})).is_err());
    }

    #[test]
    fn a_header_that_overruns_its_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]); // 8 of the 16 bytes
        std::fs::write(&path, &bytes).unwrap();
        let err = Checkpoint::open(std::slice::from_ref(&path)).err().unwrap();
        assert!(err.to_string().contains("tensor w"), "{err}");
        bytes.extend_from_slice(&[0u8; 8]);
        std::fs::write(&path, &bytes).unwrap();
        let ckpt = Checkpoint::open(&[path]).unwrap();
        let w = ckpt.read("w", DType::F16, &Device::Cpu).unwrap();
        assert_eq!((w.dims(), w.dtype()), (&[4][..], DType::F16));
    }
}
