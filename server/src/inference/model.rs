//! What the generation loop needs from a model, whatever its architecture.

use super::error::Result;

/// A decoder-only language model with its own KV cache.
pub trait CausalLm: Send {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the
    /// logits for the position after the last one. `pos == 0` starts a new
    /// sequence; otherwise `pos` must equal the number of tokens already run.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>>;

    /// Runs a whole prompt from position 0 like `forward`, asking
    /// `cancelled` before each step of its own (a model that splits long
    /// prompts asks between the pieces), and stops with `None` once it
    /// says yes: a client that left must not hold the engine for the rest
    /// of its prompt. This default asks once, before the single pass.
    fn prefill(
        &mut self,
        prompt: &[u32],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<f32>>> {
        if cancelled() {
            return Ok(None);
        }
        self.forward(prompt, 0).map(Some)
    }

    fn context_length(&self) -> usize;

    fn vocab_size(&self) -> usize;
}
