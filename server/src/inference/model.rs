//! What the generation loop needs from a model, whatever its architecture.

use super::error::Result;

/// A decoder-only language model with its own KV cache.
pub trait CausalLm: Send {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the
    /// logits for the position after the last one. `pos == 0` starts a new
    /// sequence; otherwise `pos` must equal the number of tokens already run.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;

    fn context_length(&self) -> usize;

    fn vocab_size(&self) -> usize;
}
