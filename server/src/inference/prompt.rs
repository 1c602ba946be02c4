//! Messages -> token ids: the chat template, then the tokenizer.

use super::chat_template::ChatTemplate;
use super::error::Result;
use super::tokenizer::ChatTokenizer;
use crate::engine::ChatMessage;

/// ChatML, for GGUF files that carry no template (llama.cpp's fallback too).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct PromptEncoder {
    pub tokenizer: ChatTokenizer,
    template: ChatTemplate,
}

impl PromptEncoder {
    pub fn new(tokenizer: ChatTokenizer, template_source: Option<&str>) -> Result<Self> {
        let token = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_str(i))
                .unwrap_or("")
                .to_owned()
        };
        let template = ChatTemplate::new(
            template_source.unwrap_or(CHATML_TEMPLATE),
            &token(tokenizer.bos),
            &token(Some(tokenizer.eos)),
        )?;
        Ok(Self {
            tokenizer,
            template,
        })
    }

    /// The prompt for the assistant's next turn.
    pub fn encode(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let segments = self.template.render(messages, true)?;
        self.tokenizer.encode_segments(&segments)
    }
}
