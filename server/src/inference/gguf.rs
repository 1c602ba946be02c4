//! Reading a GGUF file: its metadata (hyper-parameters, tokenizer, chat
//! template) and its tensors.
//!
//! The file is read, not memory-mapped: the workspace forbids `unsafe`, and
//! candle copies quantized tensors into its own storage anyway (we requantize
//! most of them at load), so a mapping would not lower the resident size.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};

use super::error::{InferenceError, Result};

/// An opened GGUF file: parsed header plus a reader for tensor data.
pub struct GgufFile {
    pub content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                InferenceError::ModelMissing {
                    path: path.to_owned(),
                }
            } else {
                InferenceError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| InferenceError::Metadata(format!("{}: {e}", path.display())))?;
        Ok(Self { content, reader })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| InferenceError::Metadata(format!("tensor {name}: {e}")))
    }

    pub fn metadata(&self) -> Metadata<'_> {
        Metadata(&self.content.metadata)
    }
}

/// Typed access to GGUF key/value metadata with errors naming the key.
#[derive(Clone, Copy)]
pub struct Metadata<'a>(pub &'a std::collections::HashMap<String, gguf_file::Value>);

impl<'a> Metadata<'a> {
    fn get(&self, key: &str) -> Result<&'a gguf_file::Value> {
        self.0
            .get(key)
            .ok_or_else(|| InferenceError::Metadata(format!("missing key `{key}`")))
    }

    fn typed<T>(
        &self,
        key: &str,
        f: impl FnOnce(&'a gguf_file::Value) -> candle_core::Result<T>,
    ) -> Result<T> {
        let v = self.get(key)?;
        f(v).map_err(|e| InferenceError::Metadata(format!("key `{key}`: {e}")))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.typed(key, |v| v.to_string().map(String::as_str))
    }

    /// Integer metadata, whatever integer width the writer chose.
    pub fn usize(&self, key: &str) -> Result<usize> {
        use gguf_file::Value::*;
        let n: i128 = match self.get(key)? {
            U8(v) => (*v).into(),
            I8(v) => (*v).into(),
            U16(v) => (*v).into(),
            I16(v) => (*v).into(),
            U32(v) => (*v).into(),
            I32(v) => (*v).into(),
            U64(v) => (*v).into(),
            I64(v) => (*v).into(),
            other => {
                return Err(InferenceError::Metadata(format!(
                    "key `{key}`: expected an integer, got {other:?}"
                )));
            }
        };
        usize::try_from(n)
            .map_err(|_| InferenceError::Metadata(format!("key `{key}`: {n} out of range")))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        use gguf_file::Value::*;
        match self.get(key)? {
            F32(v) => Ok(*v),
            F64(v) => Ok(*v as f32),
            other => Err(InferenceError::Metadata(format!(
                "key `{key}`: expected a float, got {other:?}"
            ))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        self.typed(key, |v| v.to_bool())
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let arr = self.typed(key, |v| v.to_vec())?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| InferenceError::Metadata(format!("key `{key}`: {e}")))
            })
            .collect()
    }

    pub fn integers(&self, key: &str) -> Result<Vec<i64>> {
        use gguf_file::Value::*;
        let arr = self.typed(key, |v| v.to_vec())?;
        arr.iter()
            .map(|v| match v {
                U8(v) => Ok(i64::from(*v)),
                I8(v) => Ok(i64::from(*v)),
                U16(v) => Ok(i64::from(*v)),
                I16(v) => Ok(i64::from(*v)),
                U32(v) => Ok(i64::from(*v)),
                I32(v) => Ok(i64::from(*v)),
                I64(v) => Ok(*v),
                other => Err(InferenceError::Metadata(format!(
                    "key `{key}`: expected integers, got {other:?}"
                ))),
            })
            .collect()
    }
}
