//! Llama-family decoder (SmolLM2 and friends) from GGUF weights: its
//! shape (`config.rs`), its weights as loaded (`weights.rs`), and two
//! forward passes over them. On the CPU, when every matrix is in a format
//! our kernels multiply (Q4_1, Q8_0), the model runs on plain buffers
//! (`cpu.rs`); otherwise (GPUs, other block formats, the candle-kernel
//! reference) on candle ops (`candle.rs`).

mod candle;
mod config;
mod cpu;
mod weights;

use candle_core::Device;

use self::candle::CandleLlama;
use self::config::LlamaConfig;
use self::cpu::CpuLlama;
use self::weights::Weights;
use super::error::{InferenceError, Result};
use super::gguf::GgufFile;
use super::linear::CpuKernels;
use super::model::{CausalLm, PagedLm, RopeVariant};

pub use self::weights::WeightFormat;

/// Prompt positions run per forward pass; bounds attention memory at
/// 9 heads x 512 x 8192 x 4 bytes = 150 MB for a full context.
const PREFILL_CHUNK: usize = 512;

pub struct Llama {
    config: LlamaConfig,
    forward: Forward,
}

enum Forward {
    /// Our kernels on plain buffers (CPU, Q4_1 / Q8_0 weights).
    Cpu(CpuLlama),
    /// candle ops (GPUs, other formats, candle's kernels).
    Candle(CandleLlama),
}

/// Loads a GGUF file of architecture `arch` (its `general.architecture`)
/// as a llama: the family table's loader.
pub fn load(
    file: &mut GgufFile,
    arch: &str,
    rope: RopeVariant,
    format: WeightFormat,
    device: &Device,
    kernels: CpuKernels,
) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(Llama::load(
        file, arch, rope, format, device, kernels,
    )?))
}

impl Llama {
    pub fn load(
        file: &mut GgufFile,
        arch: &str,
        rope: RopeVariant,
        format: WeightFormat,
        device: &Device,
        kernels: CpuKernels,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file, arch, rope)?;
        let weights = Weights::load(file, &config, format, device, kernels)?;
        let forward = match CpuLlama::new(&config, &weights)? {
            Some(cpu) => Forward::Cpu(cpu),
            None => Forward::Candle(CandleLlama::new(&config, weights, device)?),
        };
        Ok(Self { config, forward })
    }
}

impl Llama {
    /// Runs `tokens` from `pos` in pieces of [`PREFILL_CHUNK`], asking
    /// `cancelled` before each piece; `None` when it said yes.
    fn forward_chunks(
        &mut self,
        tokens: &[u32],
        pos: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<f32>>> {
        if tokens.is_empty() {
            return Err(InferenceError::Tensor(candle_core::Error::Msg(
                "forward with no tokens".into(),
            )));
        }
        if pos == 0 {
            match &mut self.forward {
                Forward::Cpu(m) => m.clear(),
                Forward::Candle(m) => m.cache.clear(),
            }
        }
        // Long prompts go in chunks: attention scores of one chunk take
        // n_head x chunk x context floats, which must stay small.
        let chunks = tokens.chunks(PREFILL_CHUNK);
        let n = chunks.len();
        let mut logits = None;
        for (i, chunk) in chunks.enumerate() {
            if cancelled() {
                return Ok(None);
            }
            let chunk_pos = pos + i * PREFILL_CHUNK;
            let last = i + 1 == n;
            logits = match &mut self.forward {
                Forward::Cpu(m) => {
                    securechat_kernels::on_pool(|| m.forward_chunk(chunk, chunk_pos, last))?
                }
                Forward::Candle(m) => m.forward_chunk(&self.config, chunk, chunk_pos, last)?,
            };
        }
        logits.ok_or_else(no_logits).map(Some)
    }
}

fn no_logits() -> InferenceError {
    InferenceError::Tensor(candle_core::Error::Msg("no logits".into()))
}

impl CausalLm for Llama {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        // Never cancelled, so `None` cannot come back.
        self.forward_chunks(tokens, pos, &|| false)?
            .ok_or_else(no_logits)
    }

    /// Asks between chunks: a departed client's 7,500-token prompt stops
    /// within one 512-token chunk instead of running all 15.
    fn prefill(
        &mut self,
        prompt: &[u32],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<f32>>> {
        self.forward_chunks(prompt, 0, cancelled)
    }

    fn context_length(&self) -> usize {
        self.config.context_length
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn paged(&mut self) -> Option<&mut dyn PagedLm> {
        match &mut self.forward {
            Forward::Cpu(m) => Some(m),
            Forward::Candle(m) => Some(m),
        }
    }
}
