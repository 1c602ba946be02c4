//! What the generation loop needs from a model, whatever its architecture.

use super::error::Result;

/// Which dimensions of a head rotary embeddings turn together, by angle
/// `i`. GGUF files do not record it; it follows from the architecture
/// (llama.cpp's `llama_model_rope_type`), so the family table says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeVariant {
    /// Neighbours `(2i, 2i + 1)`: llama's (GGML's "normal" mode).
    Interleaved,
    /// The two halves of the head, `(i, i + head_dim / 2)`: GPT-NeoX's,
    /// which Qwen2, Phi-3 and Gemma use.
    Halves,
}

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

    /// The batched forward pass over a paged cache, when this model has
    /// one; without it the scheduler runs one sequence at a time through
    /// [`Self::forward`].
    fn paged(&mut self) -> Option<&mut dyn PagedLm> {
        None
    }
}

/// One sequence's part of a batched step.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    /// Tokens at positions `pos..pos + tokens.len()`; at least one.
    pub tokens: &'a [u32],
    pub pos: usize,
    /// The pool blocks holding positions `0..pos + tokens.len()`, in order
    /// (those up to `pos` already written).
    pub blocks: &'a [u32],
    /// Positions below this one are prompt positions (see
    /// `securechat_kernels::attention::SeqQueries`).
    pub tiled_below: usize,
    /// Whether the logits after the last token are wanted.
    pub logits: bool,
}

/// A model that runs many sequences per forward pass, each in the blocks
/// of a shared key/value pool named by its block table.
pub trait PagedLm: Send {
    /// Cache bytes one position takes, for sizing the pool.
    fn bytes_per_token(&self) -> usize;

    /// Replaces the pool by one of `blocks` blocks (at least a context's
    /// worth); what it held is forgotten. Fails when the device has no
    /// room for it.
    fn allocate_pool(&mut self, blocks: usize) -> Result<()>;

    /// One forward pass over every sequence of `batch`; returns the logits
    /// of those that ask for them, in order.
    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>>;
}
